"""Log hook queue: the SQLite file of pending rows and the one thread that runs its statements.

Exports:
    Store        opens (or re-creates a corrupt) database; ``await run(*ops)`` runs ops
                 in the next transaction on its writer thread; ``await close()``
    Op           one operation: a callable taking the connection
    insert_rows, trim_rows, read_rows, delete_rows
                 the row operations (partially apply, pass to ``Store.run``)

Table ``pending(seq, hook, json)`` in WAL mode with ``synchronous=NORMAL``: a committed
row survives ``kill -9`` of the MTA, not an OS crash. Requests waiting together share
one transaction; if it fails, each is retried alone so only the failing one gets the
error. Used only by ``engine.logs.hooks.publisher`` (which documents durability as a whole).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.records import LogRecord

__all__ = ["Store", "Op", "insert_rows", "trim_rows", "read_rows", "delete_rows"]

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


Op = Callable[[sqlite3.Connection], Any]


class Store:
    """The SQLite file and the one thread that runs every statement on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def open(self) -> dict[str, int]:
        """Open (or re-create a corrupt) database, start the thread; pending rows per hook."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._connect()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.critical(
                "log hook database unreadable; moved aside",
                extra={"path": str(self.path), "moved_to": str(aside), "error": str(exc)},
            )
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.rename(Path(str(aside) + suffix))
            conn = self._connect()
        counts = dict(conn.execute("SELECT hook, count(*) FROM pending GROUP BY hook"))
        self._thread = threading.Thread(
            target=self._loop, args=(conn,), name="nimbus-loghooks-db", daemon=True
        )
        self._thread.start()
        return counts

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # survives kill -9, not an OS crash
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    async def run(self, *ops: Op) -> list[Any]:
        """Run ``ops`` in the next transaction (shared with other waiting requests)."""
        if self._thread is None:
            raise RuntimeError("log hook database is not open")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._requests.put((ops, loop, fut))
        return await fut

    async def close(self) -> None:
        if self._thread is not None:
            self._requests.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def _loop(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                batch = [self._requests.get()]
                while True:
                    try:
                        batch.append(self._requests.get_nowait())
                    except queue.Empty:
                        break
                work = [b for b in batch if b is not None]
                if work:
                    self._commit(conn, work)
                if len(work) < len(batch):
                    return
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[tuple]) -> None:
        """One transaction for the batch; if it fails, each request alone (own error)."""
        outcomes: list[tuple[asyncio.AbstractEventLoop, asyncio.Future, Any, Exception | None]]
        try:
            outcomes = [
                (loop, fut, res, None)
                for (_, loop, fut), res in zip(
                    batch, self._transaction(conn, [ops for ops, _, _ in batch]), strict=False
                )
            ]
        except Exception:  # isolate the failing request below
            outcomes = []
            for ops, loop, fut in batch:
                try:
                    outcomes.append((loop, fut, self._transaction(conn, [ops])[0], None))
                except Exception as exc:  # handed to the awaiting task
                    outcomes.append((loop, fut, None, exc))
        for loop, fut, res, err in outcomes:
            try:
                loop.call_soon_threadsafe(_resolve, fut, res, err)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

    @staticmethod
    def _transaction(conn: sqlite3.Connection, requests: list[tuple[Op, ...]]) -> list[list]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            results = [[op(conn) for op in ops] for ops in requests]
            conn.execute("COMMIT")
            return results
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _resolve(fut: asyncio.Future, result: Any, err: BaseException | None) -> None:
    if fut.done():
        return
    if err is None:
        fut.set_result(result)
    else:
        fut.set_exception(err)
