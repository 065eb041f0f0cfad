"""Admin entries on disk: bounces and suspensions survive a node restart.

Exports:
    STATE_FILE                      ``admin-state.json``, in the spool directory
    dump_entries(entries, bounced)  the file's JSON object (pure)
    load_entries(raw, now)          entries still live at ``now`` from that object (pure);
                                    expired ones are dropped, unknown kinds refused
    read_state(path, now), write_state(path, data)   the file itself

The file is small (one object per live entry) and rewritten whole on every change
through a temporary file and ``os.replace``, so a crash leaves the old or the new state,
never half of one. Admin changes are rare operator actions: the write is synchronous
(a few hundred microseconds), which keeps a 200 meaning "it is on disk".
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from engine.admin.entries import BounceEntry, ReadyQSuspendEntry, SuspendEntry, is_live

__all__ = ["STATE_FILE", "dump_entries", "load_entries", "read_state", "write_state"]

STATE_FILE = "admin-state.json"
_KINDS: dict[str, type[BounceEntry] | type[SuspendEntry] | type[ReadyQSuspendEntry]] = {
    "bounce": BounceEntry,
    "suspend": SuspendEntry,
    "suspend_ready_q": ReadyQSuspendEntry,
}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}

AnyEntry = BounceEntry | SuspendEntry | ReadyQSuspendEntry


def dump_entries(entries: Iterable[AnyEntry], bounced: dict[str, dict[str, int]]) -> dict[str, Any]:
    """``{"version": 1, "entries": [{"kind", ...fields}], "bounced": {id: {queue: n}}}``."""
    out = []
    for entry in entries:
        item: dict[str, Any] = {"kind": _KIND_OF[type(entry)], **asdict(entry)}
        if "queue_names" in item:
            item["queue_names"] = list(item["queue_names"])
        out.append(item)
    return {"version": 1, "entries": out, "bounced": bounced}


def load_entries(
    raw: dict[str, Any], now: float
) -> tuple[list[AnyEntry], dict[str, dict[str, int]]]:
    """The live entries of a dumped state, in order, and the bounce counts of those."""
    if raw.get("version") != 1:
        raise ValueError(f"unknown admin state version {raw.get('version')!r}")
    entries: list[AnyEntry] = []
    for item in raw.get("entries", []):
        fields = dict(item)
        kind = fields.pop("kind", None)
        cls = _KINDS.get(kind)
        if cls is None:
            raise ValueError(f"unknown admin entry kind {kind!r}")
        if "queue_names" in fields:
            fields["queue_names"] = tuple(fields["queue_names"])
        entry = cls(**fields)
        if is_live(entry, now):
            entries.append(entry)
    live = {e.id for e in entries}
    bounced = {
        id: {str(q): int(n) for q, n in counts.items()}
        for id, counts in (raw.get("bounced") or {}).items()
        if id in live
    }
    return entries, bounced


def read_state(path: Path, now: float) -> tuple[list[AnyEntry], dict[str, dict[str, int]]]:
    """The live entries in ``path``; none when there is no file yet."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return [], {}
    return load_entries(raw, now)


def write_state(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
