"""Spool shards: one spool per engine worker, and adopting the shards no worker owns.

Exports:
    shard_dir(spool_dir, index) -> Path              ``<spool>/shard-<index>``
    own_dir(spool_dir, index, workers) -> Path       the spool a worker (or the one process) owns
    adopted_dirs(spool_dir, index, workers) -> [Path]   the spools it must empty into its own
    adopt_into(own, other, settings, own_ids) -> [Message]   move one spool's messages over

Layout: one process (``node.workers = 1``) keeps today's ``<spool>/spool.db``; worker i of
N > 1 owns ``<spool>/shard-<i>``. A node restarted with a different N leaves no message
stranded: worker i also empties every ``shard-<j>`` with j >= N and j % N == i, worker 0
the single-process ``<spool>/spool.db``, and one process every shard. Messages move with
the spool's own durability: a batch is committed (fsynced) into the owner's spool before
it is deleted from the adopted one, so a crash in between leaves a copy in both; the next
start skips ids the owner already holds and deletes them from the adopted spool. An
adopted spool that ends empty is removed (its directory too, when nothing else is in it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import sqlite3
from pathlib import Path

from engine.config.settings import SpoolSettings
from engine.records import Message
from engine.storage.spool import Spool

__all__ = ["shard_dir", "own_dir", "adopted_dirs", "adopt_into"]

log = logging.getLogger("nimbus.spool")

_SHARD = re.compile(r"shard-(\d+)")
_BATCH = 256  # messages per commit while moving: bodies are read and held per batch
_SPOOL_FILES = ("spool.db", "spool.db-wal", "spool.db-shm", "lock")


def shard_dir(spool_dir: str | Path, index: int) -> Path:
    """The spool directory of worker ``index``."""
    return Path(spool_dir) / f"shard-{index}"


def own_dir(spool_dir: str | Path, index: int, workers: int) -> Path:
    """The spool a process owns: the spool directory itself for one process, else its shard."""
    return Path(spool_dir) if workers <= 1 else shard_dir(spool_dir, index)


def _shards(spool_dir: Path) -> list[int]:
    try:
        names = [p.name for p in spool_dir.iterdir() if p.is_dir()]
    except OSError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := _SHARD.fullmatch(n)))


def adopted_dirs(spool_dir: str | Path, index: int, workers: int) -> list[Path]:
    """Spools that exist on disk and that worker ``index`` of ``workers`` must adopt."""
    root = Path(spool_dir)
    present = _shards(root)
    if workers <= 1:
        return [shard_dir(root, j) for j in present]
    out = [shard_dir(root, j) for j in present if j >= workers and j % workers == index]
    if index == 0 and (root / "spool.db").exists():
        out.insert(0, root)
    return out


async def adopt_into(
    own: Spool, other: Path, settings: SpoolSettings, own_ids: set[str]
) -> list[Message]:
    """Move every message of the spool in ``other`` into ``own`` (open, recovered).

    settings: the node's spool settings (only ``dir`` differs for the adopted spool).
    own_ids: ids ``own`` already holds; a message among them was moved before a crash
        and is only deleted from ``other``. Updated with the ids moved.
    Returns the moved messages (to schedule). Raises SpoolLocked when a process still
    holds ``other``, SpoolError/SpoolFull when a commit fails (what is moved stays moved).
    """
    source = Spool(dataclasses.replace(settings, dir=str(other)))
    messages, quarantined = await source.recover()
    moved: list[Message] = []
    try:
        for start in range(0, len(messages), _BATCH):
            batch = messages[start : start + _BATCH]
            fresh = [m for m in batch if m.id not in own_ids]
            items = []
            for msg in fresh:
                data = await source.load_data(msg.id)
                if data is not None:
                    items.append((msg, data))
            if items:
                await own.save(items)  # committed and fsynced before the delete below
            own_ids.update(m.id for m, _ in items)
            moved.extend(m for m, _ in items)
            source.remove_nowait([m.id for m in batch])
            await source.flush()
    finally:
        await source.close()
    if not quarantined:
        _remove_if_empty(other)
    log.info(
        "spool_shard_adopted",
        extra={"from": str(other), "into": str(own.dir), "messages": len(moved)},
    )
    return moved


def _remove_if_empty(directory: Path) -> None:
    """Delete an emptied spool's files (and its directory when nothing else is left in
    it: a shard; never the spool root, which holds the shards). A quarantine or a
    log-hook queue keeps the directory."""
    db = directory / "spool.db"
    try:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            left = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            left += conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    except sqlite3.Error:
        return
    if left:
        return
    for name in _SPOOL_FILES:
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()  # only when empty
