"""Per-message scheduling (KumoMTA ``msg:set_scheduling``): first attempt, expiry, send windows.

Exports:
    Scheduling                       the parsed constraints (frozen)
    Scheduling.from_options(d) -> Scheduling   validates KumoMTA's keys; ValueError with reasons
    Scheduling.adjust(due) -> float   the earliest time >= due inside the send window (pure)

Keys: ``first_attempt`` and ``expires`` (RFC 3339 strings or unix seconds);
``dow`` (``"Mon,Tue"``, ``"Mon-Fri"``), ``tz`` (IANA name), ``start`` and ``end``
(``"09:00"``/``"17:30:00"``) — the window keys must be given together, as KumoMTA
requires. ``expires`` replaces the queue's ``max_age`` for that message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.records import JsonObject

__all__ = ["Scheduling"]

_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WINDOW_KEYS = ("dow", "tz", "start", "end")


def _timestamp(value: Any, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{key}: expected an RFC 3339 time, got {value!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{key}: the time must carry a UTC offset, got {value!r}")
    return parsed.timestamp()


def _days(text: str) -> frozenset[int]:
    out: set[int] = set()
    for part in str(text).lower().replace(" ", "").split(","):
        first, _, last = part.partition("-")
        if first[:3] not in _DAYS or (last and last[:3] not in _DAYS):
            raise ValueError(f"dow: unknown day in {text!r} (use Mon..Sun, e.g. 'Mon-Fri')")
        a, b = _DAYS.index(first[:3]), _DAYS.index((last or first)[:3])
        out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(out)


def _clock(text: str, key: str) -> dtime:
    try:
        return dtime.fromisoformat(str(text))
    except ValueError:
        raise ValueError(f"{key}: expected a time of day such as '09:00', got {text!r}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Scheduling:
    first_attempt: float | None = None
    expires: float | None = None
    days: frozenset[int] | None = None
    tz: str = "UTC"
    start: dtime | None = None
    end: dtime | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Scheduling:
        unknown = set(options) - {"first_attempt", "expires", *_WINDOW_KEYS}
        if unknown:
            raise ValueError(f"unknown scheduling key(s): {', '.join(sorted(unknown))}")
        given = [k for k in _WINDOW_KEYS if options.get(k) is not None]
        if given and len(given) != len(_WINDOW_KEYS):
            raise ValueError("dow, tz, start and end must be given together")
        kw: dict[str, Any] = {}
        for key in ("first_attempt", "expires"):
            if options.get(key) is not None:
                kw[key] = _timestamp(options[key], key)
        if given:
            try:
                ZoneInfo(str(options["tz"]))
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"tz: unknown time zone {options['tz']!r}") from None
            kw.update(
                days=_days(options["dow"]),
                tz=str(options["tz"]),
                start=_clock(options["start"], "start"),
                end=_clock(options["end"], "end"),
            )
        return cls(**kw)

    def to_json(self) -> JsonObject:
        out: JsonObject = {}
        if self.first_attempt is not None:
            out["first_attempt"] = self.first_attempt
        if self.expires is not None:
            out["expires"] = self.expires
        if self.days is not None and self.start is not None and self.end is not None:
            out.update(
                dow=",".join(_DAYS[d].title() for d in sorted(self.days)),
                tz=self.tz,
                start=self.start.isoformat(),
                end=self.end.isoformat(),
            )
        return out

    def _inside(self, moment: datetime) -> bool:
        assert self.days is not None and self.start is not None and self.end is not None
        t = moment.timetz().replace(tzinfo=None)
        if self.start <= self.end:
            return moment.weekday() in self.days and self.start <= t < self.end
        # A window crossing midnight belongs to the day it starts on.
        if t >= self.start:
            return moment.weekday() in self.days
        return (moment.weekday() - 1) % 7 in self.days and t < self.end

    def adjust(self, due: float) -> float:
        """The earliest time at or after ``due`` (and after first_attempt) in the window."""
        if self.first_attempt is not None:
            due = max(due, self.first_attempt)
        if self.days is None:
            return due
        zone = ZoneInfo(self.tz)
        moment = datetime.fromtimestamp(due, tz=UTC).astimezone(zone)
        if self._inside(moment):
            return due
        assert self.start is not None
        for offset in range(0, 8):
            day = (moment + timedelta(days=offset)).date()
            # Compare instants, not wall clocks: in the repeated fall-back hour the same
            # wall time occurs twice (fold 0 and 1).
            for fold in (0, 1):
                candidate = datetime.combine(day, self.start, tzinfo=zone).replace(fold=fold)
                if candidate.timestamp() >= due and self._inside(candidate):
                    return candidate.timestamp()
        return due  # no day selected at all: unreachable after validation
