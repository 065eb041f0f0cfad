"""The chart's PrometheusRule (metrics.prometheusRule): rendered with the real Helm engine,
valid under prometheus-operator's CRD schema (vendored), and checked by Debian's promtool:
``promtool check rules`` on the rendered groups and ``promtool test rules`` with the unit
tests of ``tests/chart/promtool/alerts.test.yaml`` (one firing and one quiet case per alert).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("helm_python", reason="helm-python-sdk==0.2.2 (test extra) is not installed")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")

from . import helm  # noqa: E402
from .test_chart import exported_metric_names, promql_metric_names  # noqa: E402

HERE = Path(__file__).resolve().parent
SCHEMA = HERE / "schemas" / "prometheusrule-v1.json"
PROMTOOL_TESTS = HERE / "promtool" / "alerts.test.yaml"
RULES_FILE = "nimbus-alerts.rules.yaml"  # the name alerts.test.yaml's rule_files uses
ALERTS = {
    "oldestMessageAge": "NimbusOldestMessageAge",
    "queueGrowth": "NimbusQueueGrowing",
    "bounceRate": "NimbusBounceRateHigh",
    "deferralRate": "NimbusDeferralRateHigh",
    "redisDegraded": "NimbusRedisDegraded",
    "tsaUnreachable": "NimbusTsaUnreachable",
    "spoolDiskLow": "NimbusSpoolDiskLow",
    "loadShedding": "NimbusLoadShedding",
}
# Gauges another branch adds to the engine (issue 12); the rules may name them already.
PENDING_GAUGES = {"nimbus_queued_messages", "nimbus_oldest_message_age_seconds"}
ON = {"metrics": {"prometheusRule": {"enabled": True}}}


def prometheus_rule(values: dict[str, Any]) -> dict[str, Any]:
    (rule,) = [d for d in helm.render(values) if d["kind"] == "PrometheusRule"]
    return rule


def alert_rules(values: dict[str, Any] = ON) -> dict[str, dict[str, Any]]:
    (group,) = prometheus_rule(values)["spec"]["groups"]
    return {r["alert"]: r for r in group["rules"]}


def write_rules(directory: Path, values: dict[str, Any] = ON) -> Path:
    """The rendered rule groups as a Prometheus rule file (what the operator mounts)."""
    path = directory / RULES_FILE
    path.write_text(yaml.safe_dump({"groups": prometheus_rule(values)["spec"]["groups"]}))
    return path


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus; tests/run installs it)")
    return path


def with_alert(name: str, **settings: Any) -> dict[str, Any]:
    return {"metrics": {"prometheusRule": {"enabled": True, "alerts": {name: settings}}}}


# --- the object -------------------------------------------------------------------------------


def test_prometheus_rule_is_off_by_default() -> None:
    """The default values render no PrometheusRule."""
    assert not [d for d in helm.render({}) if d["kind"] == "PrometheusRule"]


def test_prometheus_rule_schema_is_vendored_with_its_source() -> None:
    """The vendored PrometheusRule schema is a valid draft-07 schema naming its source."""
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert "prometheus-operator/prometheus-operator" in schema["$comment"]
    assert "monitoring.coreos.com_prometheusrules.yaml" in schema["$comment"]
    assert re.search(r"tag v\d+\.\d+\.\d+ \(commit [0-9a-f]{40}\)", schema["$comment"])


@pytest.mark.parametrize("values", [ON, helm.load_values("everything-on")], ids=["on", "all"])
def test_prometheus_rule_is_valid_under_the_crd_schema(values: dict[str, Any]) -> None:
    """The rendered PrometheusRule validates against prometheus-operator's CRD schema."""
    rule = prometheus_rule(values)
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(rule)


def test_crd_schema_refuses_a_misspelt_rule_field() -> None:
    """The vendored schema is strict: an unknown rule field (``fro``) is refused."""
    rule = prometheus_rule(ON)
    rule["spec"]["groups"][0]["rules"][0]["fro"] = "5m"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(rule)


def test_prometheus_rule_namespace_and_labels() -> None:
    """It lives in the release namespace unless metrics.prometheusRule.namespace says
    otherwise, carries the extra labels, and every alert carries alertLabels."""
    values = helm.load_values("everything-on")
    rule = prometheus_rule(values)
    assert rule["metadata"]["namespace"] == helm.NAMESPACE
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert all(r["labels"]["team"] == "mail" for r in alert_rules(values).values())
    moved = prometheus_rule({"metrics": {"prometheusRule": {"enabled": True, "namespace": "mon"}}})
    assert moved["metadata"]["namespace"] == "mon"
    assert 'namespace="mail"' in moved["spec"]["groups"][0]["rules"][0]["expr"]


def test_every_alert_is_on_by_default_and_can_be_switched_off() -> None:
    """All eight alerts are in the rule; disabling one removes it and only it."""
    assert set(alert_rules()) == set(ALERTS.values())
    for key, name in ALERTS.items():
        assert set(alert_rules(with_alert(key, enabled=False))) == set(ALERTS.values()) - {name}


def test_thresholds_for_and_severity_come_from_values() -> None:
    """An alert's threshold, ``for`` and severity are the values given."""
    rule = alert_rules(
        with_alert("oldestMessageAge", seconds=120, severity="page", **{"for": "1m"})
    )
    got = rule["NimbusOldestMessageAge"]
    assert got["expr"].endswith("> 120")
    assert (got["for"], got["labels"]["severity"]) == ("1m", "page")
    rule = alert_rules(with_alert("bounceRate", ratio=0.2, window="1h", minBounces=3))
    expr = rule["NimbusBounceRateHigh"]["expr"]
    assert ") > 0.2" in expr and "[1h]" in expr and expr.endswith(">= 3")


def test_interval_is_set_only_when_given() -> None:
    """The group has no interval by default (Prometheus's own), and the value when set."""
    (group,) = prometheus_rule(ON)["spec"]["groups"]
    assert "interval" not in group
    values = {"metrics": {"prometheusRule": {"enabled": True, "interval": "30s"}}}
    assert prometheus_rule(values)["spec"]["groups"][0]["interval"] == "30s"


@pytest.mark.parametrize(
    "bad",
    [
        with_alert("spoolDiskLow", freeRatio=2),
        with_alert("bounceRate", window="fifteen minutes"),
        with_alert("loadShedding", surprise=True),
        {"metrics": {"prometheusRule": {"enabled": True, "alerts": {"diskFull": {}}}}},
    ],
)
def test_schema_refuses_bad_alert_values(bad: dict[str, Any]) -> None:
    """values.schema.json refuses a ratio above 1, a malformed duration, unknown keys."""
    with pytest.raises(helm.ValuesError):
        helm.validate_schema(bad)


def test_alerts_watch_only_the_release_mta_pods() -> None:
    """Every metric selector in every expression names the release namespace and the MTA
    StatefulSet's pods (the labels a ServiceMonitor scrape gives them)."""
    for name, rule in alert_rules().items():
        selectors = re.findall(r"nimbus_\w+\{([^}]*)\}", rule["expr"])
        assert selectors, name
        for sel in selectors:
            assert f'namespace="{helm.NAMESPACE}"' in sel, name
            assert f'pod=~"{helm.RELEASE}-nimbus-mta-[0-9]+"' in sel, name


def test_alerts_use_only_exported_metrics() -> None:
    """Every metric an alert names is in Nimbus's /metrics exposition, or one of the queue
    gauges being added alongside (nimbus_queued_messages, nimbus_oldest_message_age_seconds)."""
    exported = exported_metric_names()
    for name, rule in alert_rules().items():
        used = promql_metric_names(rule["expr"])
        assert used and used <= exported | PENDING_GAUGES, (name, sorted(used - exported))


# --- promtool ---------------------------------------------------------------------------------


def test_promtool_check_rules(tmp_path: Path) -> None:
    """``promtool check rules`` accepts the rendered rule groups (everything-on values)."""
    path = write_rules(tmp_path, helm.load_values("everything-on"))
    done = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


def test_promtool_unit_tests_cover_every_alert() -> None:
    """alerts.test.yaml has, for every alert, a case where it fires and one where it does not."""
    cases = [
        case
        for test in yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for name in ALERTS.values():
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name}: no firing case"
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no quiet case"


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    """``promtool test rules`` passes alerts.test.yaml against the rendered rules."""
    write_rules(tmp_path)
    shutil.copy(PROMTOOL_TESTS, tmp_path / PROMTOOL_TESTS.name)
    done = subprocess.run(
        [promtool(), "test", "rules", PROMTOOL_TESTS.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_select_the_pods_the_service_monitor_scrapes() -> None:
    """The MTA ServiceMonitor selects the Service exposing the named metrics port, that
    Service selects the StatefulSet's pods, and the rules' pod regex matches those pods'
    names (<statefulset>-<ordinal>) in the release namespace: alerts see what is scraped."""
    docs = helm.render(helm.load_values("everything-on"))
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    (sm,) = [
        d
        for d in docs
        if d["kind"] == "ServiceMonitor"
        and d["metadata"]["labels"]["app.kubernetes.io/component"] == "mta"
    ]
    wanted = sm["spec"]["selector"]["matchLabels"]
    (svc,) = [
        d
        for d in docs
        if d["kind"] == "Service"
        and all(d["metadata"]["labels"].get(k) == v for k, v in wanted.items())
    ]
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [helm.NAMESPACE]}
    for rule in alert_rules(helm.load_values("everything-on")).values():
        (regex,) = set(re.findall(r'pod=~"([^"]+)"', rule["expr"]))
        assert re.fullmatch(regex, f"{sts['metadata']['name']}-0"), rule["alert"]
        assert not re.fullmatch(regex, f"{sts['metadata']['name']}-headless-0"), rule["alert"]
