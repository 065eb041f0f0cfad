"""Diagnostic logging: one JSON object per line on stderr, rendered by structlog.

Exports:
    configure(level)        configure structlog and the stdlib root logger once
    configure_structlog()   just the structlog half (tests that keep their own handlers)
    formatter()             the JSON-lines logging.Formatter (structlog's ProcessorFormatter)
    get_logger(name)        a structlog logger rendering through the same pipeline
    parse_log_filter(spec)  ``"info,nimbus.ready=debug"`` -> LogFilter (pure; ValueError)
    set_log_filter(spec)    apply one at runtime (``POST /api/admin/set_diagnostic_log_filter/v1``)
    LogFilter               the parsed filter: default level, per-logger levels
    bound_contextvars / bind_contextvars / reset_contextvars
                            structlog.contextvars, used by reception to put the SMTP session
                            or HTTP request on every line logged while serving it

Each line has ``ts`` (Unix seconds), ``level``, ``logger``, ``event``, the fields passed
as ``extra=`` (stdlib) or keywords (structlog), the bound context (``smtp_session``,
``peer``, ``http_request``…) and ``exception`` when there is one. Engine call sites use
stdlib ``logging`` (``log.info("spool_recovered", extra={...})``); structlog's
``ProcessorFormatter`` renders those, third-party libraries' records (aiohttp, redis,
aiosmtpd) and structlog's own calls the same way.

Event names are part of the interface (tests, the bench, Helm probes, operators' alerts
match on them), so they follow one rule:

- ``event`` is a stable snake_case name of what happened (``spool_recovered``,
  ``redis_unavailable``, ``policy_reload_failed``), never prose and never formatted
  with values: values go in fields.
- A name, once released, is not reworded; a changed meaning gets a new name. Fields may
  be added to an event; removing or renaming a field is a change to announce.
- Third-party records keep their own text as ``event`` (we do not own those names).

Never log credentials: no passwords, AUTH data or Authorization headers, in events or
fields (aiosmtpd's ``sanitize`` does the same for its own lines).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars, reset_contextvars
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "LogFilter",
    "parse_log_filter",
    "set_log_filter",
    "configure",
    "configure_structlog",
    "formatter",
    "get_logger",
    "bind_contextvars",
    "reset_contextvars",
    "bound_contextvars",
]


def _timestamp(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """``ts``: the record's creation time (stdlib) or now (structlog), in Unix seconds."""
    record = event_dict.get("_record")
    event_dict["ts"] = round(record.created if record is not None else time.time(), 6)
    return event_dict


def _lower_level(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    event_dict["level"] = str(event_dict.get("level", "info")).lower()
    return event_dict


def _leading_keys(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """``ts``, ``level``, ``logger``, ``event`` first, so lines read alike at a glance."""
    head = {k: event_dict.pop(k) for k in ("ts", "level", "logger", "event") if k in event_dict}
    return {**head, **event_dict}


def _dumps(obj: Any, **kw: Any) -> str:
    kw.setdefault("default", str)
    return json.dumps(obj, separators=(",", ":"), **kw)


# Run for every line, whether it came from structlog or from a stdlib logging call.
_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    _lower_level,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.ExtraAdder(),
    _timestamp,
]


def formatter() -> logging.Formatter:
    """The JSON-lines formatter for any handler: stdlib and structlog records alike."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # exc_info -> "exception" text
            _leading_keys,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
    )


def configure(level: str = "info") -> None:
    """Send all logging (ours, structlog's, third-party) to stderr as JSON lines at ``level``."""
    configure_structlog()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs every session at INFO and a traceback for each failed client TLS
    # handshake; our own reception logs say what matters.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def configure_structlog() -> None:
    """Route structlog's loggers into stdlib logging, to be rendered by ``formatter()``."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name`` (``nimbus.<stage>``), rendered like the rest."""
    return structlog.stdlib.get_logger(name)


# KumoMTA's filter levels (tracing's EnvFilter) and Python's, to logging levels.
_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}
# Targets KumoMTA operators type, meaning "the server itself": our root logger "nimbus".
_ALIASES = {"kumod": "nimbus", "nimbus": "nimbus"}


@dataclass(frozen=True, slots=True, kw_only=True)
class LogFilter:
    """default: the root level (None: unchanged). targets: logger name -> level."""

    default: int | None = None
    targets: dict[str, int] = field(default_factory=dict)


def parse_log_filter(spec: str) -> LogFilter:
    """Parse an EnvFilter-like spec: comma-separated ``level`` or ``logger=level``.

    ``"debug"``, ``"info,nimbus.ready=debug"``, KumoMTA's ``"kumod=trace"`` (``kumod``
    is the ``nimbus`` logger, ``trace`` is debug). Raises ValueError naming the bad part.
    """
    default: int | None = None
    targets: dict[str, int] = {}
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty filter")
    for part in parts:
        name, sep, level = part.rpartition("=")
        level = level.strip().lower()
        if level not in _LEVELS:
            raise ValueError(f"unknown level {level!r} in {part!r} (use {', '.join(_LEVELS)})")
        if not sep:
            default = _LEVELS[level]
            continue
        name = name.strip()
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"bad logger name in {part!r}")
        targets[_ALIASES.get(name, name)] = _LEVELS[level]
    return LogFilter(default=default, targets=targets)


_applied: set[str] = set()  # loggers a previous filter set a level on


def set_log_filter(spec: str) -> LogFilter:
    """Apply ``spec`` to the running process's loggers now; returns what was applied.

    Loggers named by an earlier filter but not by this one go back to inheriting
    (NOTSET), so each call states the whole filter, as KumoMTA's does.
    """
    parsed = parse_log_filter(spec)
    for name in _applied - set(parsed.targets):
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, level in parsed.targets.items():
        logging.getLogger(name).setLevel(level)
    _applied.clear()
    _applied.update(parsed.targets)
    if parsed.default is not None:
        logging.getLogger().setLevel(parsed.default)
    return parsed
