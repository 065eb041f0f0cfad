"""IP warm-up schedules: how much one egress source may send per window, day by day (pure).

Exports:
    WindowKind        ``day`` or ``hour``: the length of one allowance window
    WarmupSchedule    one source's schedule: start date and zone, window, volumes per day,
                      per-provider volumes
    WarmupWindow      the answer for one instant: day of the schedule, window bounds,
                      allowance (None: no limit), and which counter it draws from
    window_for(schedule, provider, now) -> WarmupWindow
    grown_volumes(initial, growth, days) -> tuple[int, ...]
    DEFAULT_COUNTER   the counter name of mail no provider override matches

Arithmetic (all local to the schedule's time zone, so a "day" is the operator's day):

    local   = now in schedule.timezone
    day     = (local.date - schedule.start).days + 1          # day 1 is the start date
    volumes = schedule.providers[provider] if provider has an override, else schedule.volumes
    day < 1                  -> allowance 0 until local midnight of the start date (every
                                counter: a source is not in service before its start date)
    volumes is None or day > len(volumes) -> no limit (the schedule is over, or this mail
                                is not limited)
    else                     -> allowance volumes[day - 1] per window

A ``day`` window runs from local midnight to the next local midnight (23 or 25 hours on
the days daylight saving time changes); an ``hour`` window from the start of the local hour
for 3,600 s (the repeated hour when clocks go back is two windows: they start at different
instants). Mail to a provider with its own volumes draws from that provider's counter
only; all other mail from the source's ``volumes`` (``DEFAULT_COUNTER``). Nothing here reads
a clock: ``now`` is passed in (unix seconds).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from zoneinfo import ZoneInfo

__all__ = [
    "WindowKind",
    "WarmupSchedule",
    "WarmupWindow",
    "window_for",
    "grown_volumes",
    "DEFAULT_COUNTER",
]

DEFAULT_COUNTER = "*"
"""The counter of mail that no provider override matches."""


class WindowKind(StrEnum):
    DAY = "day"
    HOUR = "hour"


def _no_providers() -> Mapping[str, tuple[int, ...]]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class WarmupSchedule:
    """One egress source's warm-up.

    source: the egress source's name. start: day 1 of the schedule (a local date).
    timezone: IANA zone name the days and hours are counted in.
    window: the allowance is per local day or per local hour.
    volumes: the allowance per window on day 1, 2, ...; past the last one, no limit.
        None: mail not matched by a provider override is not limited.
    providers: shaping provider name -> its own volumes (same meaning).
    """

    source: str
    start: dt.date
    timezone: str = "UTC"
    window: WindowKind = WindowKind.DAY
    volumes: tuple[int, ...] | None = None
    providers: Mapping[str, tuple[int, ...]] = field(default_factory=_no_providers)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def counters(self) -> tuple[tuple[str, str | None], ...]:
        """(counter, provider) pairs this schedule limits: the default one (when it has
        volumes) and one per provider override."""
        out: list[tuple[str, str | None]] = []
        if self.volumes is not None:
            out.append((DEFAULT_COUNTER, None))
        out.extend((name, name) for name in sorted(self.providers))
        return tuple(out)

    @property
    def days(self) -> int:
        """How many days the longest of its volume lists lasts."""
        lists = [self.volumes or ()] + list(self.providers.values())
        return max(len(v) for v in lists)


@dataclass(frozen=True, slots=True, kw_only=True)
class WarmupWindow:
    """The schedule at one instant.

    day: day of the schedule (1 = the start date; 0 or less before it).
    counter: DEFAULT_COUNTER or the provider whose override applies.
    start / end: the window's bounds, unix seconds (end exclusive). Without a limit they
        are the current window's all the same.
    allowed: messages allowed in this window; None = no limit (the schedule is over, or
        this mail is not limited).
    state: ``before_start``, ``warming`` or ``done``.
    """

    day: int
    counter: str
    start: float
    end: float
    allowed: int | None
    state: str

    @property
    def limited(self) -> bool:
        return self.allowed is not None


def _midnight(day: dt.date, zone: ZoneInfo) -> float:
    """Unix seconds of local midnight starting ``day`` (a nonexistent midnight, in a zone
    that skips it, resolves forward as zoneinfo does)."""
    return dt.datetime.combine(day, dt.time(0), tzinfo=zone).timestamp()


def _bounds(kind: WindowKind, local: dt.datetime, zone: ZoneInfo) -> tuple[float, float]:
    if kind is WindowKind.DAY:
        return _midnight(local.date(), zone), _midnight(local.date() + dt.timedelta(days=1), zone)
    start = local.replace(minute=0, second=0, microsecond=0).timestamp()
    return start, start + 3600.0


def window_for(schedule: WarmupSchedule, provider: str | None, now: float) -> WarmupWindow:
    """The window ``now`` falls in for mail to ``provider`` (a shaping provider name, or
    None), and its allowance. Pure."""
    zone = schedule.zone
    local = dt.datetime.fromtimestamp(now, tz=zone)
    day = (local.date() - schedule.start).days + 1
    volumes: tuple[int, ...] | None
    if provider is not None and provider in schedule.providers:
        counter, volumes = provider, schedule.providers[provider]
    else:
        counter, volumes = DEFAULT_COUNTER, schedule.volumes
    start, end = _bounds(schedule.window, local, zone)
    if day < 1:
        # Not in service yet: nothing goes out until the start date (a cold address
        # must never send unlimited); the window lasts until then.
        opens = _midnight(schedule.start, zone)
        return WarmupWindow(
            day=day, counter=counter, start=start, end=opens, allowed=0, state="before_start"
        )
    if volumes is None or day > len(volumes):
        return WarmupWindow(
            day=day, counter=counter, start=start, end=end, allowed=None, state="done"
        )
    return WarmupWindow(
        day=day, counter=counter, start=start, end=end, allowed=volumes[day - 1], state="warming"
    )


def grown_volumes(initial: int, growth: float, days: int) -> tuple[int, ...]:
    """Volumes ``initial * growth**(n-1)`` for days n = 1..days, rounded half up (pure).

    initial: day 1's allowance (>= 1). growth: the factor per day (>= 1). days: >= 1.
    """
    return tuple(math.floor(initial * growth**n + 0.5) for n in range(days))
