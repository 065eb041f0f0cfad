"""Throttle and limit specs: the ``"100/min"`` and ``"local:20"`` strings of shaping config.

Exports:
    ThrottleSpec.parse("local:1,000/30minute,max_burst=5") -> ThrottleSpec   a GCRA rate
    LimitSpec.parse(10 | "1,000" | "local:5") -> LimitSpec                  a concurrency cap

Grammar (KumoMTA ``crates/throttle/src/lib.rs``)::

    throttle := ["local:"] number "/" [multiplier] period [",max_burst=" number]
    period   := s | sec | second | m | min | minute | h | hr | hour | d | day
    number   := digits, optionally separated by "," or "_"   ("1,000", "1_000")
    limit    := ["local:"] number                               (or a TOML integer)

``local:`` keeps the throttle or limit in this process even when shared (Redis)
throttles are configured. ``max_burst`` defaults to the limit (the whole quota may
be used at once); ``max_burst=1`` spaces events ``period/limit`` apart.

Deliberately stricter than KumoMTA (which accepts these and then misbehaves):
a zero period multiplier (``"5/0m"``) and ``max_burst=0`` are rejected.

Both parsers are pure and raise ``ValueError`` with the reason; config loaders add
the file/table/key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ThrottleSpec", "LimitSpec"]

_PERIODS: dict[str, int] = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hr": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
# Canonical unit letters for __str__, as KumoMTA's ThrottleSpec::as_string.
_CANONICAL = {86400: "d", 3600: "h", 60: "m", 1: "s"}
_LOCAL = "local:"
_BURST = ",max_burst="
_NUMBER = re.compile(r"\d[\d,_]*")


def _parse_number(text: str, what: str) -> int:
    """``"1,000"`` / ``"1_000"`` / ``"1000"`` -> 1000; anything else is a ValueError."""
    if not _NUMBER.fullmatch(text):
        raise ValueError(
            f"invalid {what} {text!r}: expected digits, optionally separated by ',' or '_'"
        )
    return int(text.replace(",", "").replace("_", ""))


def _split_local(text: str) -> tuple[bool, str]:
    if text.startswith(_LOCAL):
        return True, text[len(_LOCAL) :]
    return False, text


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleSpec:
    """A rate: at most ``limit`` events per ``period`` seconds (GCRA).

    limit: events allowed per period (> 0).
    period: the period in seconds (a whole number, > 0).
    max_burst: events allowed back to back; None means ``limit`` (see ``burst``).
    local: True to keep the throttle in this process even when Redis is configured.
    """

    limit: int
    period: float
    max_burst: int | None = None
    local: bool = False

    @classmethod
    def parse(cls, text: str) -> ThrottleSpec:
        """Parse ``[local:]N/[k]period[,max_burst=B]``.

        text: such as ``"100/min"``, ``"local:1,000/h"``, ``"20/30minute"``,
            ``"500/d,max_burst=1"``. Surrounding whitespace is ignored.
        Returns the spec. Raises ValueError naming what is wrong.
        """
        if not isinstance(text, str):
            raise ValueError(f"expected a throttle such as '100/min', got {text!r}")
        local, rest = _split_local(text.strip())
        max_burst = None
        if _BURST in rest:
            rest, burst_text = rest.split(_BURST, 1)
            max_burst = _parse_number(burst_text, "max_burst")
            if max_burst < 1:
                raise ValueError(f"invalid throttle {text!r}: max_burst must be at least 1")
        if "/" not in rest:
            raise ValueError(
                f"invalid throttle {text!r}: expected 'limit/period' such as '100/min'"
            )
        limit_text, period_text = rest.split("/", 1)
        m = re.fullmatch(r"(\d*)([a-z]*)", period_text)
        if not m or m.group(2) not in _PERIODS:
            raise ValueError(
                f"invalid throttle {text!r}: unknown period {period_text!r} "
                "(expected s, sec, second, m, min, minute, h, hr, hour, d or day, "
                "optionally with a multiplier such as '30minute')"
            )
        multiplier = int(m.group(1)) if m.group(1) else 1
        if multiplier < 1:
            raise ValueError(f"invalid throttle {text!r}: the period multiplier must be at least 1")
        limit = _parse_number(limit_text, "limit")
        if limit < 1:
            raise ValueError(f"invalid throttle {text!r}: limit must be greater than 0")
        return cls(
            limit=limit,
            period=float(multiplier * _PERIODS[m.group(2)]),
            max_burst=max_burst,
            local=local,
        )

    def __str__(self) -> str:
        """Canonical text: ``"100/m"``, ``"local:20/1800s"``, ``"5/d,max_burst=1"``."""
        period = int(self.period)
        unit = _CANONICAL.get(period)
        period_text = unit if unit else f"{period}s"
        burst = f"{_BURST}{self.max_burst}" if self.max_burst is not None else ""
        return f"{_LOCAL if self.local else ''}{self.limit}/{period_text}{burst}"

    @property
    def burst(self) -> int:
        """Events allowed back to back: ``max_burst``, or the whole ``limit`` when unset."""
        return self.limit if self.max_burst is None else self.max_burst

    @property
    def rate_per_second(self) -> float:
        """The sustained rate in events per second."""
        return self.limit / self.period

    @property
    def emission_interval(self) -> float:
        """GCRA emission interval ``T = period / limit``: seconds between events at the rate."""
        return self.period / self.limit


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitSpec:
    """A concurrency cap (connection limit).

    limit: the maximum (> 0).
    local: True to keep the limit in this process even when Redis is configured.
    """

    limit: int
    local: bool = False

    @classmethod
    def parse(cls, value: int | str) -> LimitSpec:
        """Parse an integer, ``"1,000"``, ``"1_000"`` or ``"local:20"``.

        Returns the spec. Raises ValueError for a boolean, zero, negative or
        malformed value.
        """
        if isinstance(value, bool):
            raise ValueError(f"expected a limit such as 10 or 'local:10', got {value!r}")
        if isinstance(value, int):
            if value < 1:
                raise ValueError(f"limit must be 1 or larger, got {value}")
            return cls(limit=value)
        if not isinstance(value, str):
            raise ValueError(f"expected a limit such as 10 or 'local:10', got {value!r}")
        local, rest = _split_local(value.strip())
        limit = _parse_number(rest, "limit")
        if limit < 1:
            raise ValueError(f"invalid limit {value!r}: must be 1 or larger")
        return cls(limit=limit, local=local)

    def __str__(self) -> str:
        """Canonical text: ``"10"`` or ``"local:10"``."""
        return f"{_LOCAL if self.local else ''}{self.limit}"
