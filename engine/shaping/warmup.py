"""Warm-up enforcement: the cluster-wide count of each warming source's current window.

Exports:
    WarmupCounters    take(schedule, provider) -> None | seconds to wait; status(...);
                      readings(...) for metrics; overflow / deferred counts
    warmup_key(prefix, source, window) -> str      the counter's key (pure)
    EXPIRY_MARGIN     seconds a window's counter outlives the window

Routing (``queues/routing.py``) asks ``take`` after a source passed its
``source_selection_rate``: within the allowance the message is counted against the
source's window (``ThrottleStore.count_window``: Redis for the cluster, else the
embedded store with its file in the spool directory) and goes; beyond it the answer is
the seconds until the window ends, routing tries the pool's next source, and only when
every source refuses does the message wait (never a bounce). A count is one selection:
a message that is retried later is counted again in the window it is retried in.

Nothing here sleeps; ``clock`` (unix seconds) is injectable, so tests can stand just
before a window boundary.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from engine.policy.warmup import DEFAULT_COUNTER, WarmupSchedule, WarmupWindow, window_for
from engine.records import rfc3339
from engine.shaping.throttle.store import ThrottleStore

__all__ = ["WarmupCounters", "warmup_key", "EXPIRY_MARGIN"]

EXPIRY_MARGIN = 3600.0
"""A window's counter is kept this long past the window's end (then forgotten)."""


def warmup_key(prefix: str, source: str, window: WarmupWindow) -> str:
    """``<prefix>warmup:<source>:<counter>:<window start, unix s>`` (pure)."""
    return f"{prefix}warmup:{source}:{window.counter}:{int(window.start)}"


def _provider(counter: str) -> str | None:
    return None if counter == DEFAULT_COUNTER else counter


class WarmupCounters:
    """store: the node's throttle store (shared through Redis when configured).
    prefix: key prefix (``redis.key_prefix``). clock: unix seconds.
    """

    def __init__(
        self, store: ThrottleStore, prefix: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self._prefix = prefix
        self.clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # -> (window start, used)
        self.overflow: Counter[tuple[str, str]] = Counter()
        """Messages turned away from a source whose window was used up, by (source, counter)."""
        self.deferred = 0
        """Messages that waited because no source of their pool had room."""

    async def take(self, schedule: WarmupSchedule, provider: str | None) -> float | None:
        """Count one message for ``schedule``'s source to ``provider`` (a shaping provider
        name or None). None: counted, it may go. Else seconds until the window ends."""
        now = self.clock()
        window = window_for(schedule, provider, now)
        if window.allowed is None:
            return None
        seen = (schedule.source, window.counter)
        if window.allowed > 0:
            key = warmup_key(self._prefix, schedule.source, window)
            result = await self.store.count_window(key, window.allowed, window.end + EXPIRY_MARGIN)
            self._seen[seen] = (window.start, result.used)
            if result.allowed:
                return None
        self.overflow[seen] += 1
        return max(window.end - now, 0.001)

    async def status(self, schedules: Mapping[str, WarmupSchedule]) -> list[dict[str, Any]]:
        """Each warming source: schedule, day, state and per counter used/allowed in the
        current window, read from the store (cluster-wide with Redis)."""
        now = self.clock()
        out = []
        for name in sorted(schedules):
            schedule = schedules[name]
            counters = []
            for counter, provider in schedule.counters():
                window = window_for(schedule, provider, now)
                used = 0
                if window.start <= now < window.end and window.allowed != 0:
                    used = await self.store.window_count(warmup_key(self._prefix, name, window))
                    self._seen[(name, counter)] = (window.start, used)
                counters.append(_counter_json(window, used, self.overflow[(name, counter)]))
            out.append(_source_json(schedule, now, counters))
        return out

    def readings(self, schedules: Mapping[str, WarmupSchedule]) -> list[dict[str, Any]]:
        """Like ``status`` without asking the store (for a metrics scrape, which cannot
        wait): ``used`` is the count this node last saw in the current window."""
        now = self.clock()
        out = []
        for name in sorted(schedules):
            schedule = schedules[name]
            counters = []
            for counter, provider in schedule.counters():
                window = window_for(schedule, provider, now)
                start, used = self._seen.get((name, counter), (None, 0))
                counters.append(
                    _counter_json(
                        window, used if start == window.start else 0, self.overflow[(name, counter)]
                    )
                )
            out.append(_source_json(schedule, now, counters))
        return out


def _counter_json(window: WarmupWindow, used: int, overflow: int) -> dict[str, Any]:
    return {
        "provider": _provider(window.counter),
        "state": window.state,
        "used": used,
        "allowed": window.allowed,
        "window_start": rfc3339(window.start),
        "window_end": rfc3339(window.end),
        "overflow": overflow,
    }


def _source_json(
    schedule: WarmupSchedule, now: float, counters: list[dict[str, Any]]
) -> dict[str, Any]:
    day = window_for(schedule, None, now).day
    states = {c["state"] for c in counters}
    state = "before_start" if day < 1 else "warming" if "warming" in states else "done"
    return {
        "source": schedule.source,
        "start": schedule.start.isoformat(),
        "timezone": schedule.timezone,
        "window": schedule.window.value,
        "day": day,
        "days": schedule.days,
        "state": state,
        "counters": counters,
    }
