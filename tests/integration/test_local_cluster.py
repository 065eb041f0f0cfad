"""The chart as a local cluster (engine.cluster.command.LocalCluster, what ``nimbus cluster up`` runs):
the rendered chart's pods as processes on loopback, mail injected over HTTP with the rendered
Secret's credentials reaching the rendered sink."""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
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

from engine.cluster.command import LocalCluster  # noqa: E402

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
