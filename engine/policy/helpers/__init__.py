"""KumoMTA-format TOML helpers used by policies.

KumoMTA's policy-extras data files (``assets/policy-extras/*.lua``) in Python, one
module per file format: ``queues`` (queues.toml), ``sources`` (sources.toml),
``bounce`` (bounce classification ``[rules]`` files), and the other helpers
beside them (``shaping``, ``dkim_data``, ``warmup``: the warm-up table of a source).

Exports (shared by the helpers):
    load_document(path) -> dict      parse a TOML (or ``.json``) file; ConfigError names the file
    table_name(*parts) -> str        ``("queue", "gmail.com")`` -> ``"queue.'gmail.com'"``
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from engine.config.settings import ConfigError, read_toml

__all__ = ["load_document", "table_name"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def load_document(path: str | Path) -> dict[str, Any]:
    """Parse ``path`` as JSON when it ends in ``.json``, else as TOML.

    Raises ConfigError ``"<path>: ..."`` when the file is unreadable or malformed,
    or when a JSON document is not an object.
    """
    text_path = str(path)
    if not text_path.endswith(".json"):
        return read_toml(path)
    try:
        with open(path, "rb") as fh:
            tree = json.load(fh)
    except OSError as exc:
        raise ConfigError(f"{text_path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
        raise ConfigError(f"{text_path}: invalid JSON: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{text_path}: expected a table at the top level")
    return tree


def table_name(*parts: str) -> str:
    """The TOML header for a nested table, quoting keys that are not bare keys."""
    return ".".join(
        p if _BARE_KEY.fullmatch(p) else f"'{p}'" if "'" not in p else json.dumps(p) for p in parts
    )
