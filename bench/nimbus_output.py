"""Reading what a nimbus trial printed and wrote: pure functions over its lines.

Exports:
    ready_smtp_port(lines)      the smtp_port of the diagnostics' ``ready`` line, if any
    scan_stderr(lines)          StderrScan: lines per level, the non-info ones, DKIM pool seen
    record_types(lines)         log records per ``type`` in its NDJSON mail log, bad lines
    parse_metrics(text)         Prometheus text: the sum of each sample family
    dkim_pool_started(lines)    did its diagnostics say the DKIM worker pool started?
    is_dkim_worker(cmdline)     is this child process a DKIM signing worker?

Diagnostic event names are matched after folding them to snake_case, so a renamed
``dkim worker started`` / ``dkim_workers_started`` matches either way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ready_smtp_port",
    "StderrScan",
    "scan_stderr",
    "record_types",
    "parse_metrics",
    "dkim_pool_started",
    "is_dkim_worker",
]

_DKIM_POOL_STARTED = re.compile(r"\bdkim_workers?_(pool_)?started\b")
_SAMPLE = re.compile(r"([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")


def _json(line: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def ready_smtp_port(lines: list[str]) -> int | None:
    """The ``smtp_port`` of the first ``ready`` diagnostic, or None before there is one."""
    for line in lines:
        obj = _json(line)
        if obj is not None and _snake(str(obj.get("event", ""))) == "ready":
            port = obj.get("smtp_port")
            return int(port) if isinstance(port, int) else -1
    return None


def dkim_pool_started(lines: list[str]) -> bool:
    """True if a diagnostic says the DKIM signing worker pool started (any spelling)."""
    for line in lines:
        obj = _json(line)
        text = str(obj.get("event", "")) if obj is not None else line
        if _DKIM_POOL_STARTED.search(_snake(text)):
            return True
    return False


def is_dkim_worker(cmdline: str) -> bool:
    """A ProcessPoolExecutor worker of nimbus (multiprocessing "spawn"), not its resource
    tracker: the only pool nimbus runs is the DKIM signing one."""
    return "multiprocessing.spawn" in cmdline and "resource_tracker" not in cmdline


@dataclass(frozen=True, slots=True, kw_only=True)
class StderrScan:
    levels: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # lines above info, and non-JSON ones
    dkim_pool_started: bool = False


def scan_stderr(lines: list[str]) -> StderrScan:
    """Count diagnostic lines per level; keep those that are not info/debug."""
    levels: dict[str, int] = {}
    problems: list[str] = []
    for line in lines:
        obj = _json(line)
        level = str(obj.get("level", "?")) if obj is not None else "non-json"
        levels[level] = levels.get(level, 0) + 1
        if level not in ("info", "debug"):
            problems.append(line.rstrip())
    return StderrScan(levels=levels, problems=problems, dkim_pool_started=dkim_pool_started(lines))


def record_types(lines: list[str]) -> tuple[dict[str, int], int]:
    """(records per ``type``, lines that were not JSON) of NDJSON mail-log lines."""
    types: dict[str, int] = {}
    bad = 0
    for line in lines:
        obj = _json(line)
        if obj is None:
            bad += 1
            continue
        t = str(obj.get("type", "?"))
        types[t] = types.get(t, 0) + 1
    return types, bad


def parse_metrics(text: str) -> dict[str, float]:
    """Sum of each sample family of Prometheus text (labels dropped; no _created, _bucket)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = _SAMPLE.match(line)
        if m and not m.group(1).endswith("_created") and "_bucket" not in m.group(1):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out
