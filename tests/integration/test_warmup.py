"""IP warm-up end to end: real nodes with the bundled policy and a sources.toml whose pool
has two sources, one warming; a real receiver (sink mode), and real Redis for the
cluster-wide count. Waits poll records with deadlines, never a sleep for a condition."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import shutil
import time
from pathlib import Path

import aiohttp
import aiosmtplib

from engine.admin import cli as admin_cli
from engine.shaping.throttle.factory import COUNTS_FILE
from tests.support.node import running_node
from tests.support.receiver import Receiver
from tests.support.redis_server import RedisServer

BUNDLED = Path(__file__).resolve().parents[2] / "policy"


def noon_utc() -> float:
    """Noon (UTC) of today: a test clock far from any day boundary."""
    today = dt.datetime.now(dt.UTC).date()
    return dt.datetime.combine(today, dt.time(12), tzinfo=dt.UTC).timestamp()


def policy_dir(tmp_path: Path, warmup: str, *, pool: str = '"ip-1", "ip-2"') -> str:
    """The bundled policy in ``tmp_path/policy`` with a pool of ip-1 and ip-2 (the
    default tenant sends from it), a test provider for ``prov.test`` and ``warmup``
    (TOML) appended to sources.toml; returns init.py's source for running_node."""
    target = tmp_path / "policy"
    shutil.copytree(BUNDLED, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    names = [n.strip().strip('"') for n in pool.split(",")]
    (target / "sources.toml").write_text(
        '[source."ip-1"]\n[source."ip-2"]\n'
        + "".join(f'[pool."default"."{n}"]\nweight = 1\n' for n in names)
        + warmup
    )
    queues = (target / "queues.toml").read_text()
    (target / "queues.toml").write_text(
        queues.replace("[tenant.'default']\n", "[tenant.'default']\negress_pool = \"default\"\n")
    )
    with open(target / "shaping.toml", "a") as fh:
        fh.write('\n[provider."testprov"]\nmatch = [{DomainSuffix = "prov.test"}]\n')
    return (target / "init.py").read_text()


def sink(rx: Receiver, **extra) -> dict:
    return {"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}", **extra}


async def send(node, recipients: list[str]) -> None:
    await aiosmtplib.send(
        b"Subject: warm\r\n\r\nbody\r\n",
        sender="a@src.test",
        recipients=recipients,
        hostname="127.0.0.1",
        port=node.smtp_port,
        start_tls=False,
    )


def delivered_from(node, source: str, domain: str | None = None) -> int:
    return sum(
        1
        for r in node.records.of("Delivery")
        if r["egress_source"] == source and (domain is None or r["recipient"].endswith(domain))
    )


async def admin_get(node, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{node.http_port}{path}") as resp:
            return resp.status, await resp.text()


def counter(status: dict, source: str, provider: str | None = None) -> dict:
    [entry] = [s for s in status["sources"] if s["source"] == source]
    [found] = [c for c in entry["counters"] if c["provider"] == provider]
    return found


async def test_warming_source_overflows_to_the_other_and_counts_add_up(tmp_path, capsys):
    """ip-2 may send 3 a day (1 to the test provider): of 10 + 5 messages it takes exactly
    3 + 1, ip-1 the rest; nothing bounces; the admin route, the CLI verb and the metrics
    show used/allowed."""
    today = dt.datetime.fromtimestamp(noon_utc(), dt.UTC).date()
    policy = policy_dir(
        tmp_path,
        f'[source."ip-2".warmup]\nstart = {today}\nvolumes = [3, 3]\n'
        '[source."ip-2".warmup.provider.testprov]\nvolumes = [1]\n',
    )
    async with Receiver() as rx, running_node(tmp_path, policy=policy, **sink(rx)) as node:
        node.gate.warmup.clock = noon_utc
        await send(node, [f"u{n}@dst.test" for n in range(10)])
        await send(node, [f"p{n}@prov.test" for n in range(5)])
        await node.records.wait(lambda r: r["type"] == "Delivery", count=15)
        code, body = await admin_get(node, "/api/admin/warmup/v1")
        _, metrics = await admin_get(node, "/metrics")
        _, page = await admin_get(node, "/api/admin/status/v1")
        await asyncio.to_thread(
            admin_cli.main, ["warmup-status", "--endpoint", f"http://127.0.0.1:{node.http_port}"]
        )
    dst = [delivered_from(node, source, "dst.test") for source in ("ip-2", "ip-1")]
    prov = [delivered_from(node, source, "prov.test") for source in ("ip-2", "ip-1")]
    assert (dst, prov) == ([3, 7], [1, 4])
    assert not node.records.of("Bounce") and not node.records.of("TransientFailure")
    assert len(rx.messages) == 15
    assert code == 200
    status = json.loads(body)
    [ip2] = status["sources"]
    assert (ip2["source"], ip2["day"], ip2["days"], ip2["state"]) == ("ip-2", 1, 2, "warming")
    default, provider = counter(status, "ip-2"), counter(status, "ip-2", "testprov")
    assert (default["used"], default["allowed"]) == (3, 3)
    shown = {(r["provider"], r["used"], r["allowed"]) for r in json.loads(page)["warmup"]}
    assert shown == {("*", 3, 3), ("testprov", 1, 1)}  # the status page's warm-up table
    assert (provider["used"], provider["allowed"]) == (1, 1)
    assert default["overflow"] > 0 and provider["overflow"] > 0
    assert 'nimbus_warmup_used{provider="*",source="ip-2"} 3.0' in metrics
    assert 'nimbus_warmup_allowed{provider="testprov",source="ip-2"} 1.0' in metrics
    assert 'nimbus_warmup_day{source="ip-2"} 1.0' in metrics
    assert 'nimbus_warmup_overflow_total{provider="*",source="ip-2"}' in metrics
    rows = [line.split()[:6] for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["SOURCE", "PROVIDER", "DAY", "STATE", "USED", "ALLOWED"]
    assert rows[1:] == [
        ["ip-2", "*", "1/2", "warming", "3", "3"],
        ["ip-2", "testprov", "1/2", "warming", "1", "1"],
    ]


async def test_no_source_with_room_waits_and_goes_when_the_window_opens(tmp_path):
    """Both sources warming, 1 message an hour each, 4 s before the hour: of 3 messages two
    go now, the third waits (not bounced, no attempt failed) and goes in the next hour."""
    boundary = (int(time.time()) // 3600 + 1) * 3600 + 3600  # an hour boundary ahead
    offset = boundary - 4.0 - time.time()
    yesterday = dt.datetime.fromtimestamp(boundary, dt.UTC).date() - dt.timedelta(days=1)
    schedule = f'start = {yesterday}\nwindow = "hour"\nvolumes = [1, 1, 1]\n'
    policy = policy_dir(
        tmp_path,
        f'[source."ip-1".warmup]\n{schedule}[source."ip-2".warmup]\n{schedule}',
    )
    async with Receiver() as rx, running_node(tmp_path, policy=policy, **sink(rx)) as node:
        node.gate.warmup.clock = lambda: time.time() + offset
        await send(node, ["a@dst.test", "b@dst.test", "c@dst.test"])
        first = await node.records.wait(lambda r: r["type"] == "Delivery", count=2)
        async with asyncio.timeout(10):
            while not node.scheduler.messages():
                await asyncio.sleep(0.02)  # routing hands the third back asynchronously
        waiting = node.scheduler.messages()
        deferred = node.gate.warmup.deferred
        records = await node.records.wait(lambda r: r["type"] == "Delivery", count=3, timeout=20)
        opened_at = time.time() + offset
    assert sorted(r["egress_source"] for r in first) == ["ip-1", "ip-2"]
    assert len(waiting) == 1 and deferred == 1
    [late] = [r for r in records if r["recipient"] == waiting[0].recipient]
    assert late["timestamp"] + offset >= boundary - 1.0  # in the new window (whole seconds)
    assert all(r["timestamp"] + offset < boundary for r in first)
    assert opened_at >= boundary
    assert not node.records.of("Bounce") and not node.records.of("TransientFailure")
    assert len(rx.messages) == 3


async def test_embedded_counts_survive_a_restart_of_the_node(tmp_path):
    """Without Redis the count lives in the spool directory: after a restart ip-2 (3 a day,
    2 used) takes one more message, not three."""
    today = dt.datetime.fromtimestamp(noon_utc(), dt.UTC).date()
    policy = policy_dir(tmp_path, f'[source."ip-2".warmup]\nstart = {today}\nvolumes = [3]\n')
    async with Receiver() as rx:
        async with running_node(tmp_path, policy=policy, **sink(rx)) as node:
            node.gate.warmup.clock = noon_utc
            await send(node, ["a@dst.test", "b@dst.test", "c@dst.test", "d@dst.test"])
            await node.records.wait(lambda r: r["type"] == "Delivery", count=4)
            before = delivered_from(node, "ip-2")
        assert (tmp_path / "spool" / COUNTS_FILE).exists()
        shutil.copytree(tmp_path / "policy", tmp_path / "again" / "policy")
        async with running_node(tmp_path / "again", policy=policy, **sink(rx, **{
            "spool.dir": str(tmp_path / "spool"),
        })) as node:  # fmt: skip
            node.gate.warmup.clock = noon_utc
            await send(node, [f"n{n}@dst.test" for n in range(6)])
            await node.records.wait(lambda r: r["type"] == "Delivery", count=6)
            after = delivered_from(node, "ip-2")
    assert (before, after) == (2, 1)


async def test_counts_are_cluster_wide_through_redis(tmp_path):
    """Two nodes sharing Redis: ip-2's allowance of 4 holds across both (10 messages:
    exactly 4 from ip-2), and each node's status shows the shared count."""
    today = dt.datetime.fromtimestamp(noon_utc(), dt.UTC).date()
    policy = policy_dir(tmp_path, f'[source."ip-2".warmup]\nstart = {today}\nvolumes = [4]\n')
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(RedisServer())
        rx = await stack.enter_async_context(Receiver())
        nodes = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            shutil.copytree(tmp_path / "policy", tmp_path / name / "policy")
            node = await stack.enter_async_context(
                running_node(tmp_path / name, policy=policy, **sink(rx, **{"redis.url": redis.url}))
            )
            node.gate.warmup.clock = noon_utc
            nodes.append(node)
        await asyncio.gather(
            *(send(node, [f"{i}-{n}@dst.test" for n in range(5)]) for i, node in enumerate(nodes))
        )
        for node in nodes:
            await node.records.wait(lambda r: r["type"] == "Delivery", count=5)
        statuses = [json.loads((await admin_get(n, "/api/admin/warmup/v1"))[1]) for n in nodes]
    from_ip2 = sum(delivered_from(n, "ip-2") for n in nodes)
    from_ip1 = sum(delivered_from(n, "ip-1") for n in nodes)
    assert (from_ip2, from_ip1) == (4, 6)
    assert [counter(s, "ip-2")["used"] for s in statuses] == [4, 4]
    assert len(rx.messages) == 10
