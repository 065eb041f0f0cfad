"""Where the suppression list lives: the interface, and the node-local store.

Exports:
    SuppressionStore   the interface: open, get(recipient), add(entries), remove(recipient,
                       tenant), entries(), close; ``shared`` (other nodes see the same list)
    MemoryStore        a list in memory only (tests; the base of LocalStore)
    LocalStore         ``<spool dir>/suppression.db``, held in memory (lookups never wait)
    StoreUnavailable   the store cannot answer now (Redis down or slow)

LocalStore: one table ``suppression(recipient, tenant, json)`` in WAL mode with
``synchronous=NORMAL`` (an entry survives ``kill -9``; an OS crash may lose the last
ones, which the next bounce makes again), written by the spool's group-commit writer
class (``engine.storage.writer``) on its own connection. Every entry is also kept in a
dict, loaded at open: lookups are a dict read on the loop (about 100 bytes per entry).
Expired entries are skipped by lookups and deleted at open.

    Exception tree:
        Exception
         +-- StoreUnavailable
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from engine.storage.writer import Writer, WriterClosed, WriterTimeout, connect, move_aside
from engine.suppression.entries import Suppression, from_json, to_json

__all__ = ["SuppressionStore", "MemoryStore", "LocalStore", "StoreUnavailable"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS suppression (recipient TEXT NOT NULL, tenant TEXT NOT NULL,
                                        json TEXT NOT NULL, PRIMARY KEY (recipient, tenant));
"""


class StoreUnavailable(Exception):
    """The store cannot answer now (a Redis outage or timeout); the message says why."""


class SuppressionStore:
    """The interface both stores implement (every method may raise StoreUnavailable)."""

    shared = False
    """True when other nodes read and write the same list (Redis)."""

    async def open(self) -> None:
        """Prepare the store (load the local list)."""

    async def get(self, recipient: str) -> tuple[Suppression, ...]:
        """Every entry of the (normalized) recipient, any tenant, expired ones included."""
        raise NotImplementedError

    async def add(self, entries: list[Suppression]) -> None:
        """Add or replace entries (one per recipient and tenant)."""
        raise NotImplementedError

    async def remove(self, recipient: str, tenant: str) -> bool:
        """Remove one entry; False when there was none."""
        raise NotImplementedError

    async def entries(self) -> list[Suppression]:
        """Every entry that has not expired."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release the store."""


class MemoryStore(SuppressionStore):
    """Entries in a dict: recipient -> tenant -> entry. clock: epoch seconds."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._by_recipient: dict[str, dict[str, Suppression]] = {}

    def lookup(self, recipient: str) -> tuple[Suppression, ...]:
        """``get`` without awaiting."""
        found = self._by_recipient.get(recipient)
        return tuple(found.values()) if found else ()

    async def get(self, recipient: str) -> tuple[Suppression, ...]:
        return self.lookup(recipient)

    def _put(self, entries: list[Suppression]) -> None:
        for entry in entries:
            self._by_recipient.setdefault(entry.recipient, {})[entry.tenant] = entry

    def _pop(self, recipient: str, tenant: str) -> bool:
        found = self._by_recipient.get(recipient, {})
        entry = found.pop(tenant, None)
        if not found:
            self._by_recipient.pop(recipient, None)
        return entry is not None and not entry.expired(self._clock())

    async def add(self, entries: list[Suppression]) -> None:
        self._put(entries)

    async def remove(self, recipient: str, tenant: str) -> bool:
        return self._pop(recipient, tenant)

    async def entries(self) -> list[Suppression]:
        now = self._clock()
        return [
            e for found in self._by_recipient.values() for e in found.values() if not e.expired(now)
        ]


class LocalStore(MemoryStore):
    """The list of one node: SQLite in the spool directory, mirrored in memory.

    path: the database file. clock: epoch seconds (expiry at open).
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock=clock)
        self.path = path
        self._writer = Writer("suppression")

    async def open(self) -> None:
        conn = await asyncio.to_thread(self._load)  # file I/O off the loop
        self._writer.start(conn)

    def _load(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._connect()
        except sqlite3.DatabaseError:
            move_aside(self.path)
            conn = self._connect()
        now = self._clock()
        expired = []
        for (text,) in conn.execute("SELECT json FROM suppression").fetchall():
            entry = from_json(json.loads(text))
            if entry.expired(now):
                expired.append((entry.recipient, entry.tenant))
            else:
                self._put([entry])
        conn.executemany("DELETE FROM suppression WHERE recipient = ? AND tenant = ?", expired)
        return conn

    def _connect(self) -> sqlite3.Connection:
        conn = connect(self.path, synchronous="NORMAL")
        try:
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    async def add(self, entries: list[Suppression]) -> None:
        self._put(entries)
        rows = [(e.recipient, e.tenant, json.dumps(to_json(e))) for e in entries]

        def upsert(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT OR REPLACE INTO suppression VALUES (?, ?, ?)", rows)

        await self._run(upsert)

    async def remove(self, recipient: str, tenant: str) -> bool:
        removed = self._pop(recipient, tenant)

        def delete(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM suppression WHERE recipient = ? AND tenant = ?", (recipient, tenant)
            )

        await self._run(delete)
        return removed

    async def _run(self, op: Callable[[sqlite3.Connection], None]) -> None:
        try:
            await self._writer.run(op, timeout=30.0)
        except (WriterClosed, WriterTimeout, sqlite3.Error) as exc:
            # Not open yet (starting) or closed, a stuck disk: the caller's 503.
            raise StoreUnavailable(f"{self.path}: {exc}") from None

    async def close(self) -> None:
        await self._writer.close(timeout=30.0)
