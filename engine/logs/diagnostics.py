"""Diagnostic logging: one JSON object per line on stderr.

Exports:
    configure(level)        install the JSON formatter on the root logger
    bind(**fields)          add fields to every line logged in this task (contextvars)
    JsonFormatter

Each line has ``ts``, ``level``, ``logger``, ``event`` (the message, a stable
name such as ``"listening"``) plus any ``extra=`` fields and the bound context.
Never pass credentials as fields.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

__all__ = ["configure", "bind", "JsonFormatter"]

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "nimbus_log_ctx", default=None
)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def bind(**fields: Any) -> None:
    """Attach fields to every log line emitted from the current context (task)."""
    _context.set({**(_context.get() or {}), **fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update(_context.get() or {})
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure(level: str = "info") -> None:
    """Send all logging to stderr as JSON lines at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs every session at INFO and a traceback for each failed client TLS
    # handshake; our own reception logs say what matters.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.Formatter.converter = time.gmtime
