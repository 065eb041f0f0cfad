"""Throttles and leases: pure GCRA and lease steps, outage shares, key names, EmbeddedStore."""

from __future__ import annotations

import math

import pytest

from engine.config.settings import ClusterSettings, RedisSettings
from engine.config.throttle_spec import ThrottleSpec
from engine.shaping.throttle.embedded import EmbeddedStore
from engine.shaping.throttle.factory import make_store
from engine.shaping.throttle.gcra import (
    ThrottleResult,
    acquire,
    connection_limit_key,
    connection_rate_key,
    expire,
    extend,
    gcra,
    lease_share,
    local_share,
    message_rate_key,
    named_limit_key,
    release,
)

# --- gcra -----------------------------------------------------------------------------------

# Each step: (now, quantity, allowed, retry_after, remaining), applied in order to one key.
GCRA_CASES = {
    "steady rate at the limit is always allowed": (
        "2/s",
        [
            (0.0, 1, True, 0.0, 1),
            (0.5, 1, True, 0.0, 1),
            (1.0, 1, True, 0.0, 1),
            (1.5, 1, True, 0.0, 1),
            (2.0, 1, True, 0.0, 1),
        ],
    ),
    "burst then throttled": (
        "4/s",
        [
            (0.0, 1, True, 0.0, 3),
            (0.0, 1, True, 0.0, 2),
            (0.0, 1, True, 0.0, 1),
            (0.0, 1, True, 0.0, 0),
            (0.0, 1, False, 0.25, 0),
        ],
    ),
    "retry_after is exact": (
        "4/s",
        [
            (0.0, 4, True, 0.0, 0),
            (0.125, 1, False, 0.125, 0),
            (0.25, 1, True, 0.0, 0),
            (0.25, 1, False, 0.25, 0),
            (0.5, 1, True, 0.0, 0),
        ],
    ),
    "max_burst=1 spaces events period/limit apart": (
        "60/min,max_burst=1",
        [
            (0.0, 1, True, 0.0, 0),
            (0.5, 1, False, 0.5, 0),
            (1.0, 1, True, 0.0, 0),
            (1.25, 1, False, 0.75, 0),
            (2.0, 1, True, 0.0, 0),
        ],
    ),
    "quantity > 1 takes that many": (
        "10/s",
        [
            (0.0, 4, True, 0.0, 6),
            (0.0, 4, True, 0.0, 2),
            (0.0, 4, False, 0.2, 2),
            (0.0, 2, True, 0.0, 0),
        ],
    ),
    "quantity above the burst is never allowed": (
        "10/s,max_burst=3",
        [(0.0, 4, False, math.inf, 3), (0.0, 3, True, 0.0, 0)],
    ),
    "an idle bucket refills to the burst": (
        "4/s",
        [(0.0, 4, True, 0.0, 0), (10.0, 1, True, 0.0, 3)],
    ),
    "time going backwards is only stricter": (
        "1/s,max_burst=1",
        [(10.0, 1, True, 0.0, 0), (5.0, 1, False, 6.0, 0), (11.0, 1, True, 0.0, 0)],
    ),
    "a fractional interval does not lose the last burst event": (
        "10/s",
        [*[(0.0, 1, True, 0.0, 9 - i) for i in range(10)], (0.0, 1, False, 0.1, 0)],
    ),
}


@pytest.mark.parametrize(("spec_text", "steps"), GCRA_CASES.values(), ids=GCRA_CASES.keys())
def test_gcra_table(spec_text, steps):
    """Each step's verdict, retry_after and remaining follow GCRA for the spec."""
    spec = ThrottleSpec.parse(spec_text)
    tat = 0.0
    for now, quantity, allowed, retry_after, remaining in steps:
        result, tat = gcra(tat, now, spec, quantity)
        assert (result.allowed, result.remaining) == (allowed, remaining), (now, quantity)
        assert result.retry_after == pytest.approx(retry_after, abs=1e-9), (now, quantity)


def test_gcra_allowed_advances_tat_and_reports_reset():
    """An allowed request moves the TAT by quantity*T and reset_after is TAT - now."""
    result, tat = gcra(0.0, 100.0, ThrottleSpec.parse("4/s"), 2)
    assert tat == 100.5
    assert result == ThrottleResult(allowed=True, retry_after=0.0, remaining=2, reset_after=0.5)


def test_gcra_denied_keeps_tat():
    """A denied request leaves the stored TAT unchanged."""
    result, tat = gcra(101.0, 100.0, ThrottleSpec.parse("1/s,max_burst=1"))
    assert not result.allowed and tat == 101.0 and result.reset_after == 1.0


def test_gcra_rejects_zero_quantity():
    """quantity < 1 is a caller error."""
    with pytest.raises(ValueError, match="quantity"):
        gcra(0.0, 0.0, ThrottleSpec.parse("1/s"), 0)


# --- leases ---------------------------------------------------------------------------------

# (leases before, now, limit, lease_id, ttl, expected return, leases after)
ACQUIRE_CASES = {
    "empty set acquires": ({}, 0.0, 2, "a", 60.0, None, {"a": 60.0}),
    "below the limit acquires": ({"x": 30.0}, 0.0, 2, "a", 60.0, None, {"x": 30.0, "a": 60.0}),
    "at the limit waits for the earliest expiry": (
        {"x": 30.0, "y": 20.0},
        5.0,
        2,
        "a",
        60.0,
        15.0,
        {"x": 30.0, "y": 20.0},
    ),
    "expiry frees a slot": ({"x": 30.0, "y": 5.0}, 5.0, 2, "a", 60.0, None, {"x": 30.0, "a": 65.0}),
    "re-acquiring the same id extends it even when full": (
        {"a": 10.0, "y": 20.0},
        5.0,
        2,
        "a",
        60.0,
        None,
        {"a": 65.0, "y": 20.0},
    ),
    "limit 1 is exclusive": ({"x": 8.0}, 7.0, 1, "a", 1.0, 1.0, {"x": 8.0}),
}


@pytest.mark.parametrize(
    ("before", "now", "limit", "lease_id", "ttl", "expected", "after"),
    ACQUIRE_CASES.values(),
    ids=ACQUIRE_CASES.keys(),
)
def test_acquire_table(before, now, limit, lease_id, ttl, expected, after):
    """acquire takes a slot below the limit, else returns the wait until one frees."""
    leases = dict(before)
    assert acquire(leases, now, limit, lease_id, ttl) == expected
    assert leases == after


# (leases before, now, lease_id, ttl, expected, leases after)
EXTEND_CASES = {
    "live lease moves its expiry": ({"a": 10.0}, 5.0, "a", 60.0, True, {"a": 65.0}),
    "expired lease is lost": ({"a": 5.0}, 5.0, "a", 60.0, False, {}),
    "unknown lease is lost": ({"b": 10.0}, 5.0, "a", 60.0, False, {"b": 10.0}),
}


@pytest.mark.parametrize(
    ("before", "now", "lease_id", "ttl", "expected", "after"),
    EXTEND_CASES.values(),
    ids=EXTEND_CASES.keys(),
)
def test_extend_table(before, now, lease_id, ttl, expected, after):
    """extend keeps only live leases."""
    leases = dict(before)
    assert extend(leases, now, lease_id, ttl) is expected
    assert leases == after


def test_release_and_expire():
    """release frees one slot (unknown ids are a no-op); expire drops due leases."""
    leases = {"a": 10.0, "b": 20.0, "c": 30.0}
    release(leases, "a")
    release(leases, "zz")
    expire(leases, 20.0)
    assert leases == {"c": 30.0}


# --- outage shares --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec_text", "nodes", "expected"),
    [
        ("100/min", 1, "100/min"),
        ("100/min", 3, "33/min"),
        ("2/s", 3, "1/s"),
        ("local:10/h", 2, "local:5/h"),
        ("100/min,max_burst=10", 4, "25/min,max_burst=2"),
        ("100/min,max_burst=1", 4, "25/min,max_burst=1"),
    ],
)
def test_local_share(spec_text, nodes, expected):
    """While Redis is down each node may use limit // nodes (and burst // nodes), at least 1."""
    assert local_share(ThrottleSpec.parse(spec_text), nodes) == ThrottleSpec.parse(expected)


@pytest.mark.parametrize(
    ("limit", "nodes", "expected"),
    [
        (10, 1, 10),
        (10, 3, 4),
        (9, 3, 3),
        (1, 5, 1),
        (7, 0, 7),
    ],
)
def test_lease_share(limit, nodes, expected):
    """While Redis is down each node may hold ceil(limit / nodes) connections."""
    assert lease_share(limit, nodes) == expected


# --- key names ------------------------------------------------------------------------------


def test_message_rate_key_is_spec_suffixed():
    """A changed spec gets a different key (a fresh bucket), as in KumoMTA."""
    q = "src->example.com@smtp_client"
    assert (
        message_rate_key("nimbus", q, ThrottleSpec.parse("100/min"))
        == "nimbus:max_message_rate:src->example.com@smtp_client:100:100:60"
    )
    assert (
        message_rate_key("nimbus", q, ThrottleSpec.parse("100/min,max_burst=5"))
        == "nimbus:max_message_rate:src->example.com@smtp_client:100:5:60"
    )


def test_other_key_names():
    """Connection rate, connection limit and named limits have their own namespaces."""
    spec = ThrottleSpec.parse("10/h")
    assert connection_rate_key("p", "q", spec) == "p:connection_rate:q:10:10:3600"
    assert connection_limit_key("p", "q") == "p:connection_limit:q"
    assert (
        named_limit_key("p", "shaping-provider-google-limit")
        == "p:limit:shaping-provider-google-limit"
    )
    assert named_limit_key("p", "google-rate", spec) == "p:limit:google-rate:10:10:3600"


# --- EmbeddedStore --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_embedded_throttle_burst_then_refill():
    """The embedded store applies GCRA per key on its clock."""
    clock = FakeClock()
    store = EmbeddedStore(clock)
    spec = ThrottleSpec.parse("2/s")
    verdicts = [(await store.throttle("k", spec)).allowed for _ in range(3)]
    other = await store.throttle("other", spec)
    clock.now += 0.5
    assert verdicts == [True, True, False] and other.allowed
    assert (await store.throttle("k", spec)).allowed


async def test_embedded_leases_limit_extend_release():
    """Leases respect the limit, extend while live, and free on release or expiry."""
    clock = FakeClock()
    store = EmbeddedStore(clock)
    assert await store.acquire_lease("c", 2, "a", 10.0) is None
    assert await store.acquire_lease("c", 2, "b", 20.0) is None
    assert await store.acquire_lease("c", 2, "x", 10.0) == 10.0
    assert await store.count_leases("c") == 2
    await store.release_lease("c", "b")
    assert await store.acquire_lease("c", 2, "x", 10.0) is None
    clock.now += 5
    assert await store.extend_lease("c", "a", 10.0)
    clock.now += 10
    assert not await store.extend_lease("c", "x", 10.0)
    assert await store.count_leases("c") == 0
    assert not store.shared and not store.degraded


async def test_embedded_forgets_idle_keys():
    """Idle buckets and empty lease sets are swept, so memory follows active keys."""
    clock = FakeClock()
    store = EmbeddedStore(clock)
    spec = ThrottleSpec.parse("1/s")
    for i in range(1500):
        await store.throttle(f"k{i}", spec)
    await store.acquire_lease("c", 1, "a", 1.0)
    clock.now += 10
    for _ in range(1024):
        await store.throttle("live", spec)
    assert set(store._tats) == {"live"} and not store._leases


async def test_make_store_embedded_without_url():
    """No Redis url: the node-local embedded store."""
    store = make_store(RedisSettings(url=""), ClusterSettings())
    assert isinstance(store, EmbeddedStore)
    await store.close()


async def test_make_store_redis_with_url():
    """A Redis url gives a RedisStore, shared until Redis fails (no connection at build)."""
    from engine.shaping.throttle.redis import RedisStore

    store = make_store(RedisSettings(url="redis://127.0.0.1:1/0"), ClusterSettings(nodes=2))
    assert isinstance(store, RedisStore) and store.shared and not store.degraded
    await store.close()
