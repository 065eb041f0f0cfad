"""The embedded throttle store: GCRA TATs and lease maps in this process only.

Exports:
    EmbeddedStore   ThrottleStore over dicts (the default without Redis, and the local
                    fallback of RedisStore)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from engine.config.throttle_spec import ThrottleSpec
from engine.shaping.throttle.gcra import ThrottleResult, acquire, expire, extend, gcra, release
from engine.shaping.throttle.store import ThrottleStore

__all__ = ["EmbeddedStore"]

# Sweep idle entries from the embedded dicts once per this many operations.
_SWEEP_EVERY = 1024


class EmbeddedStore(ThrottleStore):
    """Throttles and leases in this process only.

    clock: monotonic seconds; injectable for tests.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._ops = 0

    async def throttle(self, key: str, spec: ThrottleSpec, quantity: int = 1) -> ThrottleResult:
        now = self._tick()
        result, tat = gcra(self._tats.get(key, now), now, spec, quantity)
        self._tats[key] = tat
        return result

    async def acquire_lease(self, key: str, limit: int, lease_id: str, ttl: float) -> float | None:
        now = self._tick()
        return acquire(self._leases.setdefault(key, {}), now, limit, lease_id, ttl)

    async def extend_lease(self, key: str, lease_id: str, ttl: float) -> bool:
        now = self._tick()
        return extend(self._leases.setdefault(key, {}), now, lease_id, ttl)

    async def release_lease(self, key: str, lease_id: str) -> None:
        release(self._leases.get(key, {}), lease_id)

    async def count_leases(self, key: str) -> int:
        leases = self._leases.get(key, {})
        expire(leases, self._clock())
        return len(leases)

    def holds(self, key: str, lease_id: str) -> bool:
        """True when ``lease_id`` is a live lease of ``key`` here."""
        return self._leases.get(key, {}).get(lease_id, -math.inf) > self._clock()

    async def close(self) -> None:
        self._tats.clear()
        self._leases.clear()

    @property
    def shared(self) -> bool:
        return False

    @property
    def degraded(self) -> bool:
        return False

    def _tick(self) -> float:
        """The current time; every ``_SWEEP_EVERY`` calls, forget idle keys so memory
        follows the active keys, not every key ever seen."""
        now = self._clock()
        self._ops += 1
        if self._ops % _SWEEP_EVERY == 0:
            self._tats = {k: tat for k, tat in self._tats.items() if tat > now}
            for key in list(self._leases):
                expire(self._leases[key], now)
                if not self._leases[key]:
                    del self._leases[key]
        return now
