"""The group-commit SQLite writer: isolation of failures, one commit per batch, drain on close."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from functools import partial
from pathlib import Path

import pytest

from engine.logs.hooks.store import Store
from engine.storage import spool
from engine.storage.writer import Writer, WriterClosed, connect

WAIT = 5.0  # seconds; a deadline for the writer thread, never a sleep


def _db(path: Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    conn = connect(path, synchronous=synchronous)
    conn.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER PRIMARY KEY)")
    return conn


def _insert(value: int, conn: sqlite3.Connection) -> int:
    conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
    return value


def _values(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [v for (v,) in conn.execute("SELECT v FROM t ORDER BY v")]


def _raise(exc: Exception, conn: sqlite3.Connection) -> None:
    raise exc


class _Blocker:
    """An op that holds the writer thread until released, so requests pile up behind it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: sqlite3.Connection) -> None:
        self.started.set()
        if not self.release.wait(WAIT):
            raise TimeoutError("blocker never released")


async def _pile_up(writer: Writer, requests: list[tuple]) -> list:
    """Run ``requests`` (tuples of ops) while the writer is blocked; their outcomes in order.

    Each task puts its request on its first step; the release task is created last, so
    it runs after every request is queued.
    """
    blocker = _Blocker()
    async with asyncio.TaskGroup() as tg:
        first = tg.create_task(writer.run(blocker))
        assert await asyncio.to_thread(blocker.started.wait, WAIT)
        tasks = [tg.create_task(_outcome(writer.run(*ops))) for ops in requests]
        tg.create_task(asyncio.to_thread(blocker.release.set))
    assert first.result() == [None]
    return [t.result() for t in tasks]


async def _outcome(awaitable) -> object:
    try:
        return await awaitable
    except Exception as exc:  # the test compares the exception itself
        return exc


@pytest.mark.parametrize(
    "error",
    [sqlite3.OperationalError("disk I/O error"), TypeError("a bug"), ValueError("bad row")],
    ids=["sqlite", "type", "value"],
)
async def test_failing_request_fails_alone_and_thread_keeps_serving(tmp_path, error):
    """A request raising anything gets that exception; the others in its batch commit."""
    path = tmp_path / "w.db"
    writer = Writer("test")
    writer.start(_db(path))
    try:
        outcomes = await _pile_up(
            writer,
            [
                (partial(_insert, 1),),
                (partial(_insert, 2), partial(_raise, error)),
                (partial(_insert, 3),),
            ],
        )
        assert outcomes[0] == [1] and outcomes[2] == [3]
        assert outcomes[1] is error
        assert await writer.run(partial(_insert, 4)) == [4]  # the thread is still serving
    finally:
        await writer.close()
    assert _values(path) == [1, 3, 4]  # the failing request's insert 2 was rolled back


async def test_group_commit_batches_waiting_requests_in_one_commit(tmp_path):
    """N requests waiting together are committed in one transaction (one COMMIT)."""
    n = 25
    path = tmp_path / "w.db"
    conn = _db(path)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    batches: list[int] = []
    writer = Writer("test", on_commit=batches.append)
    writer.start(conn)
    try:
        outcomes = await _pile_up(writer, [(partial(_insert, i),) for i in range(n)])
    finally:
        await writer.close()
    assert outcomes == [[i] for i in range(n)]
    assert batches == [1, n]  # the blocker alone, then all n together
    assert statements.count("COMMIT") == 2
    assert _values(path) == list(range(n))


async def test_close_drains_queued_requests(tmp_path):
    """close() commits every request queued before it, awaited or not."""
    path = tmp_path / "w.db"
    writer = Writer("test")
    writer.start(_db(path))
    for i in range(10):
        writer.submit_nowait(partial(_insert, i))
    await writer.close()
    assert _values(path) == list(range(10))


async def test_run_after_close_raises_writer_closed(tmp_path):
    """A closed writer refuses new requests instead of leaving them waiting forever."""
    writer = Writer("test")
    writer.start(_db(tmp_path / "w.db"))
    await writer.close()
    with pytest.raises(WriterClosed, match="test writer"):
        await writer.run(partial(_insert, 1))


async def test_unawaited_request_after_close_goes_to_on_error(tmp_path):
    """submit_nowait on a closed writer reports WriterClosed instead of raising."""
    errors: list[BaseException] = []
    writer = Writer("test", on_error=errors.append)
    writer.start(_db(tmp_path / "w.db"))
    await writer.close()
    writer.submit_nowait(partial(_insert, 1))
    assert [type(e) for e in errors] == [WriterClosed]


async def test_unawaited_request_error_goes_to_on_error(tmp_path):
    """A submit_nowait request that fails reports its exception to on_error."""
    errors: list[BaseException] = []
    writer = Writer("test", on_error=errors.append)
    writer.start(_db(tmp_path / "w.db"))
    writer.submit_nowait(partial(_insert, 1))
    writer.submit_nowait(partial(_insert, 1))  # duplicate primary key
    await writer.run()  # a flush: everything before it is committed
    await writer.close()
    assert [type(e) for e in errors] == [sqlite3.IntegrityError]


@pytest.mark.parametrize(
    ("open_connection", "level"),
    [
        (lambda path: spool._connect(path), 2),  # FULL: a 250 survives an OS crash
        (lambda path: Store(path)._connect(), 1),  # NORMAL: survives kill -9
    ],
    ids=["spool", "log-hooks"],
)
def test_each_user_keeps_its_durability(tmp_path, open_connection, level):
    """The spool writes with synchronous=FULL, the log-hook queue with NORMAL."""
    conn = open_connection(tmp_path / "x.db")
    try:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
