"""The durable spool: message bodies and state on stable storage, with group commit.

Exports:
    Spool            save / update / remove / load_data / recover / check_health / compact /
                     contains / messages (the transfer at scale-in reads the whole spool);
                     count and oldest_created of the messages it holds (``storage.held``)
    SpoolFull        not enough room (disk below min_free_space, max_size, SQLITE_FULL)
    SpoolError       any other storage failure
    SpoolLocked      another process holds this spool directory
    SpoolDuplicate   a save named an id that is already spooled (a repeated transfer)
    SpoolTimeout     a commit did not finish within ``spool.write_timeout`` (raised by the
                     accept path, which bounds the wait; see engine/reception/accept.py)

Design (see ARCHITECTURE.md "Spool"): one SQLite database in WAL mode with
``synchronous=FULL`` per spool directory. A single writer thread
(``engine.storage.writer.Writer``) owns the write connection; every write request
(save, update, remove) goes into its queue and the thread commits *everything
waiting* in one transaction, so one fsync covers all concurrent receptions (group
commit). ``save`` returns only after that
commit, so the 250/200 reply is sent after the message is on stable storage.
Reads use per-thread connections (WAL readers never block the writer).

Rows hold the envelope as JSON plus ``due`` and ``attempts`` (KumoMTA doesn't
persist those), and the body last so a recovery scan never reads bodies.
A row whose envelope can't be decoded is moved to the ``quarantine`` table and
logged; a database that cannot be opened at all is renamed aside and logged.

    Exception tree:
        Exception
         +-- SpoolError
              +-- SpoolFull
              +-- SpoolLocked
              +-- SpoolTimeout
              +-- SpoolDuplicate
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from engine.config.settings import SpoolSettings
from engine.records import Message
from engine.storage.held import HeldMessages
from engine.storage.writer import Writer, WriterClosed, WriterTimeout, connect, move_aside

__all__ = [
    "Spool",
    "SpoolError",
    "SpoolFull",
    "SpoolLocked",
    "SpoolTimeout",
    "SpoolDuplicate",
    "Quarantined",
]

log = logging.getLogger("nimbus.spool")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    envelope TEXT NOT NULL,
    due REAL NOT NULL,
    attempts INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT,
    envelope TEXT,
    data BLOB,
    reason TEXT NOT NULL,
    quarantined_at REAL NOT NULL
);
"""


class SpoolError(Exception):
    """The spool could not complete a storage operation."""


class SpoolFull(SpoolError):
    """No room for new messages; already-spooled mail is untouched."""


class SpoolLocked(SpoolError):
    """Another process holds this spool directory's lock."""


class SpoolTimeout(SpoolError):
    """A commit did not finish in time; it may still finish (then the message is kept)."""


class SpoolDuplicate(SpoolError):
    """A message with this id is already spooled (nothing of the batch was stored)."""


@dataclass(frozen=True, slots=True)
class Quarantined:
    id: str
    reason: str


def _envelope(msg: Message) -> str:
    return json.dumps(
        {
            "sender": msg.sender,
            "recipient": msg.recipient,
            "queue": msg.queue,
            "meta": msg.meta,
            "created": msg.created,
            "size": msg.size,
        },
        separators=(",", ":"),
    )


def _message(id: str, envelope: str, due: float, attempts: int) -> Message:
    env = json.loads(envelope)
    if not isinstance(env, dict):
        raise ValueError("envelope is not a JSON object")
    meta = env.get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError("meta is not a JSON object")
    return Message(
        id=id,
        sender=str(env["sender"]),
        recipient=str(env["recipient"]),
        queue=str(env["queue"]),
        meta=meta,
        created=float(env["created"]),
        due=float(due),
        num_attempts=int(attempts),
        size=int(env.get("size", 0)),
    )


def _read_envelopes(conn: sqlite3.Connection) -> tuple[list[Message], list[tuple[str, str]]]:
    """Every row's envelope and schedule (no bodies): the messages, and (id, why) of the
    rows that do not decode."""
    messages: list[Message] = []
    bad: list[tuple[str, str]] = []
    for id, envelope, due, attempts in conn.execute(
        "SELECT id, envelope, due, attempts FROM messages"
    ):
        try:
            messages.append(_message(id, envelope, due, attempts))
        except (ValueError, KeyError, TypeError) as exc:
            bad.append((id, f"{type(exc).__name__}: {exc}"))
    return messages, bad


def _connect(path: Path) -> sqlite3.Connection:
    # FULL: a commit is on stable storage before the 250/200 goes out (RFC 5321 6.1).
    return connect(path, synchronous="FULL")


def _insert(msg: Message, data: bytes, conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO messages (id, envelope, due, attempts, data) VALUES (?, ?, ?, ?, ?)",
        (msg.id, _envelope(msg), msg.due, msg.num_attempts, data),
    )


def _update(msg: Message, conn: sqlite3.Connection) -> None:
    conn.execute(
        "UPDATE messages SET envelope = ?, due = ?, attempts = ? WHERE id = ?",
        (_envelope(msg), msg.due, msg.num_attempts, msg.id),
    )


def _delete(ids: list[str], conn: sqlite3.Connection) -> None:
    conn.executemany("DELETE FROM messages WHERE id = ?", [(id,) for id in ids])


class Spool:
    """One spool directory.

    settings: the ``[spool]`` settings (dir, max_size, min_free_space, commit_window).
    on_commit: called with the number of operations in each committed batch
        (metrics), or None.
    """

    def __init__(
        self, settings: SpoolSettings, *, on_commit: Callable[[int], None] | None = None
    ) -> None:
        self.settings = settings
        self.dir = Path(settings.dir)
        self.path = self.dir / "spool.db"
        self._on_commit = on_commit
        self._probe_in_batch = False  # writer thread only: a health probe rode this batch
        self._writer = Writer(
            "spool",
            commit_window=settings.commit_window,
            on_commit=self._committed,
            on_error=_log_state_update_error,
        )
        self._lock_fd: int | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._free_checked = 0.0
        self._free_ok = True
        self._held = HeldMessages()

    @property
    def count(self) -> int:
        """Messages held: saved or recovered, not yet removed."""
        return len(self._held)

    def oldest_created(self) -> float | None:
        """When the oldest message held was created (unix seconds); None when none is."""
        return self._held.oldest()

    # -- lifecycle -------------------------------------------------------------

    def _lock(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLocked(
                f"{self.dir}: spool is locked by another process; stop it or set spool.dir "
                "(NIMBUS_SPOOL_DIR) to a directory of this node's own"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _open_db(self) -> sqlite3.Connection:
        try:
            conn = _connect(self.path)
            conn.executescript(_SCHEMA)
            conn.execute("SELECT count(*) FROM messages").fetchone()
            return conn
        except sqlite3.DatabaseError as exc:
            aside = move_aside(self.path)
            log.critical(
                "spool_database_moved_aside",
                extra={"path": str(self.path), "moved_to": str(aside), "error": str(exc)},
            )
            conn = _connect(self.path)
            conn.executescript(_SCHEMA)
            return conn

    def _apply_max_size(self, conn: sqlite3.Connection) -> None:
        if self.settings.max_size:
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={max(16, self.settings.max_size // page)}")

    async def recover(self) -> tuple[list[Message], list[Quarantined]]:
        """Lock the directory, open the database, start the writer, load every message.

        Returns (messages, quarantined). Raises SpoolLocked if another process has it.
        """
        return await asyncio.to_thread(self._recover_sync)

    def _recover_sync(self) -> tuple[list[Message], list[Quarantined]]:
        self._lock()
        conn = self._open_db()
        messages, bad = _read_envelopes(conn)
        quarantined = [Quarantined(id, reason) for id, reason in bad]
        if bad:
            conn.execute("BEGIN IMMEDIATE")
            now = time.time()
            for id, reason in bad:
                conn.execute(
                    "INSERT INTO quarantine SELECT id, envelope, data, ?, ? "
                    "FROM messages WHERE id = ?",
                    (reason, now, id),
                )
                conn.execute("DELETE FROM messages WHERE id = ?", (id,))
            conn.execute("COMMIT")
        self._apply_max_size(conn)
        # Built here, off the loop, and swapped in whole: a scrape meanwhile sees the old one.
        self._held = HeldMessages((m.id, m.created) for m in messages)
        self._writer.start(conn)
        return messages, quarantined

    async def close(self) -> None:
        """Commit what is queued, stop the writer, close connections, release the lock.
        A writer stuck past ``spool.write_timeout`` (a hung disk) is abandoned, not awaited:
        what it had not committed was never acknowledged."""
        await self._writer.close(timeout=self.settings.write_timeout)
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- writes (group commit) -------------------------------------------------

    def _check_free_space(self) -> None:
        now = time.monotonic()
        if now - self._free_checked > 1.0:
            st = os.statvfs(self.dir)
            self._free_ok = st.f_bavail * st.f_frsize >= self.settings.min_free_space
            self._free_checked = now
        if not self._free_ok:
            raise SpoolFull(f"free disk space below {self.settings.min_free_space} bytes")

    async def save(self, items: list[tuple[Message, bytes]]) -> None:
        """Store new messages; returns once they are committed and fsynced.

        Not bounded here: the caller bounds the wait (accept.py, ``spool.write_timeout``)
        while this commit runs on, so a commit that finishes late is still scheduled.
        Raises SpoolFull when there is no room (nothing of this batch is stored),
        SpoolError when the write failed otherwise (any error of an op, such as a meta
        value JSON cannot encode) or the spool is not open.
        """
        self._check_free_space()
        if not self._writer.running:
            raise SpoolError("spool is not open")
        try:
            await self._writer.run(*(partial(_insert, m, data) for m, data in items))
        except sqlite3.Error as exc:
            raise _classify(exc) from exc
        except WriterClosed as exc:
            raise SpoolError(f"spool is not open: {exc}") from exc
        except Exception as exc:  # a bug's TypeError must reach the client as a 451, not a 500
            raise SpoolError(
                f"spool write failed: {type(exc).__name__}: {exc} (in {self.path})"
            ) from exc
        for msg, _ in items:
            self._held.add(msg.id, msg.created)

    def update_nowait(self, msg: Message) -> None:
        """Persist a message's due time, attempts and envelope in the next commit.

        Not awaited: losing it in a crash only means an earlier retry.
        """
        self._writer.submit_nowait(partial(_update, msg))

    def remove_nowait(self, ids: list[str]) -> None:
        """Forget messages that reached a final disposition, in the next commit.

        Not awaited: losing it in a crash means a duplicate delivery, never a loss.
        """
        self._writer.submit_nowait(partial(_delete, ids))
        self._held.discard(ids)

    async def flush(self) -> None:
        """Wait until every request queued so far is committed.

        Raises SpoolTimeout past ``spool.write_timeout``, SpoolError when not open.
        """
        if not self._writer.running:
            raise SpoolError("spool is not open")
        try:
            await self._writer.run(timeout=self.settings.write_timeout)
        except WriterTimeout as exc:
            raise SpoolTimeout(f"{exc} (spool.write_timeout)") from exc

    def _committed(self, requests: int) -> None:
        """Writer thread, after each batch: report it without the health probe (which
        writes nothing), so commit metrics count real work only."""
        if self._probe_in_batch:
            self._probe_in_batch = False
            requests -= 1
        if requests and self._on_commit is not None:
            self._on_commit(requests)

    def _probe(self, conn: sqlite3.Connection) -> None:
        self._probe_in_batch = True  # runs on the writer thread, just before _committed

    async def check_health(self, timeout: float) -> str | None:
        """Why the spool cannot take writes now, or None: its writer must be running and
        commit a transaction (that writes nothing) within ``timeout`` seconds, else it is a
        stuck or dead writer thread, or a lock nobody releases. Room is measured apart."""
        if not self._writer.running:
            return "spool is not open"
        try:
            async with asyncio.timeout(timeout):
                await self._writer.run(self._probe)
        except TimeoutError:
            return f"spool writer did not commit within {timeout:g}s"
        except sqlite3.Error as exc:
            return f"spool commit failed: {exc}"
        return None

    # -- reads -----------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _load_sync(self, id: str) -> bytes | None:
        row = self._reader().execute("SELECT data FROM messages WHERE id = ?", (id,)).fetchone()
        return None if row is None else bytes(row[0])

    async def load_data(self, id: str) -> bytes | None:
        """The message body, or None when the message is no longer spooled."""
        return await asyncio.to_thread(self._load_sync, id)

    async def compact(self) -> dict[str, float]:
        """Commit what is queued, then checkpoint the WAL into the database (truncating
        it) and VACUUM, on the writer thread outside any transaction: the file shrinks to
        what the messages need. Every spool write waits while it runs (about a second per
        few hundred MB here); meant for a quiet or drained node (``nimbus spool-compact``).
        Returns the bytes of database + WAL before and after, and the seconds taken."""
        await self.flush()
        before = self.size_bytes()
        started = time.monotonic()

        def vacuum(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

        try:
            await self._writer.run_bare(vacuum)
        except sqlite3.Error as exc:
            raise _classify(exc) from exc
        except WriterClosed as exc:
            raise SpoolError(f"spool is not open: {exc}") from exc
        return {
            "bytes_before": before,
            "bytes_after": self.size_bytes(),
            "seconds": round(time.monotonic() - started, 3),
        }

    def _contains_sync(self, id: str) -> bool:
        row = self._reader().execute("SELECT 1 FROM messages WHERE id = ?", (id,)).fetchone()
        return row is not None

    async def contains(self, id: str) -> bool:
        """Is a message with this id spooled (committed)?"""
        return await asyncio.to_thread(self._contains_sync, id)

    def _messages_sync(self) -> list[Message]:
        return _read_envelopes(self._reader())[0]  # bad rows: quarantined at the next start

    async def messages(self) -> list[Message]:
        """Every committed message's envelope and schedule, oldest first (bodies not
        read); call ``flush()`` first to see the updates and removals queued so far."""
        found = await asyncio.to_thread(self._messages_sync)
        found.sort(key=lambda m: m.created)
        return found

    def size_bytes(self) -> int:
        """Bytes used by the database and its WAL (for metrics)."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(str(self.path) + suffix).st_size
            except FileNotFoundError:
                pass
        return total


def _classify(exc: sqlite3.Error) -> SpoolError:
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc):
        return SpoolDuplicate(f"already spooled: {exc}")
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc):
        return SpoolFull(f"spool is full: {exc}")
    return SpoolError(f"spool write failed: {exc}")


def _log_state_update_error(exc: BaseException) -> None:
    """A not-awaited update/remove failed (writer thread): log it, the spool goes on."""
    log.error("spool_state_update_failed", extra={"error": f"{type(exc).__name__}: {exc}"})
