"""The embedded throttle store: GCRA TATs and lease maps in this process only.

Exports:
    EmbeddedStore   ThrottleStore over dicts (the default without Redis, and the local
                    fallback of RedisStore)

Fixed-window counters (warm-up allowances) are kept in memory too and, when the store
is given a ``counts_file``, written through to it (``counts_file.CountsFile``, in a
thread) and read back on first use, so a restarted node keeps today's counts.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path

from engine.config.throttle_spec import ThrottleSpec
from engine.shaping.throttle.counts_file import CountsFile
from engine.shaping.throttle.gcra import ThrottleResult, acquire, expire, extend, gcra, release
from engine.shaping.throttle.store import ThrottleStore, WindowCount

__all__ = ["EmbeddedStore"]

# Sweep idle entries from the embedded dicts once per this many operations.
_SWEEP_EVERY = 1024


class EmbeddedStore(ThrottleStore):
    """Throttles and leases in this process only.

    clock: monotonic seconds; injectable for tests.
    counts_file: where window counters persist (None: memory only).
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, counts_file: Path | None = None
    ) -> None:
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._windows: dict[str, tuple[int, float]] = {}  # key -> (used, expires_at)
        self._file = CountsFile(counts_file) if counts_file is not None else None
        self._loaded = asyncio.Lock()  # held while the file is read back, once
        self._needs_load = self._file is not None
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

    async def count_window(self, key: str, limit: int, expires_at: float) -> WindowCount:
        await self._load()
        used = self._window(key)
        if used >= limit:
            return WindowCount(False, used)
        used += 1
        self._windows[key] = (used, expires_at)
        if self._file is not None:
            await asyncio.to_thread(self._file.save, key, used, expires_at)
        return WindowCount(True, used)

    async def window_count(self, key: str) -> int:
        await self._load()
        return self._window(key)

    def _window(self, key: str) -> int:
        # Keys name their window, so an expired counter is never asked for again: it is
        # only swept (``_tick``) to bound memory, not checked here.
        entry = self._windows.get(key)
        return 0 if entry is None else entry[0]

    async def _load(self) -> None:
        if not self._needs_load:
            return
        async with self._loaded:
            if self._needs_load and self._file is not None:
                for key, (used, expires) in (await asyncio.to_thread(self._file.load)).items():
                    if used > self._windows.get(key, (0, 0.0))[0]:
                        self._windows[key] = (used, expires)
                self._needs_load = False

    def holds(self, key: str, lease_id: str) -> bool:
        """True when ``lease_id`` is a live lease of ``key`` here."""
        return self._leases.get(key, {}).get(lease_id, -math.inf) > self._clock()

    async def close(self) -> None:
        self._tats.clear()
        self._leases.clear()
        self._windows.clear()
        if self._file is not None:
            await asyncio.to_thread(self._file.close)

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
            wall = time.time()
            self._windows = {k: e for k, e in self._windows.items() if e[1] > wall}
        return now
