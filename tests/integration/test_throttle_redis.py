"""RedisStore against a real redis-server: shared GCRA and leases, expiry, outage, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from engine.config.settings import ClusterSettings, RedisSettings
from engine.config.throttle_spec import ThrottleSpec
from engine.shaping.throttle.redis import RedisStore
from tests.support.redis_server import RedisServer

TIMEOUT = 5.0  # generous: a loaded CI machine must not look like an outage
SHORT = 1.0  # for the tests that time an outage
UNAVAILABLE = "redis_unavailable"
AVAILABLE = "redis_available"


@pytest.fixture
async def server() -> AsyncIterator[RedisServer]:
    """A redis-server on a free loopback port."""
    async with RedisServer() as srv:
        yield srv


@contextlib.asynccontextmanager
async def open_store(
    server: RedisServer, nodes: int = 2, states: list[bool] | None = None, timeout: float = TIMEOUT
) -> AsyncIterator[RedisStore]:
    store = RedisStore(
        RedisSettings(url=server.url, timeout=timeout),
        ClusterSettings(nodes=nodes),
        on_state_change=None if states is None else states.append,
    )
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def inspect(server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def until(predicate, deadline: float = 5.0, step: float = 0.05):
    """Await ``predicate()`` until it is truthy or the deadline passes; returns its value."""
    end = time.monotonic() + deadline
    while True:
        value = await predicate()
        if value or time.monotonic() > end:
            return value
        await asyncio.sleep(step)


SPEC = ThrottleSpec.parse("10/min")  # burst 10; refills one per 6 s, so none during a test


async def test_gcra_budget_shared_by_two_nodes(server):
    """20 rapid calls split across two stores allow exactly the burst of 10."""
    async with open_store(server) as a, open_store(server) as b:
        results = [await (a if i % 2 else b).throttle("t:rate", SPEC) for i in range(20)]
    allowed = [r for r in results if r.allowed]
    denied = [r for r in results if not r.allowed]
    assert len(allowed) == 10
    assert [r.remaining for r in allowed] == list(range(9, -1, -1))
    assert all(5.5 < r.retry_after <= 6.0 and r.remaining == 0 for r in denied)


async def test_gcra_concurrent_calls_share_one_budget(server):
    """Concurrent calls from two stores still allow exactly the burst (atomic script)."""
    async with open_store(server) as a, open_store(server) as b:
        results = await asyncio.gather(*[(a, b)[i % 2].throttle("t:conc", SPEC) for i in range(40)])
    assert sum(r.allowed for r in results) == 10


async def test_gcra_tat_key_expires_when_full_again(server):
    """The TAT is stored with an expiry equal to reset_after, so idle buckets vanish."""
    async with open_store(server) as store, inspect(server) as redis:
        result = await store.throttle("t:ttl", SPEC, quantity=3)
        pttl = await redis.pttl("t:ttl")
    assert result.allowed and result.remaining == 7
    assert result.reset_after == pytest.approx(18.0, abs=0.01)
    assert 17_000 < pttl <= 18_000


async def test_local_spec_stays_in_process(server):
    """A ``local:`` spec never touches Redis."""
    async with open_store(server) as store, inspect(server) as redis:
        result = await store.throttle("t:local", ThrottleSpec.parse("local:1/min"))
        assert result.allowed and not await redis.exists("t:local")


async def test_leases_across_two_nodes_respect_the_limit(server):
    """Five acquires across two stores get three slots; a release lets one more in."""
    async with open_store(server) as a, open_store(server) as b:
        waits = [await (a, b)[i % 2].acquire_lease("t:conn", 3, f"l{i}", 60.0) for i in range(5)]
        assert waits[:3] == [None, None, None]
        assert all(w is not None and 59.0 < w <= 60.0 for w in waits[3:])
        assert await a.count_leases("t:conn") == await b.count_leases("t:conn") == 3
        await a.release_lease("t:conn", "l1")
        assert await b.acquire_lease("t:conn", 3, "l3", 60.0) is None
        assert await a.extend_lease("t:conn", "l0", 60.0)
        assert not await a.extend_lease("t:conn", "l1", 60.0)


async def test_reacquiring_a_held_lease_is_idempotent(server):
    """Acquiring the same lease id again at the limit keeps the slot (safe to retry)."""
    async with open_store(server) as store:
        assert await store.acquire_lease("t:idem", 1, "a", 60.0) is None
        assert await store.acquire_lease("t:idem", 1, "a", 60.0) is None
        assert await store.count_leases("t:idem") == 1


async def test_lease_expiry_frees_the_slot(server):
    """A lease nobody extends frees its slot after its ttl; the ZSET key expires too."""
    async with open_store(server) as a, open_store(server) as b, inspect(server) as redis:
        assert await a.acquire_lease("t:exp", 1, "a", 0.5) is None
        wait = await b.acquire_lease("t:exp", 1, "b", 0.5)
        assert wait is not None and 0 < wait <= 0.5
        started = time.monotonic()
        got = await until(lambda: _acquired(b, "t:exp", "b"), deadline=10.0)
        assert got and time.monotonic() - started >= 0.3
        assert not await a.extend_lease("t:exp", "a", 0.5)
        assert 0 < await redis.pttl("t:exp") <= 500


async def _acquired(store: RedisStore, key: str, lease_id: str) -> bool:
    return await store.acquire_lease(key, 1, lease_id, 0.5) is None


async def test_script_reloads_after_script_flush(server):
    """After SCRIPT FLUSH the next call reloads the script (NOSCRIPT) transparently."""
    async with open_store(server) as store:
        assert (await store.throttle("t:flush", SPEC)).allowed
        assert await server.command("SCRIPT", "FLUSH") == b"+OK\r\n"
        assert (await store.throttle("t:flush", SPEC)).remaining == 8
        assert store.shared and store.outages == 0


async def test_restart_between_calls_is_not_an_outage(server):
    """A pooled connection broken by a restart is retried once; the script is reloaded."""
    async with open_store(server) as store:
        assert (await store.throttle("t:rs", SPEC)).allowed
        await server.stop()
        await server.start()
        result = await store.throttle("t:rs", SPEC)
        assert result.allowed and result.remaining == 9  # the restarted Redis is empty
        assert store.shared and store.outages == 0


async def test_outage_enforces_local_share_then_recovers(server, caplog):
    """Redis down: answers within the timeout from limit/nodes locally, warns once;
    Redis back: shared again with scripts reloaded."""
    caplog.set_level(logging.INFO, logger="nimbus.throttle")
    states: list[bool] = []
    async with open_store(server, nodes=2, states=states, timeout=SHORT) as store:
        assert (await store.throttle("t:out", SPEC)).allowed and store.shared
        await server.stop()
        slowest, results = 0.0, []
        for _ in range(8):
            started = time.monotonic()
            results.append(await store.throttle("t:out", SPEC))
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < SHORT
        assert sum(r.allowed for r in results) == 5  # 10/min across 2 nodes
        assert store.degraded and not store.shared and states == [True]
        assert store.outages == 1 and store.outage_calls >= 8
        assert [r.getMessage() for r in caplog.records].count(UNAVAILABLE) == 1

        await server.start()
        assert await until(lambda: _shared_again(store), deadline=10.0)
        assert states == [True, False] and not store.degraded
        assert AVAILABLE in [r.getMessage() for r in caplog.records]
        async with inspect(server) as redis:
            assert await redis.exists("t:out")  # written by the reloaded script


async def _shared_again(store: RedisStore) -> bool:
    await store.throttle("t:out", SPEC)
    return store.shared


async def test_unresponsive_redis_times_out_to_local(server):
    """A frozen Redis (accepts, never answers) costs one call about the timeout, no more."""
    async with open_store(server, timeout=SHORT) as store:
        assert (await store.throttle("t:frozen", SPEC)).allowed and store.shared
        server.pause()
        try:
            started = time.monotonic()
            first = await store.throttle("t:frozen", SPEC)
            first_took = time.monotonic() - started
            started = time.monotonic()
            second = await store.throttle("t:frozen", SPEC)
            second_took = time.monotonic() - started
        finally:
            server.resume()
        assert first.allowed and second.allowed and store.degraded
        assert SHORT * 0.8 < first_took < SHORT + 1.0
        assert second_took < SHORT / 2  # not probed again within the probe interval


async def test_outage_leases_use_local_share_and_release_locally(server):
    """During an outage a node holds ceil(limit/nodes) leases, released locally."""
    async with open_store(server, nodes=2) as store:
        await server.kill()
        waits = [await store.acquire_lease("t:ol", 3, f"l{i}", 60.0) for i in range(3)]
        assert waits[:2] == [None, None] and waits[2] is not None
        assert await store.count_leases("t:ol") == 2
        await store.release_lease("t:ol", "l0")
        assert await store.count_leases("t:ol") == 1
        assert await store.acquire_lease("t:ol", 3, "l2", 60.0) is None
        assert store.degraded


async def test_outage_lease_moves_into_redis_after_recovery(server):
    """A lease taken locally during the outage joins the shared set on its next extend."""
    async with open_store(server) as a, open_store(server) as b:
        await server.stop()
        assert await a.acquire_lease("t:mv", 2, "a", 60.0) is None
        await server.start()
        assert await until(lambda: _extended(a, "t:mv", "a"), deadline=10.0)
        assert a.shared
        assert await b.count_leases("t:mv") == 1
        await a.release_lease("t:mv", "a")
        assert await b.count_leases("t:mv") == 0


async def _extended(store: RedisStore, key: str, lease_id: str) -> bool:
    ok = await store.extend_lease(key, lease_id, 60.0)
    assert ok  # the lease is never lost on the way
    return store.shared


async def test_redis_lease_is_retaken_locally_during_outage(server):
    """A lease held in Redis when it fails is kept from the local share on extend."""
    async with open_store(server, nodes=2) as store:
        for i in range(3):
            assert await store.acquire_lease("t:rt", 3, f"l{i}", 60.0) is None
        await server.kill()
        kept = [await store.extend_lease("t:rt", f"l{i}", 60.0) for i in range(3)]
        assert kept == [True, True, False]  # ceil(3/2) = 2 slots on this node
        assert store.degraded
