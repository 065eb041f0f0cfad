"""Two TSA replicas over one real redis-server: shared state, dedupe, pub/sub to the MTA's
TsaSubscriber, Redis outages, restarts and shaping.toml reloads."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from engine.config.settings import PolicySettings, RedisSettings, Settings
from engine.shaping.overlay import Overlay
from engine.shaping.tsa_client import TsaSubscriber
from tests.support.redis_server import RedisServer
from tsa.app import build_app

TS04 = "[TS04] Messages from 192.0.2.1 temporarily deferred"
SHAPING = r"""
[["default".automation]]
regex = '\[TS04\]'
action = "Suspend"
duration = "10m"

[["default".automation]]
regex = "RL0000"
action = {SetConfig = {name = "max_message_rate", value = "1/min"}}
trigger = {Threshold = "2/min"}
duration = "10m"

[["default".automation]]
regex = "tenant-block"
action = ["BounceTenant", "SuspendTenant"]
duration = "10m"
"""
SITE = "ip-1->mx.example.net@smtp_client"
WAIT = 5.0


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    async with RedisServer() as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, redis_server: RedisServer) -> Settings:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "shaping.toml").write_text(SHAPING)
    return Settings(
        redis=RedisSettings(url=redis_server.url, key_prefix="t", timeout=2.0),
        policy=PolicySettings(dir=str(policy), reload_interval=0.1),
    )


class Replica:
    """One TSA app served on a free loopback port in the test's loop."""

    def __init__(self, runner: web.AppRunner, session: aiohttp.ClientSession) -> None:
        self.runner = runner
        host, port = runner.addresses[0][:2]
        self.base = f"http://{host}:{port}"
        self.session = session

    async def post(self, body: Any, *, raw: bytes | None = None) -> tuple[int, Any]:
        kwargs = {"data": raw} if raw is not None else {"json": body}
        async with self.session.post(self.base + "/publish_log_v1", **kwargs) as resp:
            return resp.status, await resp.json()

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.base + path) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def suspended(self) -> Any:
        status, body = await self.get("/get_suspension_v1/suspended.json")
        assert status == 200, body
        return body


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Replica]:
    runner = web.AppRunner(build_app(settings), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        async with aiohttp.ClientSession() as session:
            yield Replica(runner, session)
    finally:
        await runner.cleanup()


@pytest.fixture
async def replicas(settings: Settings) -> AsyncIterator[tuple[Replica, Replica]]:
    async with serve(settings) as a, serve(settings) as b:
        yield a, b


@contextlib.asynccontextmanager
async def subscriber(
    settings: Settings, overlay: Overlay, resync: float = 60.0
) -> AsyncIterator[TsaSubscriber]:
    sub = TsaSubscriber(settings.redis, overlay, resync_interval=resync)
    task = asyncio.create_task(sub.run())
    try:
        async with asyncio.timeout(WAIT):
            await sub.synced.wait()
        yield sub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sub.close()


async def until(predicate: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll ``predicate`` until it returns something truthy (TimeoutError otherwise)."""
    async with asyncio.timeout(timeout):
        while not (result := predicate()):
            await asyncio.sleep(0.01)
    return result


def record(
    content: str = TS04,
    *,
    rid: str = "r1",
    ts: float | None = None,
    queue: str = "example.net",
    code: int = 421,
) -> dict[str, Any]:
    return {
        "type": "TransientFailure",
        "id": rid,
        "sender": "s@x.test",
        "recipient": "u@example.net",
        "queue": queue,
        "site": SITE,
        "size": 100,
        "timestamp": int(time.time()) if ts is None else ts,
        "egress_source": "ip-1",
        "response": {
            "code": code,
            "enhanced_code": {"class": 4, "subject": 7, "detail": 0},
            "content": content,
            "command": None,
        },
        "peer_address": {"name": "mx.example.net", "addr": "192.0.2.9"},
    }


async def test_suspension_is_shared_by_replicas(replicas):
    """A TS04 record posted to replica A shows the same suspension on A and B."""
    a, b = replicas
    status, counts = await a.post(record())
    assert status == 200 and counts["matched"] == 1 and counts["entries_written"] == 1
    from_a, from_b = await a.suspended(), await b.suspended()
    assert from_a == from_b
    (entry,) = from_a["ready_q"]
    assert entry["site_name"] == SITE and entry["source"] == "ip-1"
    assert entry["reason"] == r"automation rule: \[TS04\]"


async def test_record_posted_to_both_replicas_counts_once(replicas):
    """MTAs publish to every replica; a Threshold rule still counts each record once."""
    a, b = replicas
    _, first = await a.post(record("RL0000 slow", rid="r1"))
    _, again = await b.post(record("RL0000 slow", rid="r1"))
    assert first["matched"] == 1 and again["duplicates"] == 1
    _, toml_text = await b.get("/get_config_v1/shaping.toml")
    assert "# Number of entries: 0" in toml_text
    await b.post(record("RL0000 slow", rid="r2"))
    for replica in (a, b):
        _, toml_text = await replica.get("/get_config_v1/shaping.toml")
        assert "# Number of entries: 1" in toml_text
        assert '["example.net".sources."ip-1"]' in toml_text
        assert 'max_message_rate = "1/min"' in toml_text


async def test_threshold_spread_beyond_period_does_not_fire(replicas):
    """Matches further apart than the threshold period never add up (Lua window)."""
    a, _ = replicas
    now = time.time()
    for i, age in enumerate((130, 65, 0)):
        status, _ = await a.post(record("RL0000", rid=f"s{i}", ts=now - age))
        assert status == 200
    _, text = await a.get("/get_config_v1/shaping.toml")
    assert "# Number of entries: 0" in text


async def test_subscriber_sees_new_action_quickly(settings, replicas):
    """A TsaSubscriber applies a new suspension within 2 s, through pub/sub."""
    a, _ = replicas
    overlay = Overlay()
    async with subscriber(settings, overlay):
        assert len(overlay) == 0
        await a.post(record())
        found = await until(
            lambda: overlay.ready_suspension("ip-1", "mx.example.net", time.time()), timeout=2.0
        )
        assert found.origin == "tsa" and found.queue == SITE


async def test_subscriber_keeps_overlay_while_redis_is_down(settings, replicas, redis_server):
    """With Redis stopped the subscriber keeps its entries; it reconnects afterwards."""
    a, _ = replicas
    await a.post(record())
    overlay = Overlay()
    async with subscriber(settings, overlay) as sub:
        assert overlay.ready_suspension("ip-1", "mx.example.net", time.time())
        await redis_server.stop()
        await until(lambda: not sub.healthy)
        assert overlay.ready_suspension("ip-1", "mx.example.net", time.time())
        status, body = await a.get("/get_suspension_v1/suspended.json")
        assert status == 503 and "redis unavailable" in body["error"]
        status, _ = await a.get("/api/check-liveness/v1")
        assert status == 503
        status, _ = await a.post(record(rid="during-outage"))
        assert status == 503
        await redis_server.start()  # back, with an empty dataset
        await until(lambda: sub.healthy, timeout=10.0)
        await a.post(record("RL0000", rid="x1"))
        await a.post(record("RL0000", rid="x2"))
        got = await until(
            lambda: overlay.config_overrides("example.net", "mx.example.net", "ip-1", time.time())
        )
        assert set(got) == {"max_message_rate"}


async def test_new_tsa_instance_reports_existing_state(settings):
    """State is in Redis: a TSA started after the record was processed still serves it."""
    async with serve(settings) as first:
        await first.post(record())
        before = await first.suspended()
    async with serve(settings) as second:
        assert await second.suspended() == before and before["ready_q"]


async def test_tenant_actions_and_bounce_view(replicas):
    """BounceTenant and SuspendTenant appear in bounced.json and suspended.json."""
    a, b = replicas
    await a.post(record("tenant-block", queue="acme@example.net", code=451))
    status, bounces = await b.get("/get_bounce_v1/bounced.json")
    assert status == 200 and [(x["domain"], x["tenant"]) for x in bounces] == [
        ("example.net", "acme")
    ]
    sched = (await b.suspended())["sched_q"]
    assert [(x["domain"], x["tenant"], x["campaign"]) for x in sched] == [
        ("example.net", "acme", None)
    ]


async def test_publish_rejects_bad_input(replicas):
    """Bad JSON and an unreadable single record are 400 with a reason."""
    a, _ = replicas
    status, body = await a.post(None, raw=b"{not json")
    assert status == 400 and "malformed JSON" in body["error"]
    status, body = await a.post({**record(), "response": 5})
    assert status == 400 and "response" in body["error"]
    status, body = await a.post([record(rid="ok"), {"type": "Bounce"}])
    assert status == 200 and body["invalid"] == 1 and body["matched"] == 1


async def test_status_liveness_and_metrics(replicas):
    """/tsa/status, liveness and /metrics report on the replica and the shared state."""
    a, b = replicas
    await a.post([record(rid="m1"), record("250 ok", rid="m2", code=250)])
    status, body = await b.get("/tsa/status")
    assert status == 200 and body["redis"]["ok"] is True
    assert body["actions"] == {"ReadyQSuspension": 1} and body["cluster"]["matched"] == 1
    assert body["shaping"]["rules"] == 3 and body["version"]
    status, text = await a.get("/api/check-liveness/v1")
    assert (status, text) == (200, "OK")
    _, metrics = await a.get("/metrics")
    assert 'nimbus_tsa_records_total{outcome="matched"} 1.0' in metrics
    assert 'nimbus_tsa_records_total{outcome="unmatched"} 1.0' in metrics
    assert 'nimbus_tsa_actions_total{kind="ReadyQSuspension"} 1.0' in metrics


async def test_shaping_reload_and_broken_edit(settings, replicas):
    """An edited shaping.toml applies within the reload interval; a broken one is ignored."""
    a, _ = replicas
    path = Path(settings.policy.dir) / "shaping.toml"
    path.write_text(
        SHAPING + '\n[["default".automation]]\nregex = "NEW1"\n'
        'action = "Suspend"\nduration = "5m"\n'
    )

    async def rules() -> int:
        return (await a.get("/tsa/status"))[1]["shaping"]["rules"]

    async with asyncio.timeout(WAIT):
        while await rules() != 4:
            await asyncio.sleep(0.05)
    path.write_text("this is = = not toml")
    async with asyncio.timeout(WAIT):
        while not (await a.get("/tsa/status"))[1]["shaping"]["error"]:
            await asyncio.sleep(0.05)
    assert await rules() == 4
    _, counts = await a.post(record("NEW1 please wait", rid="n1"))
    assert counts["matched"] == 1
