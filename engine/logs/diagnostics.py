"""Diagnostic logging: one JSON object per line on stderr, rendered by structlog.

Exports:
    configure(level)        configure structlog and the stdlib root logger once
    configure_structlog()   just the structlog half (tests that keep their own handlers)
    formatter()             the JSON-lines logging.Formatter (structlog's ProcessorFormatter)
    get_logger(name)        a structlog logger rendering through the same pipeline
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
from typing import Any

import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars, reset_contextvars
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
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
