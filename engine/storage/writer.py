"""The group-commit SQLite writer: one thread, one connection, every waiting request in one
transaction.

Exports:
    Writer                 start(conn) / await run(*ops, timeout=) / submit_nowait(*ops) /
                           await run_bare(op) / await close()
    Op                     one operation: a callable taking the connection, returning a result
    connect(path, *, synchronous) -> sqlite3.Connection
                           a WAL connection with the caller's durability (FULL / NORMAL)
    move_aside(path) -> Path
                           rename an unreadable database (and its -wal/-shm) out of the way

Used by the spool (``synchronous=FULL``: a 250 means the message survives an OS crash)
and the log-hook queue (``synchronous=NORMAL``: survives ``kill -9``, not an OS crash);
each opens its own connection, so each keeps its durability.

How the thread serves requests (pseudocode)::

    loop:
        batch = [next request]                 # blocks
        sleep(commit_window)                   # optional: let more requests arrive
        batch += every request waiting now
        BEGIN IMMEDIATE; run every op of every request; COMMIT   # one fsync for all
        if that raised anything: ROLLBACK, then each request alone in its own
            transaction, so only a failing request gets its exception
        resolve each request's future on its own loop (grouped: one wake-up per loop)
    close(): a stop marker; requests queued before it are committed first (drain),
             requests after it fail with WriterClosed
    run_bare(op): the requests queued before it are committed, then op runs alone with no
             transaction around it (VACUUM cannot run in one), then the ones after it

The thread never dies of a request: any ``Exception`` an op raises (``sqlite3.Error``,
a bug's ``TypeError``) is handed to that request's future, or to ``on_error`` for a
request nobody awaits (``submit_nowait``); a ``BaseException`` that is not an
``Exception`` (``SystemExit``, ``KeyboardInterrupt`` raised by an op) is handed on as
``WriterOpFailed`` wrapping it, since a future must not carry those into the loop. If the
thread dies anyway (a bug in this module), every request waiting and every later one
fails with ``WriterClosed`` instead of waiting forever; ``run(timeout=)`` bounds the wait
on a thread that is stuck (an op blocked in a slow fsync or a lock).

    Exception tree:
        Exception
         +-- RuntimeError
         |    +-- WriterClosed    run() before start(), after close(), or the thread died
         |    +-- WriterOpFailed  an op raised a BaseException that is not an Exception
         +-- TimeoutError
              +-- WriterTimeout   run(timeout=) expired; the request may still commit later
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "Writer",
    "Op",
    "WriterClosed",
    "WriterOpFailed",
    "WriterTimeout",
    "connect",
    "move_aside",
]

Op = Callable[[sqlite3.Connection], Any]

log = logging.getLogger("nimbus.storage")

# (ops, loop, future); loop and future are None for submit_nowait.
_Request = tuple[tuple[Op, ...], asyncio.AbstractEventLoop | None, asyncio.Future | None]
_Outcome = tuple[Any, BaseException | None]


class WriterClosed(RuntimeError):
    """The writer is not running (not started yet, closed, or its thread died)."""


class WriterOpFailed(RuntimeError):
    """An op raised a BaseException that is not an Exception (kept as ``__cause__``)."""


class WriterTimeout(TimeoutError):
    """``run(timeout=)`` expired before the commit; the request stays queued and may still
    be committed later (the caller must treat the outcome as unknown)."""


def connect(path: Path, *, synchronous: str) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN/COMMIT), WAL, ``synchronous`` as given.

    synchronous: ``"FULL"`` (a commit survives an OS crash) or ``"NORMAL"`` (survives the
        process dying; WAL in the page cache may be lost with the OS).
    Raises sqlite3.DatabaseError when the file is not a readable database.
    """
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"{path}: synchronous must be FULL or NORMAL, got {synchronous!r}")
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
    except sqlite3.DatabaseError:
        conn.close()
        raise
    return conn


def move_aside(path: Path) -> Path:
    """Rename ``path`` and its ``-wal``/``-shm`` to ``<name>.corrupt-<time>``; the new name."""
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            src.rename(Path(str(aside) + suffix))
    return aside


class Writer:
    """The one thread that writes a database, committing waiting requests together.

    name: the thread's name, also used in errors (``"spool"``, ``"log hooks"``).
    commit_window: seconds to wait after the first request of a batch for others to
        join it (0: commit at once; concurrent requests still share a commit).
    on_commit: called on the writer thread with the number of requests in each
        committed batch (metrics); its exceptions are given to ``on_error``.
    on_error: called on the writer thread with the exception of a request nobody
        awaits (``submit_nowait``); by default such errors are dropped.
    """

    def __init__(
        self,
        name: str,
        *,
        commit_window: float = 0.0,
        on_commit: Callable[[int], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self._commit_window = commit_window
        self._on_commit = on_commit
        self._on_error = on_error
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Set before the thread starts, cleared by the thread as it ends: a plain flag,
        # because Thread.is_alive() takes a lock and was ~4 % of a relayed message's CPU
        # (called on every save, update and remove).
        self._alive = False

    @property
    def running(self) -> bool:
        """Started, not closed, and the thread alive."""
        return self._thread is not None and self._alive

    def start(self, conn: sqlite3.Connection) -> None:
        """Serve requests on ``conn`` (the writer owns it from now on, and closes it)."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} writer is already running")
        self._thread = threading.Thread(
            target=self._serve, args=(conn,), name=f"nimbus-{self.name}-writer", daemon=True
        )
        self._alive = True
        self._thread.start()

    async def run(self, *ops: Op, timeout: float | None = None) -> list[Any]:
        """Run ``ops`` in order in the next transaction; their results, once committed.

        timeout: the longest to wait for the commit, in seconds (None: no bound; the
            caller bounds the wait itself).
        Raises whatever an op raised (the request was rolled back; others are not
        affected), WriterOpFailed for an op's non-Exception BaseException, WriterClosed
        when the writer is not running, WriterTimeout when ``timeout`` expired.
        """
        if not self.running:
            raise WriterClosed(f"{self.name} writer is not running")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self._requests.put((ops, loop, fut))
        if not self._alive:  # died since the check above
            self._fail_leftovers()
        if timeout is None:
            return await fut
        # A timer that fails the future, not an asyncio.timeout scope: the same outcome for
        # a fraction of the cost on every spool commit (no task lookup, no reschedule).
        timer = loop.call_later(timeout, _expire, fut, self.name, timeout)
        try:
            return await fut
        finally:
            timer.cancel()

    async def run_bare(self, op: Op) -> Any:
        """Run ``op`` alone, outside any transaction, between the requests queued before
        and after it (maintenance such as ``VACUUM``); its result. Every write waits
        while it runs. Raises what it raised, WriterClosed when not running."""
        if not self.running:
            raise WriterClosed(f"{self.name} writer is not running")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self._requests.put(((_Bare(op),), loop, fut))
        if not self._alive:
            self._fail_leftovers()
        return (await fut)[0]

    def submit_nowait(self, *ops: Op) -> None:
        """Run ``ops`` in the next transaction without waiting; errors go to ``on_error``
        (WriterClosed too: a caller that cannot wait cannot be raised at either)."""
        if not self.running:
            self._report(WriterClosed(f"{self.name} writer is not running"))
            return
        self._requests.put((ops, None, None))

    async def close(self, timeout: float | None = None) -> bool:
        """Commit every request queued so far, stop the thread, close the connection.

        timeout: the longest to wait for the thread (None: no bound). A writer stuck past
            it (a hung disk) is left to die with the process: a daemon thread, whose
            uncommitted requests were never acknowledged. Returns False then, after one
            ``writer_close_timed_out`` line.
        """
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        self._requests.put(None)
        await asyncio.to_thread(thread.join, timeout)
        if thread.is_alive():
            log.critical("writer_close_timed_out", extra={"writer": self.name, "timeout": timeout})
            return False
        self._fail_leftovers()
        return True

    # -- the writer thread ----------------------------------------------------

    def _serve(self, conn: sqlite3.Connection) -> None:
        try:
            stop = False
            while not stop:
                batch = self._next_batch()
                stop = None in batch
                work = [r for r in batch if r is not None]
                for segment in _segments(work):
                    try:
                        if _is_bare(segment[0]):
                            self._run_bare(conn, segment[0])
                        else:
                            self._commit(conn, segment)
                    except BaseException as exc:  # a bug here: fail the batch, keep serving
                        self._report(exc)
                        _fail(segment, WriterOpFailed(f"{self.name} writer failed: {exc!r}"))
        finally:
            self._alive = False
            conn.close()
            # Whatever ended the thread, nothing may wait on it any more.
            self._fail_leftovers()

    def _next_batch(self) -> list[_Request | None]:
        batch = [self._requests.get()]
        if self._commit_window and batch[0] is not None:
            time.sleep(self._commit_window)
        while True:
            try:
                batch.append(self._requests.get_nowait())
            except queue.Empty:
                return batch

    def _commit(self, conn: sqlite3.Connection, batch: list[_Request]) -> None:
        """One transaction for the batch; if it fails, each request alone (its own error)."""
        outcomes: list[_Outcome]
        try:
            outcomes = [(res, None) for res in _transaction(conn, [r[0] for r in batch])]
        except BaseException:  # isolate the failing request(s) below
            outcomes = [_alone(conn, ops) for ops, _, _ in batch]
        if self._on_commit is not None:
            try:
                self._on_commit(len(batch))
            except Exception as exc:  # a metrics hook must not stop the writer
                self._report(exc)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, _Outcome]]] = {}
        for (_, loop, fut), outcome in zip(batch, outcomes, strict=True):
            if loop is None or fut is None:
                if outcome[1] is not None:
                    self._report(outcome[1])
                continue
            by_loop.setdefault(loop, []).append((fut, outcome))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

    def _run_bare(self, conn: sqlite3.Connection, request: _Request) -> None:
        ops, loop, fut = request
        outcome = _alone_bare(conn, ops[0])
        if loop is not None and fut is not None:
            try:
                loop.call_soon_threadsafe(_resolve, [(fut, outcome)])
            except RuntimeError:
                pass

    def _report(self, exc: BaseException) -> None:
        if self._on_error is None:
            return
        try:
            self._on_error(exc)
        except Exception:  # an error reporter must not stop the writer
            pass

    def _fail_leftovers(self) -> None:
        """Requests queued after the stop marker: fail them instead of leaving them hanging."""
        closed = WriterClosed(f"{self.name} writer is closed")
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                _fail([request], closed)


class _Bare:
    """An op to run outside any transaction (``Writer.run_bare``)."""

    __slots__ = ("op",)

    def __init__(self, op: Op) -> None:
        self.op = op

    def __call__(self, conn: sqlite3.Connection) -> Any:
        return self.op(conn)


def _is_bare(request: _Request) -> bool:
    ops = request[0]
    return len(ops) == 1 and isinstance(ops[0], _Bare)


def _segments(work: list[_Request]) -> list[list[_Request]]:
    """The batch in order, cut around bare requests (each bare one a segment alone)."""
    out: list[list[_Request]] = []
    run: list[_Request] = []
    for request in work:
        if _is_bare(request):
            if run:
                out.append(run)
                run = []
            out.append([request])
        else:
            run.append(request)
    if run:
        out.append(run)
    return out


def _alone_bare(conn: sqlite3.Connection, op: Op) -> _Outcome:
    try:
        return [op(conn)], None
    except Exception as exc:
        return None, exc
    except BaseException as exc:
        return None, WriterOpFailed(f"{exc!r}")


def _transaction(conn: sqlite3.Connection, requests: list[tuple[Op, ...]]) -> list[list[Any]]:
    """Run every request's ops in one BEGIN IMMEDIATE ... COMMIT; rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        results = [[op(conn) for op in ops] for ops in requests]
        conn.execute("COMMIT")
        return results
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _alone(conn: sqlite3.Connection, ops: tuple[Op, ...]) -> _Outcome:
    try:
        return _transaction(conn, [ops])[0], None
    except Exception as exc:  # handed to the request's future
        return None, exc
    except BaseException as exc:  # SystemExit from an op must not end the thread or the loop
        failed = WriterOpFailed(f"an op raised {exc!r}")
        failed.__cause__ = exc
        return None, failed


def _fail(requests: list[_Request], exc: BaseException) -> None:
    """Fail every awaited request in ``requests`` with ``exc`` (on its own loop)."""
    for _, loop, fut in requests:
        if loop is None or fut is None:
            continue
        outcome: _Outcome = (None, exc)
        try:
            loop.call_soon_threadsafe(_resolve, [(fut, outcome)])
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


def _expire(fut: asyncio.Future, name: str, timeout: float) -> None:
    """``run(timeout=)``'s deadline: a late commit then finds the future done, and drops."""
    if not fut.done():
        fut.set_exception(WriterTimeout(f"{name} writer did not commit within {timeout}s"))


def _resolve(items: list[tuple[asyncio.Future, _Outcome]]) -> None:
    for fut, (result, err) in items:
        if fut.done():  # the awaiting task was cancelled
            continue
        if err is None:
            fut.set_result(result)
        else:
            fut.set_exception(err)
