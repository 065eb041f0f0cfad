"""One node, several engine processes (``nimbus mta --workers 2``), as real processes.

The workers share the SMTP port (the kernel spreads connections), the admin API and
/metrics answer for the node on any worker, a killed worker is restarted with its shard,
a node restarted with another number of workers adopts every shard, a kill -9 of the
node loses nothing acknowledged, a connection limit holds for the node as a whole
(without Redis through the supervisor's store, with Redis through Redis), and SIGTERM
scale-in sends every worker's shard to the peers.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiosmtplib

from tests.integration.test_cluster import path_policy
from tests.integration.test_durability import (
    delivered_ids,
    inject_until_killed,
    node_env,
    send,
    stderr_event,
    wait_delivered,
)
from tests.support.cluster import get_json, until
from tests.support.node import NimbusProcess, write_policy
from tests.support.node import nimbus_process as nimbus
from tests.support.peers import free_port
from tests.support.receiver import Receiver
from tests.support.redis_server import RedisServer

TWO = {"NIMBUS_NODE_WORKERS": "2"}


def by_worker(proc: NimbusProcess, kind: str) -> dict[str, int]:
    """Records of ``kind`` per log segment suffix (``w0``, ``w1``: the worker that wrote it)."""
    out: dict[str, int] = {}
    for path in sorted(proc.log_dir.iterdir()):
        suffix = path.name.rpartition(".")[2]
        n = sum(1 for line in path.read_text().splitlines() if f'"type":"{kind}"' in line)
        out[suffix] = out.get(suffix, 0) + n
    return out


async def admin(proc: NimbusProcess, path: str, body: Any = None) -> Any:
    method = "GET" if body is None else "POST"
    status, answer = await get_json(
        f"http://127.0.0.1:{proc.http_port}/api/admin/{path}", method=method, body=body
    )
    assert status == 200, answer
    return answer


async def held(proc: NimbusProcess) -> int:
    summary = await admin(proc, "queue-summary/v1")
    return sum(q["count"] for q in summary["scheduled"] + summary["ready"])


async def scrape(proc: NimbusProcess, sample: str) -> float | None:
    status, text = await get_json(f"http://127.0.0.1:{proc.http_port}/metrics")
    assert status == 200, text
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    return None


async def test_two_workers_share_the_port_and_answer_for_the_node(tmp_path):
    """Connections land on both workers; queue-summary, /metrics, a bounce and SIGHUP
    cover both."""
    env = {**node_env(tmp_path, free_port()), **TWO}  # the sink is down: mail stays queued
    async with nimbus(tmp_path, env) as node:
        assert node.ready_line["workers"] == 2
        ids = [await send(node.smtp_port, f"spread {i}") for i in range(20)]
        await node.wait_records(lambda r: r["type"] == "Reception", count=20)
        per_worker = by_worker(node, "Reception")
        assert set(per_worker) == {"w0", "w1"} and all(per_worker.values()), per_worker
        assert await held(node) == 20
        assert await scrape(node, 'nimbus_messages_received_total{listener="esmtp_listener"}') == 20
        assert await scrape(node, "nimbus_queued_messages") == 20
        status = await admin(node, "status/v1")  # the status page's JSON, for the node
        assert (
            status["queues"]["scheduled"]["messages"] + status["queues"]["ready"]["messages"] == 20
        )
        assert status["spool"]["messages"] == 20
        assert status["node"]["workers"][0]["count"] == 2
        for id in ids[:4]:  # whichever worker holds it answers, on any worker
            assert (await admin(node, f"inspect-message/v1?id={id}"))["id"] == id
        bounced = await admin(node, "bounce/v1", {"domain": "dst.test", "reason": "test"})
        [entry] = await admin(node, "bounce/v1")
        bounces = await node.wait_records(lambda r: r["type"] == "AdminBounce", count=20)
        assert await held(node) == 0
        node.proc.send_signal(signal.SIGHUP)  # forwarded: every worker reloads its policy
        await until(
            lambda: asyncio.sleep(0, len(stderr_event(node, "policy_reloaded")) == 2),
            timeout=20,
            what="both workers reloading the policy",
        )
    assert bounced["total_bounced"] == 20 and entry["id"] == bounced["id"]
    assert entry["total_bounced"] == 20
    assert sorted(r["id"] for r in bounces) == sorted(ids)
    audits = [r for r in node.records() if r["type"] == "AdminAudit"]
    assert len(audits) == 1  # audited once, by the worker the request reached


async def test_killed_worker_is_restarted_and_its_shard_recovered(tmp_path):
    """SIGKILL of one worker: the supervisor restarts it, it recovers its shard and takes
    the node's admin entries, and every message acknowledged before is delivered."""
    port = free_port()
    env = {**node_env(tmp_path, port), **TWO}
    async with nimbus(tmp_path, env) as node:
        ids = {await send(node.smtp_port, f"restart {i}") for i in range(12)}
        await admin(node, "suspend/v1", {"domain": "elsewhere.test", "reason": "hold"})
        victim = node.ready_line["pids"][1]
        os.kill(victim, signal.SIGKILL)
        await until(
            lambda: asyncio.sleep(0, len(stderr_event(node, "worker_ready")) >= 3),
            timeout=30,
            what="the killed worker serving again",
        )
        [restart] = stderr_event(node, "worker_restarting")
        [copied] = stderr_event(node, "admin_entries_copied")
        # The killed worker's counters stay in the node's scrape (multiprocess files).
        received = await scrape(node, 'nimbus_messages_received_total{listener="esmtp_listener"}')
        async with Receiver("127.0.0.1", port) as rx:
            await wait_delivered(rx, ids)
    assert restart["worker"] == 1 and restart["pid"] == victim
    assert copied["entries"] == 1  # the restarted worker holds the node's suspension
    assert received == 12
    assert ids <= delivered_ids(rx)


async def test_a_node_adopts_every_shard_when_its_workers_change(tmp_path):
    """1 worker -> 2 -> 1: the single-process spool and both shards are adopted in turn,
    and every message acknowledged on the way is delivered once the sink is up."""
    port = free_port()
    env = node_env(tmp_path, port)
    spool = tmp_path / "spool"
    async with nimbus(tmp_path, env) as single:
        ids = {await send(single.smtp_port, f"one {i}") for i in range(4)}
        single.terminate()
        assert await single.wait() == 0
    async with nimbus(tmp_path, {**env, **TWO}) as two:
        ids |= {await send(two.smtp_port, f"two {i}") for i in range(12)}
        assert await held(two) == 16  # worker 0 took the single-process spool in
        two.terminate()
        assert await two.wait() == 0  # SIGTERM: both workers drained, then the supervisor
    assert not (spool / "spool.db").exists()
    assert {p.name for p in spool.iterdir() if p.name.startswith("shard-")} == {
        "shard-0",
        "shard-1",
    }
    async with Receiver("127.0.0.1", port) as rx:
        async with nimbus(tmp_path, env) as again:
            await wait_delivered(rx, ids)
            adopted = stderr_event(again, "spool_shard_adopted")
    assert sum(a["messages"] for a in adopted) == 16
    assert not (spool / "shard-0").exists() and not (spool / "shard-1").exists()


async def test_kill9_of_the_node_loses_no_acknowledged_message(tmp_path):
    """SIGKILL of the supervisor takes its workers with it; a restarted node (2 workers)
    delivers every message either of them acknowledged."""
    async with Receiver("127.0.0.1", 0) as rx:
        env = {**node_env(tmp_path, rx.port), **TWO}
        proc = await NimbusProcess.start(tmp_path, env)
        pids = proc.ready_line["pids"]
        try:
            acked = await inject_until_killed(proc, kill_after=200)
        finally:
            proc.kill9()
            await proc.wait()

        async def gone() -> bool:
            alive = 0
            for pid in pids:
                try:
                    os.kill(pid, 0)
                    alive += 1
                except ProcessLookupError:
                    pass
            return alive == 0

        await until(gone, timeout=10, what="the workers dying with the supervisor")
        async with nimbus(tmp_path, env):
            await wait_delivered(rx, acked)
    assert len(acked) >= 200
    assert acked <= delivered_ids(rx)


CONN_LIMIT, CONN_MESSAGES = 2, 24


async def _connection_limit(tmp_path: Path, extra: dict[str, str]) -> None:
    # Each connection idles 1 s after its last message, holding its lease: with a limit
    # per worker, two workers would keep two connections each (peak 4).
    policy = write_policy(
        tmp_path / "policy", path_policy(f"connection_limit={CONN_LIMIT}, idle_timeout=1.0")
    )
    async with Receiver() as rx:
        env = {
            "NIMBUS_SINK_ENABLED": "true",
            "NIMBUS_SINK_ENDPOINT": f"127.0.0.1:{rx.port}",
            "NIMBUS_POLICY_DIR": str(policy),
            **TWO,
            **extra,
        }
        async with nimbus(tmp_path, env) as node:
            rcpts = [f"c{i}@conn.test" for i in range(CONN_MESSAGES)]
            await asyncio.gather(
                *(
                    aiosmtplib.send(
                        b"Subject: c\r\n\r\nbody\r\n",
                        sender="s@src.test",
                        recipients=rcpts[i::8],
                        hostname="127.0.0.1",
                        port=node.smtp_port,
                    )
                    for i in range(8)
                )
            )
            await rx.wait_for(CONN_MESSAGES, timeout=40)
            per_worker = by_worker(node, "Delivery")
    assert set(per_worker) == {"w0", "w1"} and all(per_worker.values()), per_worker
    assert rx.peak_concurrent == CONN_LIMIT
    assert sorted(r for m in rx.messages for r in m.recipients) == sorted(rcpts)


async def test_connection_limit_holds_across_workers_without_redis(tmp_path):
    """connection_limit 2 allows two connections from both workers together (the
    supervisor's throttle store)."""
    await _connection_limit(tmp_path, {})


async def test_connection_limit_holds_across_workers_with_redis(tmp_path):
    """The same through Redis."""
    async with RedisServer() as redis:
        await _connection_limit(tmp_path, {"NIMBUS_REDIS_URL": redis.url})


async def test_sigterm_scale_in_sends_every_workers_shard_to_the_peer(tmp_path):
    """A 2-worker node stopped with mail deferred: each worker sends its own shard to the
    peer, so the peer takes every message and both shards end empty."""
    secret = "s3cret-s3cret-s3cret-s3cret"
    ports = [free_port(), free_port()]
    async with Receiver(rcpt=lambda a, n: "451 4.3.0 try later") as rx:
        nodes = []
        try:
            for i, (port, workers) in enumerate(zip(ports, ("2", "1"), strict=True)):
                workdir = tmp_path / f"mta-{i}"
                workdir.mkdir()
                env = {
                    "NIMBUS_NODE_ID": f"mta-{i}",
                    "NIMBUS_NODE_WORKERS": workers,
                    "NIMBUS_HTTP_LISTEN": f"127.0.0.1:{port}",
                    "NIMBUS_SINK_ENABLED": "true",
                    "NIMBUS_SINK_ENDPOINT": f"127.0.0.1:{rx.port}",
                    "NIMBUS_CLUSTER_SECRET": secret,
                    "NIMBUS_CLUSTER_PEERS": f"http://127.0.0.1:{ports[1 - i]}",
                }
                nodes.append(await NimbusProcess.start(workdir, env))
            stopping, peer = nodes
            ids = {await send(stopping.smtp_port, f"scale-in {i}") for i in range(16)}
            await stopping.wait_records(lambda r: r["type"] == "TransientFailure", count=16)
            stopping.terminate()
            assert await stopping.wait(timeout=60) == 0
            taken = await peer.wait_records(lambda r: r["type"] == "XferIn", count=16)
        finally:
            for node in nodes:
                node.kill9()
                await node.wait()
    assert {r["id"] for r in taken} == ids
    done = stderr_event(stopping, "scale_in_done")
    assert len(done) == 2 and sum(d["moved"] for d in done) == 16, done
    assert all(d["left"] == 0 and d["moved"] for d in done)  # both shards had mail
