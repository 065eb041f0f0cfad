"""engine.cluster.render: rendered manifests -> local process specs (pure), and the real chart.

Hand-written manifests pin each rule (env resolution, volumes, address and path rewriting,
replica naming, readiness, commands); the last tests translate the chart itself.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import re
import sys
from typing import Any

import pytest

from engine.cluster.chart import compose_values
from engine.cluster.command import add_subcommand
from engine.cluster.plan import Plan, TranslateError
from engine.cluster.render import DEFAULT_EXECUTABLES, translate
from engine.config import settings as nimbus_config

WORK = "/w"
NIMBUS = DEFAULT_EXECUTABLES["nimbus"]


# --- manifest builders ------------------------------------------------------------------------


def container(
    name: str = "app",
    *,
    command: list[str] | None = ("nimbus",),
    args=("mta",),
    env: list[dict] = (),
    ports: dict[str, int] | None = None,
    mounts: list[dict] = (),
    probe: dict | None = None,
    image: str = "ghcr.io/nimbus-mta/nimbus:0.1.0",
    **extra: Any,
) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "image": image,
        "args": list(args),
        "env": list(env),
        "ports": [{"name": n, "containerPort": p} for n, p in (ports or {}).items()],
        "volumeMounts": list(mounts),
        **extra,
    }
    if command is not None:
        c["command"] = list(command)
    if probe is not None:
        c["readinessProbe"] = probe
    return c


def workload(
    kind: str,
    name: str,
    containers: list[dict],
    *,
    replicas: int | None = 1,
    volumes: list[dict] = (),
    claims: tuple[str, ...] = (),
    service_name: str = "",
    labels: dict | None = None,
    annotations: dict | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": {
            "metadata": {"labels": labels or {"app": name}},
            "spec": {"containers": containers, "volumes": list(volumes)},
        }
    }
    if replicas is not None:
        spec["replicas"] = replicas
    if claims:
        spec["volumeClaimTemplates"] = [{"metadata": {"name": c}} for c in claims]
    if service_name:
        spec["serviceName"] = service_name
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": meta, "spec": spec}


def service(
    name: str, selector: dict, ports: dict[str, tuple[int, Any]], *, headless: bool = False
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": selector,
        "ports": [{"name": n, "port": p, "targetPort": t} for n, (p, t) in ports.items()],
    }
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def secret(name: str, data: dict[str, str] = (), string_data: dict[str, str] = ()) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in dict(data).items()},
        "stringData": dict(string_data),
    }


def configmap(name: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def run(manifests: list[dict], **kw: Any) -> Plan:
    ports = itertools.count(40000)
    return translate(
        manifests, workdir=WORK, namespace="mail", allocate_port=lambda: next(ports), **kw
    )


def only(plan: Plan, name: str):
    return next(s for s in plan.specs if s.name == name)


# --- env resolution ---------------------------------------------------------------------------

ENV_CASES = [
    ("literal", {"value": "info"}, "info"),
    ("number as text", {"value": "25"}, "25"),
    ("fieldRef pod name", {"valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}, "web-0"),
    (
        "fieldRef namespace",
        {"valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        "mail",
    ),
    ("fieldRef pod IP", {"valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}, "127.0.0.1"),
    ("fieldRef label", {"valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}, "web"),
    (
        "secretKeyRef data",
        {"valueFrom": {"secretKeyRef": {"name": "s", "key": "url"}}},
        "redis://cache.example:6379/1",
    ),
    (
        "secretKeyRef stringData",
        {"valueFrom": {"secretKeyRef": {"name": "s", "key": "plain"}}},
        "p@ss",
    ),
    (
        "configMapKeyRef",
        {"valueFrom": {"configMapKeyRef": {"name": "cm", "key": "level"}}},
        "debug",
    ),
    ("$(VAR) expansion", {"value": "node-$(POD)"}, "node-web-0"),
    ("$$ escape", {"value": "$$(POD)"}, "$(POD)"),
]


@pytest.mark.parametrize("case,item,expected", ENV_CASES, ids=[c[0] for c in ENV_CASES])
def test_env_resolution(case: str, item: dict, expected: str) -> None:
    env = [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "X", **item},
    ]
    plan = run(
        [
            secret("s", {"url": "redis://cache.example:6379/1"}, {"plain": "p@ss"}),
            configmap("cm", {"level": "debug"}),
            workload("StatefulSet", "web", [container(env=env)]),
        ]
    )
    assert only(plan, "web-0").env["X"] == expected


def test_env_optional_missing_is_left_out_and_required_missing_is_an_error() -> None:
    ref = {"secretKeyRef": {"name": "gone", "key": "k", "optional": True}}
    plan = run([workload("Deployment", "d", [container(env=[{"name": "A", "valueFrom": ref}])])])
    assert "A" not in only(plan, "d-0").env
    ref = {"secretKeyRef": {"name": "gone", "key": "k"}}
    with pytest.raises(TranslateError, match="Secret 'gone'"):
        run([workload("Deployment", "d", [container(env=[{"name": "A", "valueFrom": ref}])])])


def test_env_from_configmap_and_secret_with_prefix() -> None:
    c = container(
        envFrom=[{"configMapRef": {"name": "cm"}}, {"secretRef": {"name": "s"}, "prefix": "S_"}]
    )
    plan = run(
        [configmap("cm", {"A": "1"}), secret("s", {"B": "2"}), workload("Deployment", "d", [c])]
    )
    env = only(plan, "d-0").env
    assert env["A"] == "1" and env["S_B"] == "2"


# --- volumes ----------------------------------------------------------------------------------


def test_configmap_and_secret_volumes_become_files_under_the_pod_dir() -> None:
    mounts = [
        {"name": "policy", "mountPath": "/etc/nimbus/policy"},
        {"name": "auth", "mountPath": "/etc/nimbus/http-auth", "readOnly": True},
        {"name": "picked", "mountPath": "/etc/picked"},
    ]
    volumes = [
        {"name": "policy", "configMap": {"name": "pol"}},
        {"name": "auth", "secret": {"secretName": "users", "defaultMode": 288}},
        {
            "name": "picked",
            "configMap": {
                "name": "pol",
                "items": [{"key": "init.py", "path": "sub/main.py", "mode": 0o600}],
            },
        },
    ]
    plan = run(
        [
            configmap("pol", {"init.py": "x = 1\n", "a.toml": "[a]\n"}),
            secret("users", {"alice": "s3cret"}),
            workload("StatefulSet", "m", [container(mounts=mounts)], volumes=volumes),
        ]
    )
    spec = only(plan, "m-0")
    files = {f.path: (f.content, f.mode) for f in spec.files}
    assert files == {
        "/w/m-0/etc/nimbus/policy/a.toml": (b"[a]\n", 0o644),
        "/w/m-0/etc/nimbus/policy/init.py": (b"x = 1\n", 0o644),
        "/w/m-0/etc/nimbus/http-auth/alice": (b"s3cret", 0o440),
        "/w/m-0/etc/picked/sub/main.py": (b"x = 1\n", 0o600),
    }
    assert {(d.path, d.wipe) for d in spec.dirs} >= {
        ("/w/m-0/etc/nimbus/policy", True),
        ("/w/m-0/etc/nimbus/http-auth", True),
    }


DIR_CASES = [
    ("volumeClaimTemplate is kept", "spool", None, False),
    ("persistentVolumeClaim is kept", "data", {"persistentVolumeClaim": {"claimName": "c"}}, False),
    ("emptyDir starts empty", "data", {"emptyDir": {"sizeLimit": "1Gi"}}, True),
]


@pytest.mark.parametrize("case,name,source,wipe", DIR_CASES, ids=[c[0] for c in DIR_CASES])
def test_writable_volumes_are_per_pod_dirs(
    case: str, name: str, source: dict | None, wipe: bool
) -> None:
    volumes = [{"name": name, **source}] if source else []
    env = [{"name": "NIMBUS_SPOOL_DIR", "value": "/var/spool/nimbus"}]
    plan = run(
        [
            workload(
                "StatefulSet",
                "m",
                [container(env=env, mounts=[{"name": name, "mountPath": "/var/spool/nimbus"}])],
                replicas=2,
                volumes=volumes,
                claims=("spool",) if source is None else (),
            )
        ]
    )
    for i in range(2):
        spec = only(plan, f"m-{i}")
        assert spec.env["NIMBUS_SPOOL_DIR"] == f"/w/m-{i}/var/spool/nimbus"
        assert (f"/w/m-{i}/var/spool/nimbus", wipe) in {(d.path, d.wipe) for d in spec.dirs}
        assert spec.cwd == f"/w/m-{i}"


def test_missing_volume_source_is_an_error() -> None:
    c = container(mounts=[{"name": "auth", "mountPath": "/a"}])
    vol = [{"name": "auth", "secret": {"secretName": "existing-users"}}]
    with pytest.raises(TranslateError, match="existing-users"):
        run([workload("Deployment", "d", [c], volumes=vol)])


# --- address and path rewriting --------------------------------------------------------------


def rewrite_plan(value: str, *, as_arg: bool = False) -> tuple[str, Plan]:
    """``value`` as env X (or an argument) of pod mta-0, next to redis, tsa and an 80 port."""
    mounts = [
        {"name": "spool", "mountPath": "/var/spool/nimbus"},
        {"name": "cfg", "mountPath": "/etc/cfg"},
        {"name": "one", "mountPath": "/etc/one.toml", "subPath": "one.toml"},
    ]
    mta = container(
        "mta",
        args=["mta", value] if as_arg else ["mta"],
        env=[] if as_arg else [{"name": "X", "value": value}],
        ports={"smtp": 2525, "http": 8000},
        mounts=mounts,
    )
    manifests = [
        configmap("cfg", {"a.toml": "", "one.toml": ""}),
        workload(
            "StatefulSet",
            "mta",
            [mta],
            replicas=2,
            claims=("spool",),
            service_name="mta-headless",
            volumes=[
                {"name": "cfg", "configMap": {"name": "cfg"}},
                {"name": "one", "configMap": {"name": "cfg"}},
            ],
        ),
        service("mta", {"app": "mta"}, {"smtp": (25, "smtp"), "http": (8000, "http")}),
        service("mta-headless", {"app": "mta"}, {"smtp": (2525, "smtp")}, headless=True),
        workload(
            "Deployment",
            "redis",
            [container("redis", command=["redis-server"], args=[], ports={"redis": 6379})],
        ),
        service("redis", {"app": "redis"}, {"redis": (6379, "redis")}),
        workload("Deployment", "web", [container("web", args=["sink"], ports={"http": 8080})]),
        service("web", {"app": "web"}, {"http": (80, 8080)}),
    ]
    plan = run(manifests)
    spec = only(plan, "mta-0")
    return (spec.argv[-1] if as_arg else spec.env["X"]), plan


def local(plan: Plan, pod: str, port: str) -> str:
    return f"127.0.0.1:{only(plan, pod).ports[port]}"


REWRITE_CASES = [
    # (case, value, expected; {pod:port} is that pod's local address, {new} a fresh port)
    ("wildcard listen", "0.0.0.0:8000", "{mta-0:http}"),
    ("IPv6 wildcard listen", "[::]:2525", "{mta-0:smtp}"),
    ("port-only listen, undeclared port", ":9100", "{new}"),
    (
        "loopback reference to own port",
        "http://localhost:8000/metrics",
        "http://{mta-0:http}/metrics",
    ),
    ("service:port", "redis:6379", "{redis-0:redis}"),
    ("redis URL", "redis://redis:6379/0", "redis://{redis-0:redis}/0"),
    ("redis URL with password", "redis://:pw@redis:6379/0", "redis://:pw@{redis-0:redis}/0"),
    ("qualified name", "http://redis.mail.svc.cluster.local:6379", "http://{redis-0:redis}"),
    ("short qualified name", "redis.mail:6379", "{redis-0:redis}"),
    ("service port maps to targetPort", "http://web:80/x", "http://{web-0:http}/x"),
    ("URL without port uses the scheme default", "http://web/x", "http://{web-0:http}/x"),
    ("ClusterIP over N pods -> pod 0", "mta:25", "{mta-0:smtp}"),
    ("headless pod DNS name", "mta-1.mta-headless:2525", "{mta-1:smtp}"),
    ("headless pod FQDN", "mta-1.mta-headless.mail.svc.cluster.local:2525", "{mta-1:smtp}"),
    ("list of URLs", "http://web:80,redis:6379", "http://{web-0:http},{redis-0:redis}"),
    ("not a service port: unchanged", "redis:6380", "redis:6380"),
    ("bare service name: unchanged", "redis", "redis"),
    ("longer name sharing a prefix: unchanged", "redis-extra:6379", "redis-extra:6379"),
    ("external host: unchanged", "smtp.example.com:25", "smtp.example.com:25"),
    ("CIDR list: unchanged", "127.0.0.1/32,::1/128,10.0.0.0/8", "127.0.0.1/32,::1/128,10.0.0.0/8"),
    ("path under a mount", "/var/spool/nimbus", "/w/mta-0/var/spool/nimbus"),
    ("path below a mount", "/etc/cfg/a.toml", "/w/mta-0/etc/cfg/a.toml"),
    ("subPath mount", "/etc/one.toml", "/w/mta-0/.volumes/one/one.toml"),
    ("path outside mounts: unchanged", "/opt/nimbus/bin", "/opt/nimbus/bin"),
    ("plain word: unchanged", "info", "info"),
]


def _expected(template: str, plan: Plan, value: str) -> str:
    out = template
    for spec in plan.specs:
        for port in spec.ports:
            out = out.replace(f"{{{spec.name}:{port}}}", local(plan, spec.name, port))
    return out


@pytest.mark.parametrize("case,value,expected", REWRITE_CASES, ids=[c[0] for c in REWRITE_CASES])
def test_rewrite_env_values(case: str, value: str, expected: str) -> None:
    got, plan = rewrite_plan(value)
    if expected == "{new}":
        used = {p for s in plan.specs for p in s.ports.values()}
        host, port = got.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) not in used
        return
    assert got == _expected(expected, plan, value)


ARG_CASES = [
    ("--flag=/path", "--config=/etc/cfg/a.toml", "--config=/w/mta-0/etc/cfg/a.toml"),
    ("service address", "redis:6379", "{redis-0:redis}"),
    ("listen address", "0.0.0.0:8000", "{mta-0:http}"),
]


@pytest.mark.parametrize("case,value,expected", ARG_CASES, ids=[c[0] for c in ARG_CASES])
def test_rewrite_args(case: str, value: str, expected: str) -> None:
    got, plan = rewrite_plan(value, as_arg=True)
    assert got == _expected(expected, plan, value)


def test_service_references_are_dependencies_and_set_the_start_order() -> None:
    _, plan = rewrite_plan("redis://redis:6379/0")
    assert only(plan, "mta-0").depends_on == ("redis-0",)
    waves = [[s.name for s in wave] for wave in plan.waves()]
    assert waves == [["redis-0", "web-0"], ["mta-0", "mta-1"]]
    assert [s.name for s in plan.specs] == [n for wave in waves for n in wave]


def test_services_table_lists_pod0_addresses() -> None:
    _, plan = rewrite_plan("x")
    assert plan.services["mta"] == {
        "smtp": local(plan, "mta-0", "smtp"),
        "http": local(plan, "mta-0", "http"),
    }


def peers_plan(peers: str, replicas: int = 3) -> Plan:
    """An MTA StatefulSet whose pods list ``peers`` as NIMBUS_CLUSTER_PEERS."""
    env = [
        {"name": "NIMBUS_HTTP_LISTEN", "value": "0.0.0.0:8000"},
        {"name": "NIMBUS_CLUSTER_PEERS", "value": peers},
    ]
    mta = container("mta", env=env, ports={"smtp": 2525, "http": 8000})
    return run(
        [
            workload("StatefulSet", "mta", [mta], replicas=replicas, service_name="mta-headless"),
            service("mta", {"app": "mta"}, {"http": (80, "http")}),
            service(
                "mta-headless",
                {"app": "mta"},
                {"smtp": (2525, "smtp"), "http": (8000, "http")},
                headless=True,
            ),
        ]
    )


PEER_CASES = [
    # (case, NIMBUS_CLUSTER_PEERS, expected; {pod} is that pod's local HTTP URL)
    ("headless Service: every pod", "mta-headless", "{mta-0},{mta-1},{mta-2}"),
    ("qualified headless name", "mta-headless.mail.svc.cluster.local", "{mta-0},{mta-1},{mta-2}"),
    ("a pod's own DNS name", "mta-1.mta-headless", "{mta-1}"),
    ("ClusterIP Service name: its first pod", "mta", "{mta-0}"),
    ("a Service URL as usual", "http://mta:80", "{mta-0}"),
    ("external names and URLs unchanged", "peer.example.org,http://x.example:8000", None),
    ("spaces and empty items dropped", " mta-headless , ", "{mta-0},{mta-1},{mta-2}"),
]


@pytest.mark.parametrize("case,peers,expected", PEER_CASES, ids=[c[0] for c in PEER_CASES])
def test_cluster_peers_become_the_local_http_urls(case: str, peers: str, expected: str) -> None:
    """NIMBUS_CLUSTER_PEERS names pods by DNS, reached on the node's HTTP port: locally each
    becomes http://127.0.0.1:<that pod's HTTP port>; peers are no start dependencies."""
    plan = peers_plan(peers)
    urls = {s.name: f"http://{local(plan, s.name, 'http')}" for s in plan.specs}
    want = peers if expected is None else expected.format_map(urls)
    for spec in plan.specs:
        assert spec.env["NIMBUS_CLUSTER_PEERS"] == want
        assert spec.depends_on == ()


def test_cluster_peers_without_an_http_listen_are_rewritten_as_any_value() -> None:
    """Without NIMBUS_HTTP_LISTEN there is no port to reach DNS peers on: the value is only
    rewritten as any other (a bare name stays)."""
    c = container(env=[{"name": "NIMBUS_CLUSTER_PEERS", "value": "h"}], ports={"http": 8000})
    plan = run(
        [
            workload("StatefulSet", "m", [c], service_name="h"),
            service("h", {"app": "m"}, {"http": (8000, "http")}, headless=True),
        ]
    )
    assert only(plan, "m-0").env["NIMBUS_CLUSTER_PEERS"] == "h"


# --- workloads, commands, readiness -------------------------------------------------------------


def test_replica_naming_and_distinct_ports() -> None:
    plan = run(
        [
            workload("StatefulSet", "mta", [container(ports={"smtp": 2525})], replicas=3),
            workload(
                "Deployment", "sink", [container(args=["sink"], ports={"smtp": 2526})], replicas=2
            ),
            workload("Deployment", "defaulted", [container(args=["tsa"])], replicas=None),
            workload("Deployment", "hooked", [container()], annotations={"helm.sh/hook": "test"}),
            {"kind": "Job", "metadata": {"name": "j"}, "spec": {}},
        ]
    )
    names = sorted(s.name for s in plan.specs)
    assert names == ["defaulted-0", "mta-0", "mta-1", "mta-2", "sink-0", "sink-1"]
    smtp_ports = [s.ports["smtp"] for s in plan.specs if "smtp" in s.ports]
    assert len(set(smtp_ports)) == len(smtp_ports) == 5


COMMAND_CASES = [
    ("nimbus command", dict(command=["nimbus"], args=["mta"]), (*NIMBUS, "mta"), "mta"),
    (
        "absolute nimbus path",
        dict(command=["/opt/nimbus/bin/nimbus"], args=["tsa"]),
        (*NIMBUS, "tsa"),
        "tsa",
    ),
    ("image ENTRYPOINT nimbus", dict(command=None, args=["sink"]), (*NIMBUS, "sink"), "sink"),
    (
        "redis command: port and bind rewritten",
        dict(
            command=["redis-server"], args=["--port", "6379", "--save", ""], ports={"redis": 6379}
        ),
        ("redis-server", "--port", "{redis}", "--save", "", "--bind", "127.0.0.1"),
        "redis",
    ),
    (
        "redis image without command",
        dict(
            command=None,
            image="redis:7.4-alpine",
            args=["--port=6379", "--bind", "0.0.0.0"],
            ports={"redis": 6379},
        ),
        ("redis-server", "--port={redis}", "--bind", "127.0.0.1"),
        "redis",
    ),
]


@pytest.mark.parametrize("case,kw,argv,role", COMMAND_CASES, ids=[c[0] for c in COMMAND_CASES])
def test_commands(case: str, kw: dict, argv: tuple, role: str) -> None:
    plan = run([workload("Deployment", "p", [container(**kw)])])
    spec = only(plan, "p-0")
    expected = tuple(a.replace("{redis}", str(spec.ports.get("redis", ""))) for a in argv)
    assert spec.argv == expected and spec.role == role


def test_unknown_command_is_an_error() -> None:
    with pytest.raises(TranslateError, match="'postfix'.*no local equivalent"):
        run([workload("Deployment", "p", [container(command=["postfix"], args=[])])])


READINESS_CASES = [
    (
        "httpGet named port",
        {"httpGet": {"path": "/api/check-liveness/v1", "port": "http"}},
        ("http", "http://127.0.0.1:{http}/api/check-liveness/v1"),
    ),
    (
        "httpGet numeric port, https",
        {"httpGet": {"path": "/h", "port": 8000, "scheme": "HTTPS"}},
        ("https", "https://127.0.0.1:{http}/h"),
    ),
    ("tcpSocket", {"tcpSocket": {"port": "smtp"}}, ("tcp", "{smtp}")),
    ("exec: no local probe", {"exec": {"command": ["true"]}}, ("none", None)),
    ("no probe", None, ("none", None)),
]


@pytest.mark.parametrize(
    "case,probe,expected", READINESS_CASES, ids=[c[0] for c in READINESS_CASES]
)
def test_readiness(case: str, probe: dict | None, expected: tuple) -> None:
    plan = run(
        [workload("Deployment", "p", [container(ports={"smtp": 2525, "http": 8000}, probe=probe)])]
    )
    spec = only(plan, "p-0")
    kind, target = expected
    if kind == "https":
        kind = "http"
    if isinstance(target, str):
        target = target.format(**spec.ports)
        if kind == "tcp":
            target = int(target)
    assert spec.readiness == (kind, target)


def test_multi_container_pod_shares_volumes_and_localhost() -> None:
    plan = run(
        [
            workload(
                "Deployment",
                "p",
                [
                    container(
                        "a", ports={"http": 8000}, mounts=[{"name": "tmp", "mountPath": "/tmp"}]
                    ),
                    container(
                        "b",
                        args=["tsa"],
                        env=[
                            {"name": "U", "value": "http://localhost:8000"},
                            {"name": "T", "value": "/scratch/x"},
                        ],
                        mounts=[{"name": "tmp", "mountPath": "/scratch"}],
                    ),
                ],
                volumes=[{"name": "tmp", "emptyDir": {}}],
            )
        ]
    )
    a, b = only(plan, "p-0/a"), only(plan, "p-0/b")
    assert b.env["U"] == f"http://127.0.0.1:{a.ports['http']}"
    assert b.env["T"] == "/w/p-0/tmp/x"
    assert a.pod == b.pod == "p-0" and b.depends_on == ()


def test_credentials_are_the_first_user_of_the_auth_dir() -> None:
    c = container(
        env=[{"name": "NIMBUS_HTTP_AUTH_DIR", "value": "/etc/auth"}],
        mounts=[{"name": "auth", "mountPath": "/etc/auth"}],
    )
    plan = run(
        [
            secret("users", {"zed": "z", "bob": "hunter2\n"}),
            workload(
                "StatefulSet",
                "m",
                [c],
                volumes=[{"name": "auth", "secret": {"secretName": "users"}}],
            ),
        ]
    )
    assert plan.credentials == ("bob", "hunter2")


# --- the CLI surface and values ----------------------------------------------------------------


def test_add_subcommand_parses_cluster_up() -> None:
    parser = argparse.ArgumentParser(prog="nimbus")
    add_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "cluster",
            "up",
            "-f",
            "a.yaml",
            "-f",
            "b.yaml",
            "--set",
            "mta.logLevel=debug",
            "--replicas",
            "3",
            "--workdir",
            "/tmp/c",
        ]
    )
    assert (args.command, args.cluster_command) == ("cluster", "up")
    assert args.values == ["a.yaml", "b.yaml"] and args.set_args == ["mta.logLevel=debug"]
    assert args.replicas == 3 and args.workdir == "/tmp/c"
    assert callable(args.cluster_run)


def test_compose_values_overrides_last() -> None:
    values = compose_values(
        set_values={"mta.logLevel": "debug", "policy.files.a\\.toml": "x"}, replicas=4
    )
    assert values == {
        "mta": {"logLevel": "debug", "replicas": 4},
        "policy": {"files": {"a.toml": "x"}},
    }


def test_compose_values_files_then_set(tmp_path) -> None:
    pytest.importorskip("helm_python", reason="helm-python-sdk==0.2.2 is not installed")
    (tmp_path / "a.yaml").write_text(
        "mta:\n  logLevel: warning\n  replicas: 5\nsink:\n  enabled: false\n"
    )
    (tmp_path / "b.yaml").write_text("sink:\n  enabled: true\n")
    values = compose_values(
        [tmp_path / "a.yaml", tmp_path / "b.yaml"], set_args=["mta.logLevel=error"], replicas=2
    )
    assert values == {"mta": {"logLevel": "error", "replicas": 2}, "sink": {"enabled": True}}


# --- the real chart ------------------------------------------------------------------------------


def _real_plan(replicas: int) -> tuple[Plan, list[dict]]:
    pytest.importorskip("helm_python", reason="helm-python-sdk==0.2.2 is not installed")
    pytest.importorskip("yaml", reason="PyYAML is not installed")
    from engine.cluster.chart import render_chart

    manifests = render_chart(values=compose_values(replicas=replicas), namespace="mail")
    return run(manifests), manifests


def _is_setting(name: str) -> bool:
    return name == "NIMBUS_CONFIG" or bool(nimbus_config._env_tree({name: "x"}))


def test_real_chart_translates_to_mta_replicas_tsa_sink_redis() -> None:
    plan, manifests = _real_plan(3)
    roles = sorted(s.role for s in plan.specs)
    assert roles == ["mta", "mta", "mta", "redis", "sink", "tsa"]
    assert [s.name for s in plan.by_role("mta")] == ["nimbus-mta-0", "nimbus-mta-1", "nimbus-mta-2"]
    for spec in plan.specs:
        if spec.role != "redis":
            assert spec.argv[: len(NIMBUS)] == NIMBUS and spec.argv[len(NIMBUS)] == spec.role
            unknown = [n for n in spec.env if not _is_setting(n)]
            assert not unknown, f"{spec.name}: not Nimbus settings: {unknown}"
        for name, value in spec.env.items():
            assert not re.search(r"(?<![\d.])0\.0\.0\.0:", value), f"{name}={value}"
            assert "nimbus-" not in value.replace(spec.pod, ""), f"{name}={value}"
            if value.startswith("/"):
                assert value.startswith(f"{WORK}/{spec.pod}/"), f"{name}={value}"
        assert spec.readiness[0] in ("http", "tcp")
    mtas = plan.by_role("mta")
    assert len({s.env["NIMBUS_SPOOL_DIR"] for s in mtas}) == 3
    assert {s.env["NIMBUS_NODE_ID"] for s in mtas} == {s.name for s in mtas}
    assert all(s.env["NIMBUS_CLUSTER_NODES"] == "3" for s in mtas)
    [sink], [redis], [tsa] = plan.by_role("sink"), plan.by_role("redis"), plan.by_role("tsa")
    assert mtas[0].env["NIMBUS_SINK_ENDPOINT"] == sink.env["NIMBUS_SINK_LISTEN"]
    assert mtas[0].env["NIMBUS_REDIS_URL"] == f"redis://127.0.0.1:{redis.ports['redis']}/0"
    assert mtas[0].env["NIMBUS_TSA_URLS"] == f"http://{tsa.env['NIMBUS_TSA_LISTEN']}"
    assert redis.argv[0].endswith("redis-server") and "--bind" in redis.argv
    order = [s.role for s in plan.specs]
    assert order.index("redis") < order.index("tsa") < order.index("mta")
    assert order.index("sink") < order.index("mta")
    [auth] = [d for d in manifests if d["metadata"]["name"] == "nimbus-http-auth"]
    user, password = plan.credentials
    assert base64.b64decode(auth["data"][user]).decode() == password


def test_real_chart_mtas_list_every_mta_as_a_peer() -> None:
    """The chart's NIMBUS_CLUSTER_PEERS (the headless Service) becomes, for every MTA, the
    local HTTP URLs of all MTAs, in pod order: what the Service's A records are in a cluster."""
    plan, _ = _real_plan(3)
    mtas = plan.by_role("mta")
    urls = ",".join(f"http://{s.env['NIMBUS_HTTP_LISTEN']}" for s in mtas)
    assert [s.env["NIMBUS_CLUSTER_PEERS"] for s in mtas] == [urls] * 3
    assert all(not set(s.depends_on) & {m.pod for m in mtas} for s in mtas)


def test_real_chart_cluster_secret_is_one_local_file_per_mta() -> None:
    """NIMBUS_CLUSTER_SECRET_FILE points into each MTA's own directory, where the rendered
    cluster Secret is written (the same secret for every MTA, mode 0440)."""
    plan, manifests = _real_plan(2)
    [secret] = [d for d in manifests if d["metadata"]["name"] == "nimbus-cluster"]
    value = base64.b64decode(secret["data"]["secret"])
    for spec in plan.by_role("mta"):
        path = spec.env["NIMBUS_CLUSTER_SECRET_FILE"]
        assert path == f"{WORK}/{spec.pod}/etc/nimbus/cluster/secret"
        [file] = [f for f in spec.files if f.path == path]
        assert (file.content, file.mode) == (value, 0o440)


def test_real_chart_policy_files_are_materialized_for_every_mta() -> None:
    plan, _ = _real_plan(2)
    for spec in plan.by_role("mta"):
        policy = spec.env["NIMBUS_POLICY_DIR"]
        names = {f.path.rsplit("/", 1)[1] for f in spec.files if f.path.startswith(policy + "/")}
        assert "init.py" in names and "shaping.toml" in names


def test_python_is_this_interpreter() -> None:
    assert NIMBUS == (sys.executable, "-m", "engine.cli")
