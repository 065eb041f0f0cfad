"""The chart as a local cluster (engine.cluster.command.LocalCluster, what ``nimbus cluster up`` runs):
the rendered chart's pods as processes on loopback, mail injected over HTTP with the rendered
Secret's credentials reaching the rendered sink."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import shutil
import sqlite3
import sys
from pathlib import Path

import aiohttp
import pytest

pytest.importorskip("helm_python", reason="helm-python-sdk==0.2.2 (test extra) is not installed")
pytest.importorskip("yaml", reason="PyYAML is not installed")
if (
    shutil.which("redis-server", path="/usr/bin:/usr/sbin:/usr/local/bin") is None
    and shutil.which("redis-server") is None
):
    pytest.skip(
        "redis-server is not installed (apt-get install redis-server)", allow_module_level=True
    )

from bench.nimbus_policy import strip_default_rate_limits  # noqa: E402
from engine.cluster.command import LocalCluster, up  # noqa: E402

MESSAGE = {
    "envelope_sender": "sender@example.com",
    "recipients": [{"email": "someone@example.com"}],
    "content": "Subject: hi\r\n\r\nhello\r\n",
}


async def get_text(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as resp:
        return resp.status, await resp.text()


async def sink_accepted(http: aiohttp.ClientSession, url: str) -> float:
    _, text = await get_text(http, url)
    m = re.search(r'^nimbus_sink_messages_total\{result="accepted"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.timeout(90)
async def test_chart_runs_locally_and_mail_reaches_the_sink(tmp_path: Path) -> None:
    """Default values, 2 MTA replicas: every pod passes its readiness probe; each MTA takes
    an injection with the rendered Secret's credentials (and refuses a wrong password); the
    sink counts both messages."""
    async with (
        LocalCluster(
            replicas=2, workdir=tmp_path / "cluster", ready_timeout=40, stop_timeout=10
        ) as cluster,
        aiohttp.ClientSession() as http,
    ):
        assert sorted(p.role for p in cluster.pods.values()) == [
            "mta",
            "mta",
            "redis",
            "sink",
            "tsa",
        ]
        mtas = cluster.pods_of("mta")
        assert mtas == ["nimbus-mta-0", "nimbus-mta-1"]
        for name, pod in cluster.pods.items():
            assert pod.proc is not None and pod.proc.returncode is None, name
            kind, target = pod.spec.readiness
            if kind == "http":
                assert (await get_text(http, target))[0] == 200, name
        spools = {cluster.pods[m].spec.env["NIMBUS_SPOOL_DIR"] for m in mtas}
        assert len(spools) == 2 and all(Path(s).is_dir() for s in spools)
        secrets = {Path(cluster.pods[m].spec.env["NIMBUS_CLUSTER_SECRET_FILE"]) for m in mtas}
        assert len(secrets) == 2 and len({s.read_bytes() for s in secrets}) == 1

        [secret] = [d for d in cluster.manifests if d["metadata"]["name"] == "nimbus-http-auth"]
        user, password = cluster.credentials
        assert base64.b64decode(secret["data"][user]).decode() == password

        url = cluster.sink_metrics_url
        before = await sink_accepted(http, url)
        wrong = {"Authorization": aiohttp.encode_basic_auth(user, password + "x")}
        async with http.post(
            cluster.http_url(mtas[0]) + "/api/inject/v1", json=MESSAGE, headers=wrong
        ) as resp:
            assert resp.status == 401
        auth = {"Authorization": aiohttp.encode_basic_auth(user, password)}
        for mta in mtas:
            async with http.post(
                cluster.http_url(mta) + "/api/inject/v1", json=MESSAGE, headers=auth
            ) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["success_count"] == 1
        async with asyncio.timeout(20):
            while await sink_accepted(http, url) < before + 2:
                await asyncio.sleep(0.1)  # metrics scrape period
    assert all(p.proc.returncode is not None for p in cluster.pods.values())


@pytest.mark.timeout(60)
async def test_cluster_stops_every_pod_with_sigterm(tmp_path: Path) -> None:
    """At stop every process ends on SIGTERM within its grace period (none needs SIGKILL)."""
    async with LocalCluster(
        replicas=1, workdir=tmp_path / "cluster", ready_timeout=40, stop_timeout=8
    ) as cluster:
        pass
    assert [n for n, p in cluster.pods.items() if p.killed] == []


def _records(log_dir: Path) -> list[dict]:
    out = []
    if log_dir.is_dir():
        for path in sorted(log_dir.iterdir()):
            if path.is_file():
                out += [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return out


def _spool_rows(spool_dir: str) -> int:
    conn = sqlite3.connect(Path(spool_dir) / "spool.db")
    try:
        return conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    finally:
        conn.close()


async def _until_records(log_dirs: list[Path], predicate, count: int, timeout: float) -> list:
    """Wait until ``count`` messages (distinct ids) have a matching record; the last
    matching record of each."""
    async with asyncio.timeout(timeout):
        while True:
            found = {r["id"]: r for d in log_dirs for r in _records(d) if predicate(r)}
            if len(found) >= count:
                return list(found.values())
            await asyncio.sleep(0.25)  # tailing log files written by other processes


@pytest.mark.timeout(420)
async def test_scale_in_hands_every_queued_message_to_the_remaining_pod(tmp_path: Path) -> None:
    """3 MTA pods hold 3,000 messages deferred by the sink (451); ``nimbus cluster scale
    --replicas 1`` stops the two highest pods with SIGTERM; the sink then accepts: every
    message is delivered by nimbus-mta-0, its attempts continuing from before the transfer,
    and the stopped pods' spools are empty."""
    per_pod = 1000
    bundled = Path(__file__).resolve().parents[2] / "policy"
    shaping = strip_default_rate_limits((bundled / "shaping.toml").read_text())
    queues = (
        (bundled / "queues.toml")
        .read_text()
        .replace('retry_interval = "20m"', 'retry_interval = "5s"')
        .replace('max_retry_interval = "8h"', 'max_retry_interval = "10s"')
    )
    assert 'retry_interval = "5s"' in queues and 'max_retry_interval = "10s"' in queues
    workdir = tmp_path / "cluster"
    cluster = LocalCluster(
        replicas=3,
        workdir=workdir,
        set_values={
            "policy.files": {"shaping.toml": shaping, "queues.toml": queues},
            "sink.responses": "[default]\ndefer = 100\n",
        },
        ready_timeout=60,
        stop_timeout=120,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(up(cluster, stop, out=io.StringIO()))
    try:
        async with asyncio.timeout(90):
            while not (workdir / "control.sock").exists():
                await asyncio.sleep(0.1)  # cluster up serves its control socket once ready
        mtas = cluster.pods_of("mta")
        assert mtas == ["nimbus-mta-0", "nimbus-mta-1", "nimbus-mta-2"]
        logs = {m: Path(cluster.pods[m].spec.env["NIMBUS_LOG_DIR"]) for m in mtas}
        user, password = cluster.credentials
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as http:
            for i, mta in enumerate(mtas):
                body = {
                    **MESSAGE,
                    "recipients": [{"email": f"r{i}-{n}@example.com"} for n in range(per_pod)],
                }
                url = cluster.http_url(mta) + "/api/inject/v1"
                async with http.post(url, json=body) as resp:
                    answer = await resp.json()
                assert resp.status == 200 and answer["success_count"] == per_pod, answer
        deferred = await _until_records(
            list(logs.values()), lambda r: r["type"] == "TransientFailure", 3 * per_pod, 120
        )
        assert len({r["id"] for r in deferred}) == 3 * per_pod

        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engine.cli",
            "cluster",
            "scale",
            "--replicas",
            "1",
            "--workdir",
            str(workdir),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 180)
        assert proc.returncode == 0, err.decode()
        scaled = json.loads(out)
        assert scaled["stopped"] == {"nimbus-mta-1": 0, "nimbus-mta-2": 0}, scaled
        assert scaled["running"] == ["nimbus-mta-0"]

        responses = Path(cluster.pods["nimbus-sink-0"].spec.env["NIMBUS_SINK_RESPONSES"])
        responses.write_text("[default]\ndefer = 0\n")  # the sink re-reads it (mtime)
        delivered = await _until_records(
            [logs["nimbus-mta-0"]], lambda r: r["type"] == "Delivery", 3 * per_pod, 180
        )
    finally:
        stop.set()
        await asyncio.wait_for(running, 200)
    every = {m: _records(d) for m, d in logs.items()}
    received = {r["id"] for m in mtas for r in every[m] if r["type"] == "Reception"}
    xfer_in = {r["id"]: r for r in every["nimbus-mta-0"] if r["type"] == "XferIn"}
    moved_out = [r for m in mtas[1:] for r in every[m] if r["type"] == "XferOut"]
    assert len(received) == 3 * per_pod
    assert {r["id"] for r in delivered} == received and len(delivered) == 3 * per_pod  # 0 lost
    assert {r["id"] for r in moved_out} == set(xfer_in) and len(xfer_in) == 2 * per_pod
    assert not [r for m in mtas[1:] for r in every[m] if r["type"] == "Delivery"]
    deliveries = [r for r in every["nimbus-mta-0"] if r["type"] == "Delivery"]
    assert len(deliveries) == 3 * per_pod  # and no duplicates
    for r in delivered:
        if r["id"] in xfer_in:  # attempts continue from before the transfer
            assert xfer_in[r["id"]]["num_attempts"] >= 1
            assert r["num_attempts"] > xfer_in[r["id"]]["num_attempts"]
    for mta in mtas[1:]:
        assert _spool_rows(cluster.pods[mta].spec.env["NIMBUS_SPOOL_DIR"]) == 0
    print(f"scale-in of {2 * per_pod} queued messages: {scaled['seconds']} s")
