"""Pure parsers for the unit-bearing strings used across config files.

Exports:
    parse_duration("90m") -> 5400.0 seconds   (humantime-style, as KumoMTA accepts)
    parse_size("20MB")    -> 20_000_000 bytes
    parse_memory_limit("90%") -> MemoryLimit(percent=90.0); ("2GB") -> MemoryLimit(bytes=...)
    parse_hostport("0.0.0.0:2525") -> ("0.0.0.0", 2525)
    parse_url_prefix("http://10.0.0.2:8000/") -> "http://10.0.0.2:8000"

Each raises ``ValueError`` with a message that says what was expected; callers
(config loaders) add the file/table/key context.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "parse_url_prefix",
    "parse_duration",
    "parse_size",
    "parse_hostport",
    "format_duration",
    "MemoryLimit",
    "parse_memory_limit",
]

_DURATION_UNITS: dict[str, float] = {
    "ms": 0.001,
    "msec": 0.001,
    "millis": 0.001,
    "millisecond": 0.001,
    "milliseconds": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
    "w": 604800.0,
    "week": 604800.0,
    "weeks": 604800.0,
}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*")


def parse_duration(value: str | int | float) -> float:
    """Parse a duration into seconds.

    value: a number of seconds, or a string of one or more ``<number><unit>``
        parts such as ``"30s"``, ``"1h 30m"``, ``"2 hours"``, ``"200ms"``.
    Returns the total as a float number of seconds (never negative).
    Raises ValueError for an empty string, an unknown unit or a negative number.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '30s', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return float(value)
    text = str(value).strip()
    if not text:
        raise ValueError("expected a duration such as '30s', got an empty string")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)  # a bare number is seconds (environment values are strings)
    total = 0.0
    pos = 0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m:
            raise ValueError(f"expected a duration such as '30s' or '2 hours', got {value!r}")
        unit = m.group(2).lower()
        if unit not in _DURATION_UNITS:
            raise ValueError(f"unknown duration unit {m.group(2)!r} in {value!r}")
        total += float(m.group(1)) * _DURATION_UNITS[unit]
        pos = m.end()
    return total


def format_duration(seconds: float) -> str:
    """Render seconds compactly for humans and log lines (``90`` -> ``"1m30s"``)."""
    if round(seconds * 1000) < 1000:
        return f"{round(seconds * 1000)}ms"
    out, rest = [], int(round(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out) or "0s"


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_SIZE = re.compile(r"^\s*(\d+(?:[_,]\d+)*(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: str | int) -> int:
    """Parse a byte size: an integer, or ``"20MB"``, ``"512KiB"``, ``"1_000_000"``.

    Returns whole bytes. Raises ValueError for a negative or unparseable value.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as '20MB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    m = _SIZE.match(str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as '20MB' or '512KiB', got {value!r}")
    number = float(m.group(1).replace("_", "").replace(",", ""))
    return int(number * _SIZE_UNITS[m.group(2).lower()])


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryLimit:
    """A memory threshold: absolute ``bytes``, or ``percent`` of the memory limit; both
    None means off."""

    bytes: int | None = None
    percent: float | None = None


def parse_memory_limit(value: str | int) -> MemoryLimit:
    """Parse ``"90%"`` (of the cgroup's ``memory.max``), a size (``"2GB"``), or ``0`` (off).

    Raises ValueError for anything else, or a percentage outside (0, 100].
    """
    text = str(value).strip()
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            raise ValueError(f"expected a percentage such as '90%', got {value!r}") from None
        if not 0 < percent <= 100:
            raise ValueError(f"a percentage must be above 0 and at most 100, got {value!r}")
        return MemoryLimit(percent=percent)
    try:
        size = parse_size(text)
    except ValueError:
        raise ValueError(
            f"expected a size such as '2GB' or a percentage such as '90%', got {value!r}"
        ) from None
    return MemoryLimit(bytes=size) if size else MemoryLimit()


def parse_hostport(value: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Parse ``host:port``, ``[v6]:port`` or (with a default port) a bare host.

    Returns (host, port). Raises ValueError when the port is missing or not 1-65535.
    """
    text = str(value).strip()
    host, port_text = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in address {value!r}")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest.startswith(":"):
            port_text = rest[1:]
        elif rest:
            raise ValueError(f"unexpected {rest!r} after ']' in address {value!r}")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"expected host:port, got {value!r}")
        return host, default_port
    # Port 0 is allowed: listeners then bind a free port and log the one they got.
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"port must be 0-65535 in {value!r}")
    if not host:
        raise ValueError(f"missing host in {value!r}")
    return host, int(port_text)


def parse_url_prefix(value: str) -> str:
    """An ``http(s)://host[:port]`` URL prefix (another node's HTTP listener), without a
    trailing slash; ValueError for anything else (a path, query, fragment, bad port)."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL prefix, got {value!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"must have no path, query or fragment, got {value!r}")
    try:
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as exc:
        raise ValueError(f"bad port in {value!r}: {exc}") from None
    return f"{parts.scheme}://{parts.netloc}"
