"""RedisStore: throttles and connection leases shared by every node through Redis.

Exports:
    RedisStore(settings, cluster, *, on_state_change=None)   a ThrottleStore

Throttles run GCRA (``engine.shaping.throttle.gcra.gcra``) in one Lua script with Redis
``TIME`` as the clock, so nodes with skewed clocks share one budget. The TAT is stored with
``SET key tat PX reset_ms``: an idle bucket vanishes when it would be full again.
Keys are spec-suffixed (``engine.shaping.throttle.embedded.message_rate_key``).

Connection leases are a ZSET per key of lease_id -> expiry (ms, Redis ``TIME``):

- acquire (Lua): ``ZREMRANGEBYSCORE`` expired, ``ZCARD``, ``ZADD`` if below the limit
  (or the id already holds a slot), else return the ms until the earliest expiry;
- extend (Lua): ``ZADD XX`` a new expiry unless the lease expired; False = lost;
- release: ``ZREM``.

Better than KumoMTA, whose lease lifetime is the sum of all client timeouts (~28 min):
callers pass a short ttl (about 60 s) and extend per message and periodically, so a
killed pod's slots free within about a minute. Each ZSET key expires with its last lease.

Fixed-window counters (warm-up allowances) are a plain integer per window key, checked
and incremented in one Lua script (``GET``; below the limit ``INCR`` and ``PEXPIREAT``),
so every node draws from one count; Redis persistence (RDB/AOF) keeps them across
restarts of Redis, and nodes hold none of it.

Redis outage (KumoMTA fails closed: no new connections, throttled deliveries abort).
Here any Redis error or a call slower than ``settings.timeout`` switches the store to a
local ``EmbeddedStore`` holding this node's share of each limit: rates
``limit // cluster.nodes`` (>= 1), connection limits ``ceil(limit / cluster.nodes)``,
window counters ``limit // cluster.nodes`` (counted from 0 in the outage: a warm-up
allowance is never exceeded by more than the nodes' shares).
It logs ``"redis_unavailable"`` once per outage, counts
``outages`` and ``outage_calls``, and calls ``on_state_change(True)``. While degraded,
one call tries Redis after ``probe_interval`` (1 s), the next after twice that, up to
``PROBE_MAX_INTERVAL`` (5 s), jittered (``engine.config.backoff``) so the nodes of a
cluster do not probe a restarting Redis in step; the first success logs
``"redis_available"`` and calls ``on_state_change(False)``.
Callers never see a Redis error.

Leases across an outage:
- taken from the fallback: released locally; the next extend after Redis answers moves
  the lease into the ZSET (acquire with its limit) or, if the shared limit is full,
  returns False so the cluster converges back to the shared limit;
- held in Redis when it went down: the next extend re-takes it from this node's local
  share (False when the share is full); a release that cannot reach Redis is left to
  the lease's short ttl.

The redis-py client retries once, only on ConnectionError (a pooled connection that
died with a Redis restart), with no backoff: an outage shows within ``settings.timeout``
rather than the default 10 retries (~3.6 s). ``register_script`` reloads scripts after
NOSCRIPT (a restarted Redis).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from engine.config.backoff import backoff_delay
from engine.config.settings import ClusterSettings, RedisSettings
from engine.config.throttle_spec import ThrottleSpec
from engine.shaping.throttle.embedded import EmbeddedStore
from engine.shaping.throttle.gcra import ThrottleResult, lease_share, local_share
from engine.shaping.throttle.store import StateCallback, ThrottleStore, WindowCount

__all__ = ["RedisStore"]

log = logging.getLogger("nimbus.throttle")

T = TypeVar("T")

PROBE_INTERVAL = 1.0
"""Seconds before the first attempt to reach Redis again while degraded."""
PROBE_MAX_INTERVAL = 5.0
"""The most the probe delay grows to while Redis stays down."""

# ARGV: emission interval (s), burst, quantity. Returns {allowed, retry_after,
# remaining, reset_after}; floats as strings (Lua numbers become integer replies).
GCRA_LUA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local quantity = tonumber(ARGV[3])
local slack = 1e-6
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local tolerance = burst * interval
local function denied(retry_after)
  local remaining = math.floor((tolerance - (tat - now)) / interval + slack)
  if remaining < 0 then remaining = 0 end
  return {0, retry_after, remaining, string.format('%.6f', tat - now)}
end
if quantity > burst then return denied('inf') end
local new_tat = tat + quantity * interval
local allow_at = new_tat - tolerance
if (allow_at - now) / interval > slack then
  return denied(string.format('%.6f', allow_at - now))
end
local reset = new_tat - now
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', math.ceil(reset * 1000))
local remaining = math.floor((tolerance - reset) / interval + slack)
if remaining < 0 then remaining = 0 end
return {1, '0', remaining, string.format('%.6f', reset)}
"""

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_KEEP_KEY = """
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
"""

# ARGV: limit, lease_id, ttl_ms. Returns -1 when acquired, else ms until a slot frees.
ACQUIRE_LUA = (
    """
local limit = tonumber(ARGV[1])
local id = ARGV[2]
local ttl = tonumber(ARGV[3])
"""
    + _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], id) or redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + ttl, id)
"""
    + _KEEP_KEY
    + """
  return -1
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(first[2]) - now)
"""
)

# ARGV: lease_id, ttl_ms. Returns 1 when extended, 0 when the lease expired or is unknown.
EXTEND_LUA = (
    """
local id = ARGV[1]
local ttl = tonumber(ARGV[2])
"""
    + _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + ttl, id) == 0
   and not redis.call('ZSCORE', KEYS[1], id) then
  return 0
end
"""
    + _KEEP_KEY
    + """
return 1
"""
)

# ARGV: limit, expires_at (unix ms). Returns {counted, used}.
WINDOW_LUA = """
local limit = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= limit then return {0, used} end
used = redis.call('INCR', KEYS[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return {1, used}
"""

COUNT_LUA = (
    _NOW_MS
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
)


class _Down:
    """Marker: Redis did not answer (or is not being tried while degraded)."""


_DOWN = _Down()


def _ms(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


class RedisStore(ThrottleStore):
    """Shared throttles and leases in Redis, with a local fallback while Redis is down.

    settings: url, key timeout (per call, seconds). Keys are passed in already prefixed.
    cluster: ``nodes`` sharing the limits (the divisor for the local fallback).
    on_state_change: called with ``degraded`` on entering / leaving the fallback.
    probe_interval: seconds before the first Redis attempt while degraded (doubling).
    rand: jitter source in [0, 1) for the probe delay.
    clock: monotonic seconds, for the fallback and probing.
    local: where ``local:`` specs live (default: this process; a worker of a node with
        several: the supervisor's store, so they hold for the node).
    """

    def __init__(
        self,
        settings: RedisSettings,
        cluster: ClusterSettings,
        *,
        on_state_change: StateCallback | None = None,
        probe_interval: float = PROBE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        local: ThrottleStore | None = None,
    ) -> None:
        self._timeout = settings.timeout
        self._nodes = max(1, cluster.nodes)
        self._on_state_change = on_state_change
        self._probe_interval = probe_interval
        self._clock = clock
        self._rand = rand
        pool = BlockingConnectionPool.from_url(
            settings.url,
            max_connections=50,
            timeout=settings.timeout,
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._redis = Redis.from_pool(pool)
        self._gcra = self._redis.register_script(GCRA_LUA)
        self._acquire = self._redis.register_script(ACQUIRE_LUA)
        self._extend = self._redis.register_script(EXTEND_LUA)
        self._count = self._redis.register_script(COUNT_LUA)
        self._window = self._redis.register_script(WINDOW_LUA)
        self._fallback = EmbeddedStore(clock)  # this node's share while Redis is down
        self._local = local or EmbeddedStore(clock)  # ``local:`` specs: never in Redis
        self._limits: dict[tuple[str, str], int] = {}  # held lease -> its limit
        self._degraded = False
        self._next_probe = 0.0
        self._failed_probes = 0
        self.outages = 0
        """Times Redis became unavailable."""
        self.outage_calls = 0
        """Calls answered by the local fallback."""

    @property
    def shared(self) -> bool:
        return not self._degraded

    @property
    def degraded(self) -> bool:
        return self._degraded

    async def throttle(self, key: str, spec: ThrottleSpec, quantity: int = 1) -> ThrottleResult:
        if spec.local:
            return await self._local.throttle(key, spec, quantity)
        if quantity < 1:
            raise ValueError(f"quantity must be at least 1, got {quantity}")
        reply = await self._try(
            lambda: self._gcra(
                keys=[key], args=[repr(spec.emission_interval), spec.burst, quantity]
            )
        )
        if isinstance(reply, _Down):
            return await self._fallback.throttle(key, local_share(spec, self._nodes), quantity)
        allowed, retry_after, remaining, reset_after = reply
        return ThrottleResult(
            allowed=bool(allowed),
            retry_after=float(retry_after),
            remaining=int(remaining),
            reset_after=float(reset_after),
        )

    async def acquire_lease(self, key: str, limit: int, lease_id: str, ttl: float) -> float | None:
        wait = await self._acquire_shared(key, limit, lease_id, ttl)
        if isinstance(wait, _Down):
            wait = await self._fallback.acquire_lease(
                key, lease_share(limit, self._nodes), lease_id, ttl
            )
        else:
            await self._fallback.release_lease(key, lease_id)  # now held in Redis
        if wait is None:
            self._limits[(key, lease_id)] = limit
        return wait

    async def extend_lease(self, key: str, lease_id: str, ttl: float) -> bool:
        limit = self._limits.get((key, lease_id))
        if limit is not None and self._fallback.holds(key, lease_id):
            # Taken during an outage: move it into Redis as soon as Redis answers.
            wait = await self._acquire_shared(key, limit, lease_id, ttl)
            if isinstance(wait, _Down):
                return await self._fallback.extend_lease(key, lease_id, ttl)
            await self._fallback.release_lease(key, lease_id)
            return self._kept(key, lease_id, wait is None)
        reply = await self._try(lambda: self._extend(keys=[key], args=[lease_id, _ms(ttl)]))
        if isinstance(reply, _Down):
            if limit is None:
                return False
            wait = await self._fallback.acquire_lease(
                key, lease_share(limit, self._nodes), lease_id, ttl
            )
            return self._kept(key, lease_id, wait is None)
        return self._kept(key, lease_id, bool(reply))

    async def release_lease(self, key: str, lease_id: str) -> None:
        self._limits.pop((key, lease_id), None)
        if self._fallback.holds(key, lease_id):
            await self._fallback.release_lease(key, lease_id)
            return
        # When Redis is unreachable the lease frees itself at its (short) expiry.
        await self._try(lambda: self._redis.zrem(key, lease_id))

    async def count_leases(self, key: str) -> int:
        local = await self._fallback.count_leases(key)
        reply = await self._try(lambda: self._count(keys=[key]))
        return local if isinstance(reply, _Down) else int(reply) + local

    async def count_window(self, key: str, limit: int, expires_at: float) -> WindowCount:
        reply = await self._try(
            lambda: self._window(keys=[key], args=[limit, math.ceil(expires_at * 1000)])
        )
        if isinstance(reply, _Down):
            return await self._fallback.count_window(key, limit // self._nodes, expires_at)
        counted, used = reply
        return WindowCount(bool(counted), int(used))

    async def window_count(self, key: str) -> int:
        reply = await self._try(lambda: self._redis.get(key))
        if isinstance(reply, _Down):
            return await self._fallback.window_count(key)
        return int(reply or 0)

    async def close(self) -> None:
        await self._redis.aclose()
        await self._fallback.close()
        await self._local.close()

    # --- internals ----------------------------------------------------------------------

    async def _acquire_shared(
        self, key: str, limit: int, lease_id: str, ttl: float
    ) -> float | None | _Down:
        reply = await self._try(lambda: self._acquire(keys=[key], args=[limit, lease_id, _ms(ttl)]))
        if isinstance(reply, _Down):
            return reply
        return None if int(reply) < 0 else int(reply) / 1000

    def _kept(self, key: str, lease_id: str, ok: bool) -> bool:
        if not ok:
            self._limits.pop((key, lease_id), None)
        return ok

    async def _try(self, call: Callable[[], Awaitable[T]]) -> T | _Down:
        """Run ``call`` against Redis within the timeout; _DOWN when Redis fails or, while
        degraded, when it is not yet time to probe (one caller probes per interval)."""
        if self._degraded:
            now = self._clock()
            if now < self._next_probe:
                self.outage_calls += 1
                return _DOWN
            self._next_probe = now + self._probe_delay()  # the other callers stay local
        try:
            async with asyncio.timeout(self._timeout):
                reply = await call()
        except (RedisError, OSError) as exc:  # OSError covers TimeoutError
            self._enter_outage(exc)
            self.outage_calls += 1
            return _DOWN
        if self._degraded:
            self._leave_outage()
        return reply

    def _probe_delay(self) -> float:
        cap = max(self._probe_interval, PROBE_MAX_INTERVAL)
        return backoff_delay(
            self._failed_probes, base=self._probe_interval, cap=cap, rand=self._rand()
        )

    def _enter_outage(self, exc: BaseException) -> None:
        self._failed_probes += 1
        self._next_probe = self._clock() + self._probe_delay()
        if self._degraded:
            return
        self._degraded = True
        self.outages += 1
        log.warning(
            "redis_unavailable",
            extra={"error": f"{type(exc).__name__}: {exc}", "nodes": self._nodes},
        )
        self._notify(True)

    def _leave_outage(self) -> None:
        self._degraded = False
        self._failed_probes = 0
        log.info("redis_available")
        self._notify(False)

    def _notify(self, degraded: bool) -> None:
        if self._on_state_change is None:
            return
        try:
            self._on_state_change(degraded)
        except Exception:  # a metrics hook must not break throttling
            log.exception("throttle_state_callback_failed")
