"""The ``warmup`` table of a sources.toml source: its IP warm-up schedule.

Exports:
    parse_warmup(body, *, path, source) -> WarmupSchedule     ConfigError names file/table/key
    WARMUP_KEYS, PROVIDER_KEYS                                the keys each table accepts

Format (one table per warming source, inside sources.toml)::

    [source."ip-2".warmup]
    start = 2025-06-02               # day 1: a TOML date, or "2025-06-02"
    timezone = "America/New_York"    # IANA zone the days/hours are counted in (default UTC)
    window = "day"                   # the allowance is per local "day" (default) or "hour"
    volumes = [500, 1000, 2000, 5000]   # per window on day 1, 2, ...; then no limit
    # or, instead of volumes:  initial = 500   growth = 1.5   days = 20

    [source."ip-2".warmup.provider.google]   # a shaping.toml [provider."google"]
    volumes = [100, 200, 400]                # (or initial/growth/days) its own counter

Either ``volumes`` or ``initial`` + ``growth`` + ``days`` (never both); a source with
only provider tables limits only mail to those providers. Unknown keys are refused.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.config.settings import ConfigError
from engine.policy.helpers import table_name
from engine.policy.warmup import WarmupSchedule, WindowKind, grown_volumes

__all__ = ["parse_warmup", "WARMUP_KEYS", "PROVIDER_KEYS"]

_VOLUME_KEYS = ("volumes", "initial", "growth", "days")
PROVIDER_KEYS = frozenset(_VOLUME_KEYS)
WARMUP_KEYS = frozenset({"start", "timezone", "window", "provider", *_VOLUME_KEYS})
_MAX_DAYS = 3660  # ten years: a longer schedule is a typo


def _date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        raise ValueError(f"expected a date such as 2025-06-02 (no time of day), got {value!r}")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"expected a date such as 2025-06-02, got {value!r}")


def _zone(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected an IANA time zone such as 'Europe/Paris', got {value!r}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (IANA names, e.g. 'Europe/Paris')") from None
    return value


def _window(value: Any) -> WindowKind:
    try:
        return WindowKind(value)
    except ValueError:
        raise ValueError(f"expected 'day' or 'hour', got {value!r}") from None


def _int(value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"expected an integer >= {minimum}, got {value!r}")
    return value


def _volumes(body: Mapping[str, Any], where: str) -> tuple[int, ...] | None:
    """``volumes``, or ``initial``/``growth``/``days`` expanded; None when neither is given."""
    given = [k for k in _VOLUME_KEYS if k in body]
    if not given:
        return None
    if "volumes" in given and len(given) > 1:
        raise ConfigError(f"{where} {given[1]}: give either volumes or initial/growth/days")
    if "volumes" in body:
        value = body["volumes"]
        if not isinstance(value, list) or not value or len(value) > _MAX_DAYS:
            raise ConfigError(
                f"{where} volumes: expected a list of 1 to {_MAX_DAYS} integers, got {value!r}"
            )
        try:
            return tuple(_int(v, 0) for v in value)
        except ValueError as exc:
            raise ConfigError(f"{where} volumes: {exc}") from None
    for key in ("initial", "growth", "days"):
        if key not in body:
            raise ConfigError(f"{where} {key}: required with {', '.join(given)}")
    try:
        initial = _int(body["initial"], 1)
    except ValueError as exc:
        raise ConfigError(f"{where} initial: {exc}") from None
    days = body["days"]
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= _MAX_DAYS:
        raise ConfigError(f"{where} days: expected an integer from 1 to {_MAX_DAYS}, got {days!r}")
    growth = body["growth"]
    if (
        isinstance(growth, bool)
        or not isinstance(growth, int | float)
        or not math.isfinite(growth)
        or not 1 <= growth <= 100
    ):
        raise ConfigError(f"{where} growth: expected a number from 1 to 100, got {growth!r}")
    try:
        return grown_volumes(initial, float(growth), days)
    except OverflowError:
        raise ConfigError(f"{where} growth: volumes overflow over {days} days") from None


def _check_keys(body: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    for key in body:
        if key not in known:
            raise ConfigError(
                f"{where} {key}: unknown key (known keys: {', '.join(sorted(known))})"
            )


def parse_warmup(body: Any, *, path: str, source: str) -> WarmupSchedule:
    """The ``[source."<source>".warmup]`` table as a WarmupSchedule.

    body: the parsed table. path: the file, for errors. source: the source's name.
    Raises ConfigError ``"<path>: [source.<name>.warmup] <key>: <why>"``.
    """
    where = f"{path}: [{table_name('source', source, 'warmup')}]"
    if not isinstance(body, Mapping):
        raise ConfigError(f"{where}: expected a table, got {body!r}")
    _check_keys(body, WARMUP_KEYS, where)
    if "start" not in body:
        raise ConfigError(f"{where} start: required (day 1 of the schedule, e.g. 2025-06-02)")
    kw: dict[str, Any] = {}
    for key, convert in (("start", _date), ("timezone", _zone), ("window", _window)):
        if key in body:
            try:
                kw[key] = convert(body[key])
            except ValueError as exc:
                raise ConfigError(f"{where} {key}: {exc}") from None
    providers: dict[str, tuple[int, ...]] = {}
    tables = body.get("provider", {})
    if not isinstance(tables, Mapping):
        raise ConfigError(f"{where} provider: expected tables such as [...warmup.provider.google]")
    for name, table in tables.items():
        pwhere = f"{path}: [{table_name('source', source, 'warmup', 'provider', name)}]"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{pwhere}: expected a table, got {table!r}")
        _check_keys(table, PROVIDER_KEYS, pwhere)
        volumes = _volumes(table, pwhere)
        if volumes is None:
            raise ConfigError(f"{pwhere} volumes: required (or initial/growth/days)")
        providers[name] = volumes
    volumes = _volumes(body, where)
    if volumes is None and not providers:
        raise ConfigError(f"{where} volumes: required (or initial/growth/days, or provider tables)")
    return WarmupSchedule(
        source=source, volumes=volumes, providers=MappingProxyType(providers), **kw
    )
