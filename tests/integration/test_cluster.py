"""A real cluster: three ``nimbus mta`` processes (plus ``nimbus tsa`` replicas) sharing one
redis-server, delivering to scriptable receivers in the test's loop.

Shared limits hold across nodes, TSA suspensions reach every node, a Redis outage costs
neither mail nor delivery, and the admin API and CLI act on a real node.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from redis.asyncio import Redis

from tests.support.cluster import Cluster, get_json, metric, nimbus_cli, send, until
from tests.support.node import NimbusProcess
from tests.support.receiver import Receiver

MTAS = 3


def sink_env(rx: Receiver) -> dict[str, str]:
    """Every message of every node to ``rx``: one ready queue name on all nodes."""
    return {"NIMBUS_SINK_ENABLED": "true", "NIMBUS_SINK_ENDPOINT": f"127.0.0.1:{rx.port}"}


def path_policy(
    path_args: str, *, retry_interval: float = 1, mx: dict[str, int] | None = None
) -> str:
    """init.py: every path gets ``EgressPathConfig(<path_args>)`` (TLS off, loopback ok);
    queues retry after ``retry_interval``; ``mx`` maps domains to receiver ports."""
    return f"""
from engine.config.throttle_spec import ThrottleSpec

MX = {mx or {}!r}

def register(nimbus):
    @nimbus.on("get_egress_path_config")
    def path(routing_domain, source, site):
        return nimbus.EgressPathConfig(enable_tls=nimbus.TlsMode.DISABLED,
                                       prohibited_hosts=(), {path_args})

    @nimbus.on("get_queue_config")
    def queue(domain, tenant, campaign, routing_domain):
        port = MX.get(domain)
        return nimbus.QueueConfig(retry_interval={retry_interval}, max_age=86400,
                                  mx_list=(f"127.0.0.1:{{port}}",) if port else None)
"""


def recipients(prefix: str, count: int, domain: str) -> list[str]:
    return [f"{prefix}{i}@{domain}" for i in range(count)]


async def spread(nodes: list[NimbusProcess], rcpts: list[str]) -> None:
    """Inject ``rcpts`` round-robin over ``nodes``, one SMTP transaction per node."""
    await asyncio.gather(*[send(node, rcpts[i :: len(nodes)]) for i, node in enumerate(nodes)])


def max_in_window(times: list[float], window: float) -> int:
    """The most events in any half-open interval [t, t + window) of the sorted times."""
    times = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + window:
            j += 1
        best = max(best, j - i)
    return best


async def throttle_scripts_run(url: str) -> int:
    """EVALSHA calls this Redis has served: the throttle and lease scripts (the TSA
    subscriber only uses HGETALL and SUBSCRIBE)."""
    redis = Redis.from_url(url)
    try:
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


# -- shared limits -------------------------------------------------------------------

RATE, BURST, RATE_MESSAGES = 10, 5, 60


async def test_max_message_rate_holds_cluster_wide(tmp_path):
    """A 10/s (burst 5) max_message_rate caps the three nodes together, not each node."""
    arrivals: list[float] = []

    def stamp(rcpt: str, attempt: int) -> None:
        arrivals.append(time.monotonic())  # at end of DATA, when the message is accepted

    policy = path_policy(f'max_message_rate=ThrottleSpec.parse("{RATE}/s,max_burst={BURST}")')
    async with (
        Receiver(data=stamp) as rx,
        Cluster(tmp_path, policy=policy, mtas=MTAS, env=sink_env(rx)) as cluster,
    ):
        rcpts = recipients("r", RATE_MESSAGES, "rate.test")
        await spread(cluster.mtas, rcpts)
        await rx.wait_for(RATE_MESSAGES, timeout=40)
    assert sorted(r for m in rx.messages for r in m.recipients) == sorted(rcpts)
    # GCRA admits at most burst + window * rate = 15 in any 1 s window. The receiver
    # stamps arrival, not the token grant: the 0-50 ms a delivery takes after its grant
    # varies, which can pull one neighbouring message into a window; allow 2 for that.
    # Without a shared budget three nodes would admit 3 * 15 = 45 in the first second.
    assert max_in_window(arrivals, 1.0) <= BURST + RATE + 2
    # The budget of 60 needs (60 - 5) / 10 = 5.5 s shared; per node it would be 1.5 s.
    assert max(arrivals) - min(arrivals) >= 0.9 * (RATE_MESSAGES - BURST) / RATE


CONN_LIMIT, CONN_MESSAGES = 2, 24


async def waiting(node: NimbusProcess) -> int:
    """Messages the node holds, scheduled or ready (its queue summary)."""
    status, summary = await get_json(
        f"http://127.0.0.1:{node.http_port}/api/admin/queue-summary/v1"
    )
    assert status == 200, summary
    return sum(q["count"] for q in summary["scheduled"] + summary["ready"])


async def test_connection_limit_holds_cluster_wide(tmp_path):
    """connection_limit 2 allows two connections to the destination from all nodes together."""
    # Each connection idles 1 s after its last message, holding its lease: without a
    # shared limit every node would keep two connections open at once (peak 6).
    policy = path_policy(f"connection_limit={CONN_LIMIT}, idle_timeout=1.0")
    async with (
        Receiver() as rx,
        Cluster(tmp_path, policy=policy, mtas=MTAS, env=sink_env(rx)) as cluster,
    ):
        rcpts = recipients("c", CONN_MESSAGES, "conn.test")
        await spread(cluster.mtas, rcpts)
        await rx.wait_for(1)
        queued = sum(await asyncio.gather(*[waiting(n) for n in cluster.mtas]))
        await rx.wait_for(CONN_MESSAGES, timeout=40)
    assert queued >= CONN_MESSAGES // MTAS  # the other nodes wait for a lease
    assert rx.peak_concurrent == CONN_LIMIT
    assert sorted(r for m in rx.messages for r in m.recipients) == sorted(rcpts)


async def test_waiting_for_a_shared_connection_slot_does_not_busy_loop(tmp_path):
    """A node holding one of two shared connection slots asks Redis for the other at a
    bounded rate, not in a loop, while its one connection works through its queue."""
    # Node 1 keeps one slot by idling 10 s after its message; node 0's one connection
    # sends ten messages at a local 2/s (so its queue stays longer than its connections).
    policy = path_policy(
        "connection_limit=2, idle_timeout=10, "
        'max_message_rate=ThrottleSpec.parse("local:2/s,max_burst=1")'
    )
    async with (
        Receiver() as rx,
        Cluster(tmp_path, policy=policy, mtas=2, env=sink_env(rx)) as cluster,
    ):
        assert cluster.redis is not None
        await send(cluster.mtas[1], ["holder@slot.test"])
        await rx.wait_for(1)
        before, started = await throttle_scripts_run(cluster.redis.url), time.monotonic()
        await send(cluster.mtas[0], recipients("q", 10, "slot.test"))
        await rx.wait_for(11, timeout=30)
        calls = await throttle_scripts_run(cluster.redis.url) - before
        elapsed = time.monotonic() - started
    # Legitimately: one lease extend per message, and a slot request per waiting task
    # at most every MAX_SLOT_WAIT (3 s): a few dozen calls, not thousands.
    assert calls / elapsed < 20, f"{calls} lease/throttle calls in {elapsed:.1f}s"


# -- TSA -----------------------------------------------------------------------------

SUSPEND_SECONDS = 5
SHAPING = rf"""
[["default".automation]]
regex = '\[TS04\]'
action = "Suspend"
duration = "{SUSPEND_SECONDS}s"
"""
TS04 = "421 4.7.0 [TS04] Messages from 1.2.3.4 temporarily deferred due to unexpected volume"


def rfc3339_seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class TsaScene:
    """Receiver A (a.test) answers every RCPT with TS04; receiver B (b.test) accepts."""

    def __init__(self) -> None:
        self.a_attempts: list[float] = []  # wall-clock time of each RCPT at A

        def refuse(address: str, attempt: int) -> str:
            self.a_attempts.append(time.time())
            return TS04

        self.a = Receiver(rcpt=refuse)
        self.b = Receiver()

    def policy(self) -> str:
        return path_policy(
            "idle_timeout=0.5", retry_interval=2, mx={"a.test": self.a.port, "b.test": self.b.port}
        )

    def a_queue(self) -> str:
        return f"unspecified->mx_list:127.0.0.1:{self.a.port}@smtp_client"

    async def suspend_a(self, cluster: Cluster) -> float:
        """One TS04 refusal seen by node 0 suspends A's ready queue on the TSA; returns
        the suspension's end (Unix seconds) once every replica reports the same one."""
        await send(cluster.mtas[0], ["first@a.test"])

        async def reported() -> list[dict] | None:
            views = [await t.suspended() for t in cluster.tsas]
            return views if all(v["ready_q"] for v in views) else None

        views = await until(reported, timeout=10, what="TSA suspension")
        assert all(v == views[0] for v in views), views  # replicas share one state
        (entry,) = views[0]["ready_q"]
        assert entry["site_name"] == self.a_queue() and entry["source"] == "unspecified"
        assert entry["reason"] == r"automation rule: \[TS04\]"
        return rfc3339_seconds(entry["expires"])

    async def assert_a_held_everywhere(self, cluster: Cluster, expires: float) -> None:
        """New a.test mail on every node stays queued (no connection to A) while b.test
        mail from every node is delivered; then each node tries A again after the end."""
        seen = len(self.a_attempts)
        for i, node in enumerate(cluster.mtas):
            await send(node, [f"held{i}@a.test", f"flow{i}@b.test"])
        await self.b.wait_for(len(cluster.mtas))

        async def a_mail_waiting(node: NimbusProcess) -> bool:
            _, summary = await get_json(
                f"http://127.0.0.1:{node.http_port}/api/admin/queue-summary/v1"
            )
            return any(q["name"] == "a.test" and q["count"] >= 1 for q in summary["scheduled"])

        for node in cluster.mtas:
            await until(
                lambda node=node: a_mail_waiting(node), timeout=5, what="a.test mail delayed"
            )
        assert time.time() < expires, "too slow to observe the suspension before it ended"
        assert len(self.a_attempts) == seen  # no node connected to A meanwhile

        for i, node in enumerate(cluster.mtas):
            [retry] = await node.wait_records(
                lambda r, i=i: (
                    r["type"] == "TransientFailure" and r["recipient"] == f"held{i}@a.test"
                ),
                count=1,
                timeout=SUSPEND_SECONDS + 10,
            )
            assert rfc3339_seconds(retry["event_time"]) >= expires - 0.05
            assert "[TS04]" in retry["response"]["content"]
        assert len(self.a_attempts) > seen
        assert min(self.a_attempts[seen:]) >= expires - 0.05


async def test_tsa_suspension_reaches_every_node(tmp_path):
    """A TS04 reply seen by one node suspends A's ready queue on all three nodes (both TSA
    replicas agree) until the rule's duration ends; b.test mail flows meanwhile."""
    scene = TsaScene()
    async with (
        scene.a,
        scene.b,
        Cluster(tmp_path, policy=scene.policy(), mtas=MTAS, tsas=2, shaping=SHAPING) as cluster,
    ):
        expires = await scene.suspend_a(cluster)
        await scene.assert_a_held_everywhere(cluster, expires)
    assert sorted(r for m in scene.b.messages for r in m.recipients) == [
        f"flow{i}@b.test" for i in range(MTAS)
    ]


async def test_nodes_keep_suspension_when_tsa_dies(tmp_path):
    """With both TSA replicas killed, every node keeps the suspension until it expires."""
    scene = TsaScene()
    async with (
        scene.a,
        scene.b,
        Cluster(tmp_path, policy=scene.policy(), mtas=MTAS, tsas=2, shaping=SHAPING) as cluster,
    ):
        expires = await scene.suspend_a(cluster)
        for tsa in cluster.tsas:
            tsa.kill9()
            await tsa.wait()
        await scene.assert_a_held_everywhere(cluster, expires)


# -- Redis outage --------------------------------------------------------------------

# A shared 10/s spreads the 30 messages over ~3 s, so Redis dies while they flow; each
# connection's lease and every message's token come from Redis until then.
OUTAGE_POLICY = path_policy(
    'max_message_rate=ThrottleSpec.parse("10/s,max_burst=1"), connection_limit=6, idle_timeout=0.5'
)
OUTAGE_MESSAGES = 30


async def degraded(cluster: Cluster) -> list[float | None]:
    return [await metric(n, "nimbus_redis_degraded") for n in cluster.mtas]


async def test_redis_outage_delivers_everything_on_local_limits(tmp_path):
    """Redis killed mid-run: nodes deliver on local shares (degraded 1), lose nothing, and
    use the shared buckets again (degraded 0) once Redis is back."""
    async with (
        Receiver() as rx,
        Cluster(
            tmp_path,
            policy=OUTAGE_POLICY,
            mtas=MTAS,
            env={"NIMBUS_REDIS_TIMEOUT": "0.5", **sink_env(rx)},
        ) as cluster,
    ):
        assert cluster.redis is not None
        assert await degraded(cluster) == [0.0] * MTAS
        sent = recipients("m", OUTAGE_MESSAGES, "out.test")
        await spread(cluster.mtas, sent)
        await rx.wait_for(OUTAGE_MESSAGES // 4)
        killed = time.time()
        await cluster.redis.kill()
        assert len(rx.messages) < OUTAGE_MESSAGES // 3  # every node still has mail to send
        await rx.wait_for(OUTAGE_MESSAGES, timeout=30)
        assert await degraded(cluster) == [1.0] * MTAS
        restarted = time.time()
        await cluster.redis.start()  # same port, empty dataset, fresh command stats

        async def recovered() -> bool:
            # A degraded node tries Redis on its next throttle call (at most once a
            # second), so keep giving every node a message until all have resumed.
            batch = [f"after{len(sent) + i}@out.test" for i in range(MTAS)]
            sent.extend(batch)
            await spread(cluster.mtas, batch)
            await rx.wait_for(len(sent), timeout=10)
            return await degraded(cluster) == [0.0] * MTAS

        await until(recovered, timeout=20, interval=0.3, what="shared limits resumed")
        assert await throttle_scripts_run(cluster.redis.url) > 0
        gaps = [gap for node in cluster.mtas for gap in outage_gaps(node, killed, restarted)]
    assert sorted(r for m in rx.messages for r in m.recipients) == sorted(sent)
    # While Redis was down each node sent at its share, 10 // 3 = 3/s with burst 1, so
    # its deliveries were 1/3 s apart (at the cluster-wide 10/s they would be 0.1 s); a
    # delivery can finish tens of milliseconds after its token on a loaded machine.
    assert len(gaps) >= 5 and min(gaps) >= 0.25


def outage_gaps(node: NimbusProcess, start: float, end: float) -> list[float]:
    """Seconds between the node's consecutive deliveries while Redis was down, leaving out
    the first (its token may still have come from Redis)."""
    times = sorted(
        rfc3339_seconds(r["event_time"])
        for r in node.records()
        if r["type"] == "Delivery" and start < rfc3339_seconds(r["event_time"]) < end
    )
    return [b - a for a, b in zip(times[1:], times[2:], strict=False)]


# -- admin API and CLI on a real node -------------------------------------------------


async def admin(node: NimbusProcess, method: str, path: str, body: object = None):
    return await get_json(
        f"http://127.0.0.1:{node.http_port}/api/admin/{path}", method=method, body=body
    )


async def test_admin_bounce_and_cli_queue_summary(tmp_path):
    """The CLI lists waiting mail; POST bounce turns it into AdminBounce records and
    removes it from the node."""
    async with Receiver(rcpt=lambda addr, n: "451 4.3.0 try again later") as rx:
        policy = path_policy("", retry_interval=3600, mx={"hold.test": rx.port})
        async with Cluster(tmp_path, policy=policy, mtas=1, redis=False) as cluster:
            [node] = cluster.mtas
            rcpts = recipients("h", 3, "hold.test")
            ids = await send(node, rcpts)
            await node.wait_records(lambda r: r["type"] == "TransientFailure", count=3)

            code, out, err = await nimbus_cli(
                "queue-summary", "--endpoint", f"http://127.0.0.1:{node.http_port}"
            )
            assert code == 0, err
            [row] = [line.split() for line in out.splitlines() if line.startswith("hold.test")]
            assert row[:2] == ["hold.test", "3"]

            status, result = await admin(
                node, "POST", "bounce/v1", {"domain": "hold.test", "reason": "cleanup"}
            )
            assert status == 200, result
            assert result["bounced"] == {"hold.test": 3} and result["total_bounced"] == 3
            bounces = await node.wait_records(lambda r: r["type"] == "AdminBounce", count=3)
            await until(lambda: _spool_empty(node), timeout=10, what="spool emptied")
            code, out, _ = await nimbus_cli(
                "queue-summary", "--endpoint", f"http://127.0.0.1:{node.http_port}"
            )
    assert sorted(r["id"] for r in bounces) == sorted(ids)
    for record in bounces:
        assert record["response"]["code"] == 551
        assert record["response"]["enhanced_code"] == {"class": 5, "subject": 7, "detail": 1}
        assert record["response"]["content"] == "Administrator bounced with reason: cleanup"
    assert code == 0 and "hold.test" not in out and "(no scheduled messages)" in out
    assert rx.messages == []


async def _spool_empty(node: NimbusProcess) -> bool:
    return await metric(node, "nimbus_spool_messages") == 0


async def test_admin_suspend_holds_domain_until_deleted(tmp_path):
    """POST suspend holds a domain's mail on the node; DELETE lets new mail through."""
    async with Receiver() as rx:
        policy = path_policy("", mx={"held.test": rx.port, "free.test": rx.port})
        async with Cluster(tmp_path, policy=policy, mtas=1, redis=False) as cluster:
            [node] = cluster.mtas
            status, body = await admin(
                node,
                "POST",
                "suspend/v1",
                {"domain": "held.test", "reason": "maintenance", "duration": "10m"},
            )
            assert status == 200, body
            await send(node, ["early@held.test", "other@free.test"])
            await rx.wait_for(1)
            _, summary = await admin(node, "GET", "queue-summary/v1")
            held = [q for q in summary["scheduled"] if q["name"] == "held.test"]
            assert held == [{"name": "held.test", "count": 1, "suspended": "maintenance"}]

            status, _ = await admin(node, "DELETE", "suspend/v1", {"id": body["id"]})
            assert status == 200
            assert (await admin(node, "GET", "suspend/v1"))[1] == []
            await send(node, ["late@held.test"])
            await rx.wait_for(2)
            _, summary = await admin(node, "GET", "queue-summary/v1")
    assert [m.recipients for m in rx.messages] == [["other@free.test"], ["late@held.test"]]
    # As KumoMTA's suspend-cancel: mail the suspension already delayed keeps its delay.
    assert [q["count"] for q in summary["scheduled"] if q["name"] == "held.test"] == [1]
