"""The Helm chart, tested the way helm-unittest suites are: render with the real Helm engine
for the defaults and a few values files, then assert on the manifests; lint clean; every
manifest valid under kubernetes-validate strict (STYLE.md §10).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("helm_python", reason="helm-python-sdk==0.2.2 (test extra) is not installed")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
yamllint_config = pytest.importorskip("yamllint.config", reason="yamllint is not installed")
yamllint_linter = pytest.importorskip("yamllint.linter", reason="yamllint is not installed")

from engine.config import settings as nimbus_config  # noqa: E402
from engine.config.units import parse_duration, parse_hostport  # noqa: E402
from engine.logs.metrics import Metrics  # noqa: E402

from . import helm  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
VARIANTS = ["", "sink-off-external-redis", "existing-secrets", "everything-on", "keda"]
KUBE_VERSIONS = ["1.29.0", "1.31.0", "1.33.0"]
CRD_GROUPS = ("monitoring.coreos.com/", "keda.sh/")
KEDA_SCHEMA = Path(__file__).resolve().parent / "schemas" / "keda-scaledobject-v1alpha1.json"
WORKLOAD_KINDS = ("StatefulSet", "Deployment")


# --- helpers -------------------------------------------------------------------------------

_cache: dict[str, list[dict[str, Any]]] = {}


def rendered(variant: str) -> list[dict[str, Any]]:
    """The manifests of a values file, rendered once per test session."""
    if variant not in _cache:
        _cache[variant] = helm.render(helm.load_values(variant))
    return _cache[variant]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in of_kind(docs, kind)
        if component is None
        or d["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {kind} {component or ''}, got {len(found)}"
    return found[0]


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for w in workloads(docs):
        for c in pod_spec(w).get("initContainers", []) + pod_spec(w)["containers"]:
            yield w, c


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> literal value, or the valueFrom dict."""
    return {
        e["name"]: e["value"] if "value" in e else e["valueFrom"] for e in container.get("env", [])
    }


def mta(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "StatefulSet", "mta")


def mta_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return pod_spec(mta(docs))["containers"][0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def services_for(docs: list[dict[str, Any]], workload: dict[str, Any]) -> list[dict[str, Any]]:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return [s for s in of_kind(docs, "Service") if selects(s["spec"]["selector"], labels)]


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A Service targetPort (number or name) resolved against the container's ports."""
    for p in container.get("ports", []):
        if port in (p["containerPort"], p.get("name")):
            return p["containerPort"]
    raise AssertionError(f"port {port!r} is not a port of container {container['name']}")


def service_port(docs: list[dict[str, Any]], name: str, port: int) -> dict[str, Any]:
    svc = next(s for s in of_kind(docs, "Service") if s["metadata"]["name"] == name)
    return next(p for p in svc["spec"]["ports"] if p["port"] == port)


def nimbus_env_names() -> set[str]:
    """Every environment name engine.config.settings accepts: NIMBUS_<SECTION>_<KEY>, top-level
    NIMBUS_<KEY> (NIMBUS_NODE_ID), and the aliases NIMBUS_RELAY_HOSTS and NIMBUS_CONFIG."""
    names = {"NIMBUS_CONFIG", "NIMBUS_RELAY_HOSTS"}
    for f in dataclasses.fields(nimbus_config.Settings):
        section = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if section is not None and dataclasses.is_dataclass(section):
            names |= {
                f"NIMBUS_{f.name.upper()}_{g.name.upper()}" for g in dataclasses.fields(section)
            }
        else:
            names.add(f"NIMBUS_{f.name.upper()}")
    return names


def exported_metric_names() -> set[str]:
    """The series names of Nimbus's /metrics exposition, from a real Metrics registry with
    its live gauges attached (counters as <name>_total, histograms as _bucket/_sum/_count)."""
    metrics = Metrics()
    metrics.attach_gauges(
        lambda: {
            "scheduled": {"q": 1},
            "ready": {"q": 1},
            "connections_in": {"esmtp": 1},
            "connections_out": {"q": 1},
            "spool_bytes": 1,
            "spool_messages": 1,
        }
    )
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
    }
    names: set[str] = set()
    for family in metrics.registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {s.name for s in family.samples}
    return names


_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names (inside {...} or by/without (...)), durations or strings."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word, rest = m.group(), expr[m.end() :].lstrip()
        if rest.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue
        if m.start() > 0 and (expr[m.start() - 1].isdigit() or expr[m.start() - 1] == "."):
            continue  # 1e-9, 0.5
        names.add(word)
    return names


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = []
    for panel in dashboard["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", []) if "expr" in t]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"] if isinstance(var["query"], str) else var["query"]["query"]
            # Grafana's label_values(<series selector>, <label>): only the selector is PromQL.
            found = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip())
            exprs.append(found.group(1) if found else query)
    return exprs


# --- lint, schema, Kubernetes validity -------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_is_clean_in_strict_mode(variant: str) -> None:
    """helm lint --strict reports nothing at warning or error severity."""
    report = helm.lint(helm.load_values(variant))
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_manifests_are_valid_kubernetes_objects(variant: str, version: str) -> None:
    """Every rendered manifest validates under kubernetes-validate strict (CRDs aside)."""
    docs = rendered(variant)
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']} @ {version}: "
                f"{'.'.join(map(str, exc.path))}: {exc.message}"
            )


def test_service_monitors_scrape_each_metrics_endpoint() -> None:
    """Each ServiceMonitor (a CRD, so checked by hand) selects one Service whose named port
    reaches the pod's HTTP listener; the MTA one the NIMBUS_HTTP_LISTEN port."""
    docs = rendered("everything-on")
    monitors = of_kind(docs, "ServiceMonitor")
    assert sorted(m["metadata"]["name"] for m in monitors) == [
        f"{helm.RELEASE}-nimbus-{p}" for p in ("mta", "sink", "tsa")
    ]
    for sm in monitors:
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert sm["spec"]["namespaceSelector"] == {"matchNames": [helm.NAMESPACE]}
        (svc,) = [
            s
            for s in of_kind(docs, "Service")
            if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        (endpoint,) = sm["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        (port,) = [p for p in svc["spec"]["ports"] if p["name"] == endpoint["port"]]
        (workload,) = [
            w
            for w in workloads(docs)
            if selects(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
        ]
        container = pod_spec(workload)["containers"][0]
        listen = {
            parse_hostport(v)[1] for k, v in env_of(container).items() if k.endswith("_LISTEN")
        }
        assert container_port(container, port["targetPort"]) in listen
    mta_sm = next(m for m in monitors if m["metadata"]["name"].endswith("-mta"))
    (svc,) = [
        s
        for s in of_kind(docs, "Service")
        if selects(mta_sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    port = next(p for p in svc["spec"]["ports"] if p["name"] == "http")
    http_listen = env_of(mta_container(docs))["NIMBUS_HTTP_LISTEN"]
    assert container_port(mta_container(docs), port["targetPort"]) == parse_hostport(http_listen)[1]


def test_optional_objects_are_off_by_default() -> None:
    """Defaults render no ServiceMonitor, dashboard, HPA or NetworkPolicy."""
    kinds = {d["kind"] for d in rendered("")}
    assert not kinds & {
        "ServiceMonitor",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    }
    assert not [
        d
        for d in of_kind(rendered(""), "ConfigMap")
        if d["metadata"]["labels"].get("grafana_dashboard")
    ]


@pytest.mark.parametrize(
    "bad",
    [
        {"mta": {"replicas": 0}},
        {"surprise": True},
        {"mta": {"replicaz": 2}},
        {"mta": {"relayHosts": ["not-a-cidr"]}},
        {"mta": {"ports": {"smtp": 70000}}},
        {"sink": {"enabled": "yes"}},
        {"redis": {"url": "http://redis:6379"}},
        {"auth": {"users": {"bad/name": "x"}}},
        {"auth": {"users": {"nimbus": None}}},
        {"metrics": {"serviceMonitor": {"enabled": True, "interval": "often"}}},
        {"dkim": {"keys": [{"domain": "example.com"}]}},
        {"mta": {"startupProbe": {"path": "/"}}},
        {"mta": {"startupProbe": {"failureThreshold": 0}}},
        {"mta": {"autoscaling": {"mode": "vpa"}}},
        {"mta": {"autoscaling": {"keda": {"threshold": 5000}}}},
        {"mta": {"autoscaling": {"keda": {"threshold": "lots"}}}},
        {"mta": {"autoscaling": {"keda": {"pollingInterval": 0}}}},
        {"mta": {"autoscaling": {"keda": {"prometheusServerAddress": "prometheus:9090"}}}},
        {"mta": {"autoscaling": {"keda": {"query": "up"}}}},
        {"mta": {"xfer": {"enabled": "yes"}}},
        {"mta": {"xfer": {"deadlineSeconds": 0}}},
        {"mta": {"xfer": {"concurrency": 0}}},
        {"mta": {"xfer": {"existingSecret": "Not A Name"}}},
        {"mta": {"xfer": {"deadline": 60}}},
    ],
    ids=lambda v: json.dumps(v, sort_keys=True),
)
def test_schema_rejects_bad_values(bad: dict[str, Any]) -> None:
    """values.schema.json refuses a bad value before anything renders."""
    with pytest.raises(helm.ValuesError):
        helm.validate_schema(bad)


@pytest.mark.parametrize("variant", VARIANTS)
def test_schema_accepts_the_test_values(variant: str) -> None:
    """Each test values file passes the schema."""
    helm.validate_schema(helm.load_values(variant))


def test_schema_describes_every_property() -> None:
    """Every property in values.schema.json (draft-07) has a description."""
    schema = json.loads((helm.CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False

    def walk(node: dict[str, Any], where: str) -> Iterator[str]:
        for name, sub in node.get("properties", {}).items():
            if "description" not in sub:
                yield f"{where}.{name}"
            yield from walk(sub, f"{where}.{name}")

    assert list(walk(schema, "")) == []


def test_values_yaml_comments_every_key() -> None:
    """Every key of values.yaml the schema declares has a comment on the line above it."""
    schema = json.loads((helm.CHART / "values.schema.json").read_text())
    text = (helm.CHART / "values.yaml").read_text()
    lines = text.splitlines()
    missing = []

    def walk(node: Any, sub: dict[str, Any], where: str) -> None:
        if not isinstance(node, yaml.MappingNode) or "properties" not in sub:
            return
        for key, value in node.value:
            if key.value not in sub["properties"]:
                continue
            line = key.start_mark.line
            if line == 0 or not lines[line - 1].strip().startswith("#"):
                missing.append(f"{where}{key.value} (line {line + 1})")
            if key.value != "resources":  # a Kubernetes block, not chart keys
                walk(value, sub["properties"][key.value], f"{where}{key.value}.")

    walk(yaml.compose(text), schema, "")
    assert missing == []


@pytest.mark.parametrize("path", ["values.yaml", "Chart.yaml"])
def test_yamllint_values_and_chart_yaml(path: str) -> None:
    """values.yaml and Chart.yaml pass yamllint's default rules."""
    conf = yamllint_config.YamlLintConfig("extends: default\nrules: {line-length: {max: 100}}")
    text = (helm.CHART / path).read_text()
    problems = [str(p) for p in yamllint_linter.run(text, conf)]
    assert problems == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_yamllint_rendered_output(variant: str) -> None:
    """The rendered manifests have no yamllint errors (relaxed rules: long policy lines)."""
    conf = yamllint_config.YamlLintConfig("extends: relaxed")
    for path, text in helm.render_templates(helm.load_values(variant)).items():
        if path.endswith(".txt") or not text.strip():
            continue
        errors = [str(p) for p in yamllint_linter.run(text, conf) if p.level == "error"]
        assert errors == [], path


# --- the sink toggle, Redis, TSA -------------------------------------------------------------


def test_sink_enabled_routes_all_mail_to_the_sink_service() -> None:
    """By default the MTA sends everything to the sink Service's SMTP port."""
    docs = rendered("")
    env = env_of(mta_container(docs))
    assert env["NIMBUS_SINK_ENABLED"] == "true"
    host, port = parse_hostport(env["NIMBUS_SINK_ENDPOINT"])
    sink = one(docs, "Deployment", "sink")
    svc_port = service_port(docs, host, port)
    sink_container = pod_spec(sink)["containers"][0]
    listen = parse_hostport(env_of(sink_container)["NIMBUS_SINK_LISTEN"])[1]
    assert container_port(sink_container, svc_port["targetPort"]) == listen


def test_sink_disabled_sends_real_mail_and_deploys_no_sink() -> None:
    """sink.enabled=false flips NIMBUS_SINK_ENABLED, drops the endpoint and the sink objects."""
    docs = rendered("sink-off-external-redis")
    env = env_of(mta_container(docs))
    assert env["NIMBUS_SINK_ENABLED"] == "false"
    assert "NIMBUS_SINK_ENDPOINT" not in env
    assert not [
        d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "sink"
    ]


def test_bundled_redis_url_points_at_the_redis_service() -> None:
    """With redis.enabled the MTA and TSA use the bundled Redis Service."""
    docs = rendered("")
    redis = one(docs, "Deployment", "redis")
    for w in (mta(docs), one(docs, "Deployment", "tsa")):
        url = env_of(pod_spec(w)["containers"][0])["NIMBUS_REDIS_URL"]
        m = re.fullmatch(r"redis://([^:/]+):(\d+)/0", url)
        assert m, url
        svc_port = service_port(docs, m[1], int(m[2]))
        assert container_port(pod_spec(redis)["containers"][0], svc_port["targetPort"])


def test_external_redis_url_is_passed_through() -> None:
    """redis.enabled=false uses redis.url and deploys no Redis."""
    docs = rendered("sink-off-external-redis")
    assert (
        env_of(mta_container(docs))["NIMBUS_REDIS_URL"]
        == "redis://redis.shared.svc.cluster.local:6379/2"
    )
    assert not [d for d in workloads(docs) if d["metadata"]["name"].endswith("-redis")]


def test_external_redis_url_from_an_existing_secret() -> None:
    """redis.existingSecret becomes a secretKeyRef."""
    env = env_of(mta_container(rendered("existing-secrets")))
    assert env["NIMBUS_REDIS_URL"] == {"secretKeyRef": {"name": "mail-redis", "key": "redis-url"}}


def test_external_redis_needs_a_url() -> None:
    """redis.enabled=false without a URL fails the render, naming the value."""
    with pytest.raises(helm.RenderError, match="redis.url"):
        helm.render({"redis": {"enabled": False}})


def test_tsa_urls_point_at_the_tsa_service() -> None:
    """NIMBUS_TSA_URLS is the TSA Service, whose port reaches NIMBUS_TSA_LISTEN."""
    docs = rendered("")
    m = re.fullmatch(r"http://([^:/]+):(\d+)", env_of(mta_container(docs))["NIMBUS_TSA_URLS"])
    assert m
    svc_port = service_port(docs, m[1], int(m[2]))
    tsa = pod_spec(one(docs, "Deployment", "tsa"))["containers"][0]
    listen = parse_hostport(env_of(tsa)["NIMBUS_TSA_LISTEN"])[1]
    assert container_port(tsa, svc_port["targetPort"]) == listen
    assert tsa["command"] == ["nimbus"] and tsa["args"] == ["tsa"]
    assert tsa["readinessProbe"]["httpGet"]["path"] == "/api/check-liveness/v1"
    assert env_of(tsa)["NIMBUS_POLICY_DIR"] in {m["mountPath"] for m in tsa["volumeMounts"]}


def test_tsa_disabled_drops_the_urls() -> None:
    """tsa.enabled=false deploys no TSA and sets no NIMBUS_TSA_URLS."""
    docs = helm.render({"tsa": {"enabled": False}})
    assert "NIMBUS_TSA_URLS" not in env_of(mta_container(docs))
    assert not [
        d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "tsa"
    ]


# --- secrets ----------------------------------------------------------------------------------


def test_auth_secret_is_generated_with_a_password() -> None:
    """Without existingSecret the chart creates the users' Secret, generating empty passwords."""
    docs = helm.render({"auth": {"users": {"nimbus": "", "ops": "s3cret"}}})
    secret = one(docs, "Secret", "http-auth")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert re.fullmatch(r"[A-Za-z0-9]{32}", data["nimbus"])
    assert data["ops"] == "s3cret"
    volumes = {v["name"]: v for v in pod_spec(mta(docs))["volumes"]}
    assert volumes["http-auth"]["secret"]["secretName"] == secret["metadata"]["name"]


def test_existing_auth_secret_is_mounted_not_rendered() -> None:
    """With auth.existingSecret (and the others) no Secret is rendered and the MTA mounts the
    existing one at NIMBUS_HTTP_AUTH_DIR."""
    docs = rendered("existing-secrets")
    assert of_kind(docs, "Secret") == []
    container = mta_container(docs)
    env = env_of(container)
    volumes = {v["name"]: v for v in pod_spec(mta(docs))["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts[env["NIMBUS_HTTP_AUTH_DIR"]]]["secret"]["secretName"] == "mail-api-users"
    assert (
        volumes[mounts[env["NIMBUS_HTTP_ADMIN_AUTH_DIR"]]]["secret"]["secretName"] == "mail-admins"
    )


def test_dkim_keys_are_mounted_as_domain_selector_files() -> None:
    """DKIM keys land at <mountPath>/<domain>/<selector>.key, as dkim_data.toml expects."""
    for variant, secret_name in (
        ("existing-secrets", "mail-dkim-keys"),
        ("everything-on", f"{helm.RELEASE}-nimbus-dkim"),
    ):
        docs = rendered(variant)
        volumes = {v["name"]: v for v in pod_spec(mta(docs))["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in mta_container(docs)["volumeMounts"]}
        assert mounts["dkim"] == "/opt/kumomta/etc/dkim"
        assert volumes["dkim"]["secret"]["secretName"] == secret_name
        for item in volumes["dkim"]["secret"]["items"]:
            domain, selector, _ = item["key"].rsplit(".", 2)
            assert item["path"] == f"{domain}/{selector}.key"
    secret = one(rendered("everything-on"), "Secret", "dkim")
    assert set(secret["data"]) == {"example.com.s1.key"}


def mounted_file(docs: list[dict[str, Any]], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The MTA volume and volumeMount that ``path`` (a file in a mounted directory) lives in."""
    container = mta_container(docs)
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod_spec(mta(docs))["volumes"] if v["name"] == mount["name"]]
    return volume, mount


def test_cluster_secret_is_generated_and_mounted_read_only() -> None:
    """By default the chart generates a 48-character cluster secret and mounts it read-only
    so that NIMBUS_CLUSTER_SECRET_FILE (/etc/nimbus/cluster/secret) is its key "secret"."""
    docs = rendered("")
    secret = one(docs, "Secret", "cluster-secret")
    assert set(secret["data"]) == {"secret"}
    assert re.fullmatch(r"[A-Za-z0-9]{48}", base64.b64decode(secret["data"]["secret"]).decode())
    path = env_of(mta_container(docs))["NIMBUS_CLUSTER_SECRET_FILE"]
    assert path == "/etc/nimbus/cluster/secret"
    volume, mount = mounted_file(docs, path)
    assert mount["readOnly"] is True and mount["mountPath"] == "/etc/nimbus/cluster"
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": "secret", "path": "secret"}]
    assert volume["secret"]["defaultMode"] == 0o440


def test_cluster_secret_is_kept_across_upgrades(tmp_path: Path) -> None:
    """When lookup finds the live cluster Secret its value is reused (here the chart's lookup
    is replaced by the object a cluster would return, as helm_python renders offline)."""
    copy = tmp_path / "chart"
    shutil.copytree(helm.CHART, copy)
    template = copy / "templates" / "cluster-secret.yaml"
    call = 'lookup "v1" "Secret" .Release.Namespace $name'
    live = base64.b64encode(b"L" * 48).decode()
    assert template.read_text().count(call) == 1
    template.write_text(template.read_text().replace(call, f'dict "data" (dict "secret" "{live}")'))
    secret = one(helm.render({}, chart_dir=copy), "Secret", "cluster-secret")
    assert secret["data"] == {"secret": live}


def test_generated_cluster_secret_does_not_roll_the_pods() -> None:
    """A fresh render generates a new value (lookup finds nothing offline), and the MTA pod
    template carries no checksum of it: re-rendering never rolls the pods by itself."""
    first, second = helm.render({}), helm.render({})
    assert (
        one(first, "Secret", "cluster-secret")["data"]
        != one(second, "Secret", "cluster-secret")["data"]
    )
    assert mta(first)["spec"]["template"] == mta(second)["spec"]["template"]


def test_existing_cluster_secret_is_mounted_not_rendered() -> None:
    """With mta.xfer.existingSecret no cluster Secret is rendered; its key "secret" is mounted
    at NIMBUS_CLUSTER_SECRET_FILE."""
    docs = rendered("existing-secrets")
    assert not [s for s in of_kind(docs, "Secret") if s["metadata"]["name"].endswith("-cluster")]
    volume, mount = mounted_file(docs, env_of(mta_container(docs))["NIMBUS_CLUSTER_SECRET_FILE"])
    assert volume["secret"]["secretName"] == "mail-cluster-secret"
    assert volume["secret"]["items"] == [{"key": "secret", "path": "secret"}]
    assert mount["readOnly"] is True


@pytest.mark.parametrize("variant", VARIANTS)
def test_cluster_peers_are_the_headless_service(variant: str) -> None:
    """NIMBUS_CLUSTER_PEERS is the StatefulSet's headless Service: it selects the MTA pods,
    publishes them ready or not (a stopping peer answers 503 and the next is tried), and
    serves the NIMBUS_HTTP_LISTEN port, the port DNS peers are reached on."""
    docs = rendered(variant)
    sts = mta(docs)
    env = env_of(mta_container(docs))
    assert env["NIMBUS_CLUSTER_PEERS"] == sts["spec"]["serviceName"]
    assert env["NIMBUS_CLUSTER_PEERS"] == f"{helm.RELEASE}-nimbus-mta-headless"
    (svc,) = [
        s for s in of_kind(docs, "Service") if s["metadata"]["name"] == env["NIMBUS_CLUSTER_PEERS"]
    ]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert selects(svc["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    http = parse_hostport(env["NIMBUS_HTTP_LISTEN"])[1]
    assert http in {
        container_port(mta_container(docs), p["targetPort"]) for p in svc["spec"]["ports"]
    }


def test_no_dkim_volume_without_keys() -> None:
    """Defaults mount no DKIM volume and render no DKIM Secret."""
    docs = rendered("")
    assert "dkim" not in {v["name"] for v in pod_spec(mta(docs))["volumes"]}
    assert not [s for s in of_kind(docs, "Secret") if s["metadata"]["name"].endswith("-dkim")]


# --- policy ConfigMap -----------------------------------------------------------------------


def bundled_policy_files() -> dict[str, str]:
    policy = REPO / "policy"
    paths = [policy / "init.py", *sorted(policy.glob("*.toml"))]
    return {p.name: p.read_text() for p in paths}


def test_chart_policy_copy_matches_the_bundled_policy() -> None:
    """chart/files/policy is byte-identical to policy/ (init.py + *.toml); run
    chart/hack/sync-policy.sh after editing policy/."""
    chart_copy = {p.name: p.read_text() for p in (helm.CHART / "files" / "policy").iterdir()}
    assert chart_copy == bundled_policy_files()


def test_policy_configmap_holds_the_bundled_files_at_the_policy_dir() -> None:
    """The policy ConfigMap carries every bundled file and is mounted at NIMBUS_POLICY_DIR."""
    docs = rendered("")
    cm = one(docs, "ConfigMap", "policy")
    assert cm["data"] == bundled_policy_files()
    container = mta_container(docs)
    mount = next(
        m
        for m in container["volumeMounts"]
        if m["mountPath"] == env_of(container)["NIMBUS_POLICY_DIR"]
    )
    volume = next(v for v in pod_spec(mta(docs))["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == cm["metadata"]["name"]


def test_policy_file_override_and_addition() -> None:
    """policy.files replaces a bundled file by name and adds new ones."""
    docs = helm.render(
        {
            "policy": {
                "files": {"shaping.toml": "# mine\n", "extra.toml": "x = 1\n", "queues.toml": ""}
            }
        }
    )
    data = one(docs, "ConfigMap", "policy")["data"]
    assert data["shaping.toml"] == "# mine\n"
    assert data["extra.toml"] == "x = 1\n"
    assert data["queues.toml"] == bundled_policy_files()["queues.toml"]


def test_policy_file_from_set_file(tmp_path: Path) -> None:
    """--set-file policy.files.shaping\\.toml=<path> overrides that file."""
    path = tmp_path / "shaping.toml"
    path.write_text("# from a file\n")
    values = helm.parse_set_file(f"policy.files.shaping\\.toml={path}")
    data = one(helm.render(values), "ConfigMap", "policy")["data"]
    assert data["shaping.toml"] == "# from a file\n"


def test_policy_change_rolls_the_pods() -> None:
    """The MTA and TSA checksum annotations change when a policy file changes."""

    def checksums(values: dict[str, Any]) -> tuple[str, str]:
        docs = helm.render(values)
        return tuple(
            w["spec"]["template"]["metadata"]["annotations"]["checksum/policy"]
            for w in (mta(docs), one(docs, "Deployment", "tsa"))
        )

    a = checksums({"policy": {"files": {"shaping.toml": "# version 1\n"}}})
    b = checksums({"policy": {"files": {"shaping.toml": "# version 2\n"}}})
    assert a[0] != b[0] and a[1] != b[1]
    assert checksums({"policy": {"files": {"shaping.toml": "# version 1\n"}}}) == a


# --- the runtime contract ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_nimbus_env_var_is_a_real_setting(variant: str) -> None:
    """Each NIMBUS_* variable a pod sets is a name engine.config.settings accepts."""
    known = nimbus_env_names()
    assert {"NIMBUS_SMTP_LISTEN", "NIMBUS_NODE_ID", "NIMBUS_TSA_URLS"} <= known
    used = {
        name
        for _, c in containers(rendered(variant))
        for name in env_of(c)
        if name.startswith("NIMBUS_")
    }
    assert used and used <= known, sorted(used - known)


@pytest.mark.parametrize("variant", VARIANTS)
def test_env_values_load_as_settings(variant: str, tmp_path: Path) -> None:
    """Each Nimbus container's environment loads with engine.config.settings.load_settings (values
    from fieldRef/secretKeyRef stand in as placeholders, a mounted *_FILE as a local file)."""
    mounted = tmp_path / "mounted-file"
    mounted.write_text("x")
    for _, c in containers(rendered(variant)):
        if c["command"] != ["nimbus"]:
            continue
        env = {}
        for name, value in env_of(c).items():
            if isinstance(value, str) and name.endswith("_FILE"):
                env[name] = str(mounted)
            elif isinstance(value, str):
                env[name] = value
            elif "fieldRef" in value:
                env[name] = "pod-0"
            else:
                env[name] = "redis://redis:6379/0"
        nimbus_config.load_settings(env=env)


@pytest.mark.parametrize("variant", VARIANTS)
def test_containers_are_explicit_for_the_local_cluster(variant: str) -> None:
    """Containers name their command and args as lists (no shell), with env values that are
    literal strings or fieldRef/secretKeyRef only."""
    for _, c in containers(rendered(variant)):
        assert c["command"] and all(isinstance(a, str) for a in c["command"] + c.get("args", []))
        assert Path(c["command"][0]).name not in {"sh", "bash", "dash", "ash"}
        for e in c.get("env", []):
            if "value" in e:
                assert isinstance(e["value"], str), e
            else:
                assert set(e["valueFrom"]) <= {"fieldRef", "secretKeyRef"}, e
        assert "envFrom" not in c


@pytest.mark.parametrize("variant", VARIANTS)
def test_listen_ports_match_container_and_service_ports(variant: str) -> None:
    """Each *_LISTEN port is a container port, and every Service targetPort reaches one."""
    docs = rendered(variant)
    for w, c in containers(docs):
        env = env_of(c)
        listen = {
            parse_hostport(v)[1]
            for k, v in env.items()
            if k.startswith("NIMBUS_") and k.endswith("_LISTEN")
        }
        declared = {p["containerPort"] for p in c.get("ports", [])}
        if c["command"] == ["nimbus"]:
            assert listen == declared, (w["metadata"]["name"], listen, declared)
        services = services_for(docs, w)
        assert services, f"no Service selects {w['metadata']['name']}"
        for svc in services:
            for p in svc["spec"]["ports"]:
                assert container_port(c, p["targetPort"]) in declared


def test_mta_service_ports() -> None:
    """The ClusterIP Service maps SMTP 25 and HTTP 8000 to NIMBUS_SMTP_LISTEN/NIMBUS_HTTP_LISTEN."""
    docs = rendered("")
    container = mta_container(docs)
    env = env_of(container)
    svc = next(s for s in services_for(docs, mta(docs)) if s["spec"].get("clusterIP") != "None")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["smtp"]["port"] == 25 and ports["http"]["port"] == 8000
    assert (
        container_port(container, ports["smtp"]["targetPort"])
        == parse_hostport(env["NIMBUS_SMTP_LISTEN"])[1]
    )
    assert (
        container_port(container, ports["http"]["targetPort"])
        == parse_hostport(env["NIMBUS_HTTP_LISTEN"])[1]
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_selectors_match_pod_labels(variant: str) -> None:
    """Workload selectors match their pods; each Service, PDB and NetworkPolicy selects the
    pods of exactly one workload."""
    docs = rendered(variant)
    pods = {
        w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in workloads(docs)
    }
    for w in workloads(docs):
        assert selects(w["spec"]["selector"]["matchLabels"], pods[w["metadata"]["name"]])
    for svc in of_kind(docs, "Service"):
        assert (
            len([n for n, labels in pods.items() if selects(svc["spec"]["selector"], labels)]) == 1
        ), svc["metadata"]["name"]
    for obj in of_kind(docs, "PodDisruptionBudget") + of_kind(docs, "NetworkPolicy"):
        selector = (
            obj["spec"]["selector"]
            if obj["kind"] == "PodDisruptionBudget"
            else obj["spec"]["podSelector"]
        )
        matched = [
            n
            for n, labels in pods.items()
            if selects(selector["matchLabels"], labels)
            and all(
                labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])
            )
        ]
        assert matched, obj["metadata"]["name"]


def test_mta_statefulset_shape() -> None:
    """Parallel pods, a spool claim per pod at NIMBUS_SPOOL_DIR, a headless serviceName,
    readiness on /api/check-liveness/v1, NIMBUS_NODE_ID from the pod name."""
    docs = rendered("")
    sts = mta(docs)
    container = mta_container(docs)
    env = env_of(container)
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["replicas"] == 2 and env["NIMBUS_CLUSTER_NODES"] == "2"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[env["NIMBUS_SPOOL_DIR"]] == claim["metadata"]["name"]
    headless = next(
        s for s in of_kind(docs, "Service") if s["metadata"]["name"] == sts["spec"]["serviceName"]
    )
    assert headless["spec"]["clusterIP"] == "None"
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/api/check-liveness/v1"
    assert container_port(container, probe["port"]) == parse_hostport(env["NIMBUS_HTTP_LISTEN"])[1]
    assert env["NIMBUS_NODE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert container["command"] == ["nimbus"] and container["args"] == ["mta"]
    assert container["resources"]["requests"]
    assert "checksum/policy" in sts["spec"]["template"]["metadata"]["annotations"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_mta_probes(variant: str) -> None:
    """On the HTTP listener: start-up waits for readiness (/api/check-liveness/v1, 120 x 5 s
    for spool recovery), readiness on the same route, liveness on /api/check-alive/v1."""
    docs = rendered(variant)
    container = mta_container(docs)
    http = parse_hostport(env_of(container)["NIMBUS_HTTP_LISTEN"])[1]
    paths = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]
        assert container_port(container, probe["httpGet"]["port"]) == http
        assert set(probe) - {"httpGet"} <= {
            "initialDelaySeconds",
            "periodSeconds",
            "timeoutSeconds",
            "failureThreshold",
        }
        paths[kind] = probe["httpGet"]["path"]
    assert paths == {
        "startupProbe": "/api/check-liveness/v1",
        "readinessProbe": "/api/check-liveness/v1",
        "livenessProbe": "/api/check-alive/v1",
    }
    startup = container["startupProbe"]
    assert (startup["failureThreshold"], startup["periodSeconds"]) == (120, 5)


def test_mta_probe_timings_come_from_values() -> None:
    """Each probe's timing is set from mta.<probe> (the paths stay the chart's)."""
    values = {
        "mta": {
            "startupProbe": {"failureThreshold": 360},
            "readinessProbe": {"periodSeconds": 2},
            "livenessProbe": {"timeoutSeconds": 9},
        }
    }
    container = mta_container(helm.render(values))
    assert container["startupProbe"]["failureThreshold"] == 360
    assert container["readinessProbe"]["periodSeconds"] == 2
    assert container["livenessProbe"]["timeoutSeconds"] == 9
    assert container["livenessProbe"]["httpGet"]["path"] == "/api/check-alive/v1"


@pytest.mark.parametrize("variant", VARIANTS)
def test_spool_claims_are_retained_at_scale_in_and_delete(variant: str) -> None:
    """The chart never deletes a spool claim: scaled-in and deleted pods keep their volume,
    and the spool stays a volumeClaimTemplate."""
    sts = mta(rendered(variant))
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenScaled": "Retain",
        "whenDeleted": "Retain",
    }
    assert [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]] == ["spool"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_grace_period_covers_the_drain(variant: str) -> None:
    """terminationGracePeriodSeconds exceeds the shutdown deadline plus any preStop sleep plus
    the transfer deadline (when the pod transfers its spool at shutdown)."""
    docs = rendered(variant)
    spec = pod_spec(mta(docs))
    container = spec["containers"][0]
    env = env_of(container)
    deadline = parse_duration(env["NIMBUS_DELIVERY_SHUTDOWN_DEADLINE"])
    sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    xfer = parse_duration(env["NIMBUS_CLUSTER_XFER_DEADLINE"])
    assert env["NIMBUS_CLUSTER_XFER_ON_SHUTDOWN"] == "true"
    assert spec["terminationGracePeriodSeconds"] > deadline + sleep + xfer


def test_grace_period_too_short_fails_the_render() -> None:
    """A grace period that doesn't cover the deadline is refused."""
    with pytest.raises(helm.RenderError, match="terminationGracePeriodSeconds"):
        helm.render({"mta": {"shutdownDeadlineSeconds": 60, "terminationGracePeriodSeconds": 30}})


def test_grace_period_must_cover_the_transfer_deadline() -> None:
    """With xfer on, a grace period that covers the drain but not the transfer deadline fails
    the render, naming every term; with xfer off the same grace period is enough."""
    message = (
        r"mta.terminationGracePeriodSeconds \(80\) must exceed mta.shutdownDeadlineSeconds \+ "
        r"mta.preStopSleepSeconds \+ mta.xfer.deadlineSeconds \(85\)"
    )
    with pytest.raises(helm.RenderError, match=message):
        helm.render({"mta": {"terminationGracePeriodSeconds": 80}})
    docs = helm.render({"mta": {"terminationGracePeriodSeconds": 80, "xfer": {"enabled": False}}})
    assert pod_spec(mta(docs))["terminationGracePeriodSeconds"] == 80


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, ("true", "60s", "16")),
        (helm.load_values("everything-on"), ("true", "45s", "32")),
        ({"mta": {"xfer": {"enabled": False}}}, ("false", "60s", "16")),
    ],
    ids=["defaults", "everything-on", "disabled"],
)
def test_xfer_values_become_the_cluster_settings(
    values: dict[str, Any], expected: tuple[str, str, str]
) -> None:
    """mta.xfer.enabled/deadlineSeconds/concurrency set NIMBUS_CLUSTER_XFER_ON_SHUTDOWN,
    _DEADLINE and _CONCURRENCY; the defaults pass the grace check (120 > 25 + 0 + 60)."""
    docs = helm.render(values)
    env = env_of(mta_container(docs))
    names = ("ON_SHUTDOWN", "DEADLINE", "CONCURRENCY")
    assert tuple(env[f"NIMBUS_CLUSTER_XFER_{n}"] for n in names) == expected
    if not values:
        assert pod_spec(mta(docs))["terminationGracePeriodSeconds"] == 120


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_run_as_non_root(variant: str) -> None:
    """Every pod runs as non-root without privilege escalation and with resources set."""
    for w, c in containers(rendered(variant)):
        pod_sc = pod_spec(w).get("securityContext", {})
        sc = c.get("securityContext", {})
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
        assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert pod_spec(w)["automountServiceAccountToken"] is False


# --- optional objects --------------------------------------------------------------------------


def test_hpa_scales_the_statefulset() -> None:
    """The HPA targets the MTA StatefulSet, which then leaves replicas to it, and the MTAs
    split limits by maxReplicas."""
    docs = rendered("everything-on")
    hpa = one(docs, "HorizontalPodAutoscaler")
    sts = mta(docs)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": sts["metadata"]["name"],
    }
    assert "replicas" not in sts["spec"]
    assert env_of(mta_container(docs))["NIMBUS_CLUSTER_NODES"] == str(hpa["spec"]["maxReplicas"])


@pytest.mark.parametrize("variant", ["", "everything-on"])
def test_pdb_covers_the_mta_pods(variant: str) -> None:
    """The PodDisruptionBudget (on by default) selects the MTA pods, one down at a time."""
    docs = rendered(variant)
    pdb = one(docs, "PodDisruptionBudget")
    assert selects(
        pdb["spec"]["selector"]["matchLabels"], mta(docs)["spec"]["template"]["metadata"]["labels"]
    )
    assert pdb["spec"]["maxUnavailable"] == 1


AUTOSCALING_MODES = [
    # (case, mta.autoscaling values, the autoscaler kind rendered or None)
    ("enabled: true, no mode: hpa", {"enabled": True}, "HorizontalPodAutoscaler"),
    ("mode hpa", {"mode": "hpa"}, "HorizontalPodAutoscaler"),
    ("mode off wins over enabled", {"mode": "off", "enabled": True}, None),
    ("defaults: off", {}, None),
    (
        "mode keda wins over enabled",
        {"mode": "keda", "enabled": True, "keda": {"prometheusServerAddress": "http://p:9090"}},
        "ScaledObject",
    ),
]


@pytest.mark.parametrize(
    "case,autoscaling,kind", AUTOSCALING_MODES, ids=[c[0] for c in AUTOSCALING_MODES]
)
def test_autoscaling_modes(case: str, autoscaling: dict[str, Any], kind: str | None) -> None:
    """mta.autoscaling.mode picks one autoscaler (an empty mode follows enabled); with one the
    StatefulSet leaves replicas to it and NIMBUS_CLUSTER_NODES is maxReplicas, else replicas."""
    docs = helm.render({"mta": {"replicas": 3, "autoscaling": {"maxReplicas": 7, **autoscaling}}})
    scalers = [d for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert [d["kind"] for d in scalers] == ([kind] if kind else [])
    sts = mta(docs)
    nodes = env_of(mta_container(docs))["NIMBUS_CLUSTER_NODES"]
    if kind:
        assert "replicas" not in sts["spec"] and nodes == "7"
    else:
        assert sts["spec"]["replicas"] == 3 and nodes == "3"


def test_autoscaling_min_above_max_fails_the_render() -> None:
    """minReplicas above maxReplicas is refused when an autoscaler is on (KEDA's CRD has the
    same rule in CEL, which the vendored JSON Schema cannot express)."""
    values = {"mta": {"autoscaling": {"mode": "hpa", "minReplicas": 5, "maxReplicas": 4}}}
    with pytest.raises(helm.RenderError, match=r"minReplicas \(5\) must not exceed"):
        helm.render(values)


def keda_schema() -> dict[str, Any]:
    return json.loads(KEDA_SCHEMA.read_text())


def scaled_object(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "ScaledObject")


def test_keda_schema_is_vendored_with_its_source() -> None:
    """The vendored ScaledObject schema is a valid draft-07 schema naming its source."""
    schema = keda_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    assert "kedacore/keda" in schema["$comment"]
    assert "config/crd/bases/keda.sh_scaledobjects.yaml" in schema["$comment"]
    assert re.search(r"commit [0-9a-f]{40}", schema["$comment"])


def test_scaled_object_is_valid_under_the_keda_crd_schema() -> None:
    """The rendered ScaledObject validates against KEDA's CRD schema (and its CEL rule
    minReplicaCount <= maxReplicaCount, checked by hand)."""
    so = scaled_object(rendered("keda"))
    assert (so["apiVersion"], so["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    jsonschema.Draft7Validator(keda_schema()).validate(so)
    assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]


def _break(path: str, value: Any) -> dict[str, Any]:
    """The keda variant's ScaledObject with ``path`` (dotted; ``-`` deletes) set to value."""
    so = json.loads(json.dumps(scaled_object(rendered("keda"))))
    *parents, last = path.split(".")
    node = so
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value == "-":
        del node[last]
    else:
        node[last] = value
    return so


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.triggers.0.metadata", "-"),
        ("spec.triggers", []),
        ("spec.triggers.0.metadata.threshold", 5000),
        ("spec.maxReplicaCount", "10"),
        ("spec.minReplicaCount", -1),
        ("spec.maxReplicas", 10),
        ("spec.scaleTargetRef.name", "-"),
    ],
    ids=lambda v: json.dumps(v),
)
def test_keda_schema_refuses_a_broken_scaled_object(path: str, value: Any) -> None:
    """A ScaledObject broken in one place fails the vendored schema (the test has teeth)."""
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(keda_schema()).validate(_break(path, value))


def test_keda_scales_the_statefulset_on_queued_messages() -> None:
    """The ScaledObject targets the MTA StatefulSet with the autoscaling bounds and one
    prometheus trigger summing nimbus_queued_messages over the release's MTA pods."""
    docs = rendered("keda")
    so, sts = scaled_object(docs), mta(docs)
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": sts["metadata"]["name"],
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 10)
    assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (15, 600)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"] == {
        "serverAddress": "http://prometheus-operated.monitoring:9090",
        "query": (
            f'sum(nimbus_queued_messages{{namespace="{helm.NAMESPACE}",'
            f'pod=~"{sts["metadata"]["name"]}-[0-9]+"}})'
        ),
        "threshold": "2000",
        "activationThreshold": "50",
    }
    assert "replicas" not in sts["spec"] and not of_kind(docs, "HorizontalPodAutoscaler")
    assert env_of(mta_container(docs))["NIMBUS_CLUSTER_NODES"] == "10"
    scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert scale_down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]


def test_keda_defaults() -> None:
    """With only the server address set: threshold "5000", activationThreshold "100", and
    KEDA's own polling and cooldown defaults."""
    values = {
        "mta": {"autoscaling": {"mode": "keda", "keda": {"prometheusServerAddress": "http://p"}}}
    }
    spec = scaled_object(helm.render(values))["spec"]
    (trigger,) = spec["triggers"]
    assert (trigger["metadata"]["threshold"], trigger["metadata"]["activationThreshold"]) == (
        "5000",
        "100",
    )
    assert "pollingInterval" not in spec and "cooldownPeriod" not in spec
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 6)


def test_keda_needs_a_prometheus_server_address() -> None:
    """mode keda without mta.autoscaling.keda.prometheusServerAddress fails, naming it."""
    with pytest.raises(
        helm.RenderError,
        match=r"mta.autoscaling.keda.prometheusServerAddress is required when "
        r"mta.autoscaling.mode is keda",
    ):
        helm.render({"mta": {"autoscaling": {"mode": "keda"}}})


def test_keda_query_uses_the_queued_messages_gauge() -> None:
    """The trigger's PromQL names only nimbus_queued_messages, a series of Nimbus's /metrics
    (skipped until the engine exports it: the gauge comes with the engine's xfer work)."""
    (trigger,) = scaled_object(rendered("keda"))["spec"]["triggers"]
    assert promql_metric_names(trigger["metadata"]["query"]) == {"nimbus_queued_messages"}
    if "nimbus_queued_messages" not in exported_metric_names():
        pytest.skip("the engine does not export nimbus_queued_messages yet")


def test_pdb_can_be_switched_off() -> None:
    """mta.podDisruptionBudget.enabled=false renders no PodDisruptionBudget."""
    docs = helm.render({"mta": {"podDisruptionBudget": {"enabled": False}}})
    assert of_kind(docs, "PodDisruptionBudget") == []


def test_network_policy_limits_injection_to_allowed_sources() -> None:
    """The MTA NetworkPolicy admits SMTP/HTTP only from the release, the allowed namespaces
    and the allowed CIDRs (never an empty `from`, which would admit everyone)."""
    docs = rendered("everything-on")
    policy = next(
        p
        for p in of_kind(docs, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == "mta"
    )
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    sources = rule["from"]
    assert {"ipBlock": {"cidr": "203.0.113.0/24"}} in sources
    namespaces = {
        s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for s in sources
        if "namespaceSelector" in s
    }
    assert namespaces == {"monitoring", "apps"}
    assert {"podSelector": {}} not in sources  # allowSameNamespace: false
    container = mta_container(docs)
    env = env_of(container)
    assert {container_port(container, p["port"]) for p in rule["ports"]} == {
        parse_hostport(env["NIMBUS_SMTP_LISTEN"])[1],
        parse_hostport(env["NIMBUS_HTTP_LISTEN"])[1],
    }
    for p in of_kind(docs, "NetworkPolicy"):
        assert all(r.get("from") for r in p["spec"]["ingress"])


def test_dashboard_configmap_embeds_the_dashboard_json() -> None:
    """The dashboard ConfigMap carries dashboards/nimbus.json with the sidecar's label."""
    cm = next(
        d
        for d in of_kind(rendered("everything-on"), "ConfigMap")
        if d["metadata"]["labels"].get("grafana_dashboard") == "1"
    )
    assert json.loads(cm["data"]["nimbus.json"]) == json.loads(
        (helm.CHART / "dashboards" / "nimbus.json").read_text()
    )


def test_dashboard_promql_uses_only_exported_metrics() -> None:
    """Every metric name in the dashboard's PromQL is in Nimbus's /metrics exposition."""
    dashboard = json.loads((helm.CHART / "dashboards" / "nimbus.json").read_text())
    exprs = dashboard_exprs(dashboard)
    assert exprs
    exported = exported_metric_names()
    assert {"nimbus_messages_delivered_total", "nimbus_ready_messages"} <= exported
    used = set().union(*(promql_metric_names(e) for e in exprs))
    assert used and used <= exported, sorted(used - exported)
    assert "${datasource}" in json.dumps(dashboard)


def test_promql_name_extraction() -> None:
    """The PromQL scanner finds metric names and skips functions, labels and numbers."""
    expr = (
        'histogram_quantile(0.99, sum by (le, event) (rate(x_bucket{a="b"}[5m]))) '
        "/ clamp_min(y_total offset 1h, 1e-9)"
    )
    assert promql_metric_names(expr) == {"x_bucket", "y_total"}


def test_notes_explain_injecting_a_first_message() -> None:
    """NOTES.txt shows a curl to /api/inject/v1 with the credentials from the auth Secret."""
    notes = next(t for p, t in helm.render_templates({}).items() if p.endswith("NOTES.txt"))
    assert "/api/inject/v1" in notes and "curl" in notes
    assert f"get secret {helm.RELEASE}-nimbus-http-auth" in notes
    assert "NIMBUS_USER=nimbus" in notes
    existing = next(
        t
        for p, t in helm.render_templates(helm.load_values("existing-secrets")).items()
        if p.endswith("NOTES.txt")
    )
    assert "get secret mail-api-users" in existing
