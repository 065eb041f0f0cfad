"""An error that stops ``nimbus`` from starting is one line on stderr naming the cause and
the fix, with exit status 2 (no traceback): a busy port, a broken policy, an unknown
``NIMBUS_LOG_LEVEL``, a misspelled settings section. Runs the real ``nimbus`` script."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.node import NimbusProcess, write_policy

NIMBUS = str(Path(sys.executable).parent / "nimbus")
SECTIONS = (
    "cluster, delivery, dkim, dns, http, log, node, policy, redis, shedding, sink, smtp, spool, "
    "suppression, tsa"
)


def nimbus(role: str, tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run ``nimbus ROLE ARGS`` until it exits; (exit status, stderr)."""
    base = {
        "NIMBUS_SMTP_LISTEN": "127.0.0.1:0",
        "NIMBUS_HTTP_LISTEN": "127.0.0.1:0",
        "NIMBUS_SPOOL_DIR": str(tmp_path / "spool"),
        "NIMBUS_LOG_DIR": str(tmp_path / "logs"),
        "NIMBUS_POLICY_DIR": str(write_policy(tmp_path / "policy", "def register(n):\n    pass\n")),
        "NIMBUS_HTTP_AUTH_DIR": str(tmp_path),
        "NIMBUS_SPOOL_MIN_FREE_SPACE": "0",
        "NIMBUS_LOG_LEVEL": "warning",
        "NIMBUS_TSA_LISTEN": "127.0.0.1:0",
        "NIMBUS_SINK_LISTEN": "127.0.0.1:0",
        "NIMBUS_SINK_HTTP_LISTEN": "127.0.0.1:0",
    }
    if role == "tsa":  # its state store; not connected before the port is bound
        base["NIMBUS_REDIS_URL"] = "redis://127.0.0.1:1/0"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
    proc = subprocess.run(
        [NIMBUS, role, *args],
        env={**clean, **base, **env},
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stderr


def last_line(err: str) -> str:
    """The error line ``nimbus`` printed last; every line before it must be one of the
    node's JSON diagnostics (a warning logged while starting), never a traceback."""
    *before, last = err.splitlines()
    for line in before:
        json.loads(line)
    assert err.endswith("\n")
    return last


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another socket is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    "role, variable, service, setting",
    [
        ("mta", "NIMBUS_SMTP_LISTEN", "SMTP", "smtp.listen"),
        ("mta", "NIMBUS_HTTP_LISTEN", "HTTP", "http.listen"),
        ("tsa", "NIMBUS_TSA_LISTEN", "the TSA's HTTP", "tsa.listen"),
        ("sink", "NIMBUS_SINK_LISTEN", "the sink's SMTP", "sink.listen"),
        ("sink", "NIMBUS_SINK_HTTP_LISTEN", "the sink's HTTP", "sink.http_listen"),
    ],
)
def test_port_in_use_is_one_line_and_exit_2(tmp_path, busy_port, role, variable, service, setting):
    """A listener whose port is taken: one line naming the address, the cause and the
    setting to change; exit 2."""
    rc, err = nimbus(role, tmp_path, {variable: f"127.0.0.1:{busy_port}"})
    assert (rc, last_line(err)) == (
        2,
        f"nimbus: cannot listen for {service} on 127.0.0.1:{busy_port}: address already in "
        f"use; stop the process using it or set {setting} ({variable}) to a free port",
    )


def test_policy_that_fails_to_load_is_one_line_and_exit_2(tmp_path):
    """A policy whose register() raises stops ``nimbus mta`` with one line naming the file
    and the error, and how to check a fix; exit 2."""
    policy = write_policy(
        tmp_path / "broken", "def register(nimbus):\n    raise ValueError('no such pool')\n"
    )
    rc, err = nimbus("mta", tmp_path, {"NIMBUS_POLICY_DIR": str(policy)})
    assert (rc, err) == (
        2,
        f"nimbus: policy error: {policy}/init.py: ValueError: no such pool; "
        "fix the policy (check it with nimbus validate)\n",
    )


def test_policy_toml_error_is_one_line_and_exit_2(tmp_path):
    """A policy TOML file that does not parse (a ConfigError raised while loading the
    policy) is one configuration-error line naming the file; exit 2."""
    policy = write_policy(
        tmp_path / "broken",
        "from engine.config.settings import read_toml\n"
        "def register(nimbus):\n"
        "    read_toml(__file__.replace('init.py', 'queues.toml'))\n",
    )
    (policy / "queues.toml").write_text("[queue\n")
    rc, err = nimbus("mta", tmp_path, {"NIMBUS_POLICY_DIR": str(policy)})
    assert rc == 2
    assert err.startswith(f"nimbus: configuration error: {policy}/queues.toml: invalid TOML: ")
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("role", ["mta", "tsa", "sink"])
def test_unknown_log_level_is_one_line_and_exit_2(tmp_path, role):
    """NIMBUS_LOG_LEVEL=verbose names the variable and the levels to choose from; exit 2."""
    rc, err = nimbus(role, tmp_path, {"NIMBUS_LOG_LEVEL": "verbose"})
    assert (rc, err) == (
        2,
        "nimbus: configuration error: environment: [log] level: unknown log level "
        "'verbose' (use one of debug, info, warning, error); set by NIMBUS_LOG_LEVEL\n",
    )


@pytest.mark.parametrize("role", ["mta", "tsa", "sink"])
def test_misspelled_section_names_file_section_and_closest(tmp_path, role):
    """``[smtpp]`` in the settings file names the file, the section and ``[smtp]``; exit 2
    (it used to be reported as an unknown key of the top level)."""
    config = tmp_path / "nimbus.toml"
    config.write_text("[smtpp]\nlisten = '127.0.0.1:0'\n")
    rc, err = nimbus(role, tmp_path, {}, "--config", str(config))
    assert (rc, err) == (
        2,
        f"nimbus: configuration error: {config}: unknown section [smtpp] (did you mean "
        f"[smtp]? known sections: {SECTIONS})\n",
    )


async def test_no_auth_dir_logs_one_warning_that_injection_is_disabled(tmp_path):
    """Started without NIMBUS_HTTP_AUTH_DIR (and no auth hook in the policy), the node logs
    one ``http_injection_disabled`` warning naming the variable, and runs."""
    env = {k: v for k, v in os.environ.items() if k != "NIMBUS_HTTP_AUTH_DIR"}
    env["NIMBUS_POLICY_DIR"] = str(write_policy(tmp_path / "policy", "def register(n):\n  pass\n"))
    os_env = dict(os.environ)
    os.environ.pop("NIMBUS_HTTP_AUTH_DIR", None)
    try:
        proc = await NimbusProcess.start(tmp_path, env)
    finally:
        os.environ.clear()
        os.environ.update(os_env)
    proc.terminate()
    rc = await proc.wait()
    warnings = [ln for ln in proc.stderr_lines if ln.get("event") == "http_injection_disabled"]
    assert rc == 0
    assert len(warnings) == 1, json.dumps(proc.stderr_lines)
    assert warnings[0]["level"] == "warning"
    assert "NIMBUS_HTTP_AUTH_DIR" in warnings[0]["reason"]


def test_suppression_without_redis_and_several_workers_is_refused(tmp_path):
    """Each worker would keep its own copy of the local suppression list: refused, naming
    both settings, exit 2 (one worker, or Redis, is accepted)."""
    code, err = nimbus(
        "mta", tmp_path, {"NIMBUS_SUPPRESSION_ENABLED": "true", "NIMBUS_NODE_WORKERS": "2"}
    )
    assert code == 2
    assert "[suppression] enabled with node.workers > 1 needs redis.url" in last_line(err)


def test_event_loop_setting(tmp_path):
    """[node] event_loop: a bad value names the key (exit 2); uvloop asked for but not
    importable is refused with the fix; asyncio runs, and the ready line says which loop."""
    code, err = nimbus("mta", tmp_path, {"NIMBUS_NODE_EVENT_LOOP": "tokio"})
    assert code == 2 and "[node] event_loop: must be one of auto, uvloop, asyncio" in last_line(err)

    clean = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
    no_uvloop = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['uvloop'] = None\n"
            "from engine.cli import main; sys.exit(main(['mta']))",
        ],
        env={**clean, "NIMBUS_NODE_EVENT_LOOP": "uvloop", "NIMBUS_SPOOL_DIR": str(tmp_path / "s")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert no_uvloop.returncode == 2
    assert "uvloop is not installed (pip install 'nimbus-mta[fast]'" in no_uvloop.stderr


async def test_the_ready_line_names_the_event_loop(tmp_path):
    for kind, expected in (("asyncio", "asyncio"), ("auto", "uvloop")):
        workdir = tmp_path / kind
        workdir.mkdir()
        proc = await NimbusProcess.start(workdir, {"NIMBUS_NODE_EVENT_LOOP": kind})
        try:
            assert proc.ready_line["event_loop"] == expected
        finally:
            proc.terminate()
            await proc.wait()
