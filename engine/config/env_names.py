"""NIMBUS_* environment names: which ones something reads, and the unknown ones.

Exports:
    CLIENT_ENV_NAMES                    names read outside the settings tree
    known_env_names() -> frozenset      every name something reads
    unknown_env_names(env) -> [(name, closest known name or None)]    (pure)
    describe_unknown_env(unknown) -> [str]   one human line per unknown name

A mistyped name (``NIMBUS_SMTP_LISTN``) would otherwise be ignored without a word: the
node reports them in one warning at startup and ``nimbus validate`` prints them.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping

from engine.config.settings import _ENV_ALIASES, Settings, _sections

__all__ = ["CLIENT_ENV_NAMES", "known_env_names", "unknown_env_names", "describe_unknown_env"]

CLIENT_ENV_NAMES = frozenset(
    {
        "NIMBUS_CONFIG",  # the settings file itself
        "NIMBUS_ENDPOINT",  # admin verbs (engine/admin/cli.py)
        "NIMBUS_ADMIN_USER",
        "NIMBUS_ADMIN_PASSWORD",
        "NIMBUS_USER",  # the chart's NOTES.txt inject example
        "NIMBUS_PASSWORD",
    }
)
"""NIMBUS_* names read outside the settings tree, so never reported as unknown."""


def known_env_names() -> frozenset[str]:
    """Every NIMBUS_* environment name something reads: one per setting, the aliases,
    and CLIENT_ENV_NAMES."""
    names = set(CLIENT_ENV_NAMES) | set(_ENV_ALIASES)
    sections = _sections()
    for f in dataclasses.fields(Settings):
        if f.name not in sections:
            names.add(f"NIMBUS_{f.name.upper()}")
    for name, cls in sections.items():
        names.update(f"NIMBUS_{name.upper()}_{f.name.upper()}" for f in dataclasses.fields(cls))
    return frozenset(names)


def unknown_env_names(env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """NIMBUS_* names in ``env`` that nothing reads, each with the closest known name
    (difflib) or None: a typo such as ``NIMBUS_SMTP_LISTN`` would otherwise be ignored."""
    known = known_env_names()
    out = []
    for name in sorted(env):
        if name.startswith("NIMBUS_") and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
            out.append((name, close[0] if close else None))
    return out


def describe_unknown_env(unknown: list[tuple[str, str | None]]) -> list[str]:
    """One human line per unknown name: ``NIMBUS_X: unknown (did you mean NIMBUS_Y?)``."""
    return [
        f"environment {name}: unknown setting, ignored"
        + (f" (did you mean {close}?)" if close else "")
        for name, close in unknown
    ]
