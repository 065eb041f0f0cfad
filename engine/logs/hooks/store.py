"""Log hook queue: the SQLite file of pending rows, written by one group-commit writer.

Exports:
    Store        opens (or re-creates a corrupt) database; ``await run(*ops)`` runs ops
                 in the next transaction on its writer thread, waiting at most
                 ``timeout``; ``await close()``
    STORE_ERRORS what ``run`` raises for trouble worth retrying (disk errors, a commit
                 that did not finish in time, a failing op); WriterClosed is not one
    Op           one operation: a callable taking the connection (engine.storage.writer)
    insert_rows, trim_rows, read_rows, delete_rows
                 the row operations (partially apply, pass to ``Store.run``)

Table ``pending(seq, hook, json)`` in WAL mode with ``synchronous=NORMAL``: a committed
row survives ``kill -9`` of the MTA, not an OS crash. The writer is the spool's
(``engine.storage.writer``): requests waiting together share one transaction; if it
fails, each is retried alone so only the failing one gets the error. Used only by
``engine.logs.hooks.publisher`` (which documents durability as a whole).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from engine.records import LogRecord
from engine.storage.writer import Op, Writer, WriterOpFailed, WriterTimeout, connect, move_aside

__all__ = ["Store", "STORE_ERRORS", "Op", "insert_rows", "trim_rows", "read_rows", "delete_rows"]

# A timed-out request may still commit later: a retried insert can then store a record twice
# and a retried delete re-send a batch (at-least-once, as after a crash), never lose one.
STORE_ERRORS = (sqlite3.Error, WriterTimeout, WriterOpFailed)

log = logging.getLogger("nimbus.log_hooks")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY, hook TEXT NOT NULL,
                                    json TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS pending_hook_seq ON pending (hook, seq);
"""


def _dump(payload: LogRecord | str, memo: dict[int, str]) -> str:
    if isinstance(payload, str):
        return payload
    text = memo.get(id(payload))
    if text is None:
        text = memo[id(payload)] = json.dumps(payload.to_json(), separators=(",", ":"))
    return text


def insert_rows(rows: list[tuple[str, LogRecord | str]], conn: sqlite3.Connection) -> int:
    memo: dict[int, str] = {}
    conn.executemany(
        "INSERT INTO pending (hook, json) VALUES (?, ?)",
        [(hook, _dump(p, memo)) for hook, p in rows],
    )
    return len(rows)


def trim_rows(hook: str, count: int, above: int, conn: sqlite3.Connection) -> int:
    return conn.execute(
        "DELETE FROM pending WHERE seq IN (SELECT seq FROM pending "
        "WHERE hook = ? AND seq > ? ORDER BY seq LIMIT ?)",
        (hook, above, count),
    ).rowcount


def read_rows(hook: str, limit: int, conn: sqlite3.Connection) -> list[tuple[int, str]]:
    return conn.execute(
        "SELECT seq, json FROM pending WHERE hook = ? ORDER BY seq LIMIT ?", (hook, limit)
    ).fetchall()


def delete_rows(hook: str, upto: int, conn: sqlite3.Connection) -> int:
    return conn.execute("DELETE FROM pending WHERE hook = ? AND seq <= ?", (hook, upto)).rowcount


class Store:
    """The SQLite file and the one writer thread that runs every statement on it."""

    def __init__(self, path: Path, *, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout  # the longest one request (or close) waits for its commit
        self._writer = Writer("loghooks")

    def open(self) -> dict[str, int]:
        """Open (or re-create a corrupt) database, start the thread; pending rows per hook."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._connect()
        except sqlite3.DatabaseError as exc:
            aside = move_aside(self.path)
            log.critical(
                "log_hook_database_moved_aside",
                extra={"path": str(self.path), "moved_to": str(aside), "error": str(exc)},
            )
            conn = self._connect()
        counts = dict(conn.execute("SELECT hook, count(*) FROM pending GROUP BY hook"))
        self._writer.start(conn)
        return counts

    def _connect(self) -> sqlite3.Connection:
        conn = connect(self.path, synchronous="NORMAL")  # survives kill -9, not an OS crash
        try:
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    async def run(self, *ops: Op) -> list[Any]:
        """Run ``ops`` in the next transaction (shared with other waiting requests).

        Raises what an op raised, WriterTimeout past ``timeout`` (the request may still
        commit), or WriterClosed when the database is not open.
        """
        return await self._writer.run(*ops, timeout=self.timeout)

    async def close(self) -> None:
        """Commit what is queued, stop the writer thread, close the database (waits at
        most ``timeout`` for a stuck writer)."""
        await self._writer.close(timeout=self.timeout)
