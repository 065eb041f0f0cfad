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
from engine.storage.writer import (
    Writer,
    WriterClosed,
    WriterOpFailed,
    WriterTimeout,
    connect,
)

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


def _raise(exc: BaseException, conn: sqlite3.Connection) -> None:
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


@pytest.mark.parametrize(
    "error",
    [SystemExit(3), KeyboardInterrupt(), GeneratorExit()],
    ids=["system-exit", "keyboard-interrupt", "generator-exit"],
)
async def test_base_exception_in_an_op_fails_that_request_and_the_thread_serves_on(tmp_path, error):
    """An op raising a BaseException that is not an Exception fails only its request
    (WriterOpFailed, the original as its cause); the next request commits."""
    path = tmp_path / "w.db"
    writer = Writer("test")
    writer.start(_db(path))
    try:
        with pytest.raises(WriterOpFailed) as info:
            await asyncio.wait_for(writer.run(partial(_insert, 1), partial(_raise, error)), WAIT)
        assert info.value.__cause__ is error
        assert await asyncio.wait_for(writer.run(partial(_insert, 2)), WAIT) == [2]
        assert writer.running
    finally:
        await writer.close()
    assert _values(path) == [2]


async def test_a_failure_inside_the_writer_fails_the_batch_not_the_thread(tmp_path, monkeypatch):
    """A bug in the commit step itself fails the requests of that batch (and reports it to
    on_error); the thread keeps serving the next ones."""
    errors: list[BaseException] = []
    writer = Writer("test", on_error=errors.append)
    writer.start(_db(tmp_path / "w.db"))
    real_commit = writer._commit
    calls = iter([RuntimeError("bug in commit")])

    def broken_once(conn: sqlite3.Connection, batch: list) -> None:
        failure = next(calls, None)
        if failure is not None:
            raise failure
        real_commit(conn, batch)

    monkeypatch.setattr(writer, "_commit", broken_once)
    try:
        with pytest.raises(WriterOpFailed, match="bug in commit"):
            await asyncio.wait_for(writer.run(partial(_insert, 1)), WAIT)
        assert await asyncio.wait_for(writer.run(partial(_insert, 2)), WAIT) == [2]
    finally:
        await writer.close()
    assert [str(e) for e in errors] == ["bug in commit"]


async def test_run_on_a_stuck_writer_ends_in_writer_timeout(tmp_path):
    """run(timeout=) on a writer blocked by an op ends in WriterTimeout within the bound;
    once the op returns, the writer serves again."""
    writer = Writer("test")
    writer.start(_db(tmp_path / "w.db"))
    blocker = _Blocker()
    try:
        held = asyncio.create_task(writer.run(blocker))
        assert await asyncio.to_thread(blocker.started.wait, WAIT)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(WriterTimeout, match="test writer did not commit within 0.2s"):
            await writer.run(partial(_insert, 1), timeout=0.2)
        assert 0.2 <= loop.time() - started < 0.2 + WAIT / 5
        blocker.release.set()
        assert await asyncio.wait_for(held, WAIT) == [None]
        assert await asyncio.wait_for(writer.run(partial(_insert, 2)), WAIT) == [2]
    finally:
        blocker.release.set()
        await writer.close()


async def test_an_op_raising_timeout_error_is_not_a_writer_timeout(tmp_path):
    """An op's own TimeoutError reaches the caller as itself, even with run(timeout=)."""
    writer = Writer("test")
    writer.start(_db(tmp_path / "w.db"))
    error = TimeoutError("the op's own")
    try:
        with pytest.raises(TimeoutError) as info:
            await writer.run(partial(_raise, error), timeout=WAIT)
        assert info.value is error
    finally:
        await writer.close()


async def test_requests_fail_with_writer_closed_when_the_thread_has_died(tmp_path):
    """A writer whose thread ended without close() refuses requests instead of hanging."""
    writer = Writer("test")
    writer.start(_db(tmp_path / "w.db"))
    writer._requests.put(None)  # the stop marker alone: the thread ends, close() not called
    thread = writer._thread
    assert thread is not None
    await asyncio.to_thread(thread.join, WAIT)
    assert not writer.running
    with pytest.raises(WriterClosed):
        await asyncio.wait_for(writer.run(partial(_insert, 1)), WAIT)
    await writer.close()


async def test_close_of_a_stuck_writer_gives_up_after_its_timeout(tmp_path, caplog):
    """close(timeout=) on a writer blocked by an op (a hung disk) returns False within the
    bound with one writer_close_timed_out line, instead of holding shutdown forever."""
    writer = Writer("test")
    writer.start(_db(tmp_path / "w.db"))
    blocker = _Blocker()
    held = asyncio.create_task(writer.run(blocker))
    try:
        assert await asyncio.to_thread(blocker.started.wait, WAIT)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await asyncio.wait_for(writer.close(timeout=0.2), WAIT) is False
        assert 0.2 <= loop.time() - started < 0.2 + WAIT / 5
        assert "writer_close_timed_out" in caplog.messages
    finally:
        blocker.release.set()
        assert await asyncio.wait_for(held, WAIT) == [None]  # it did commit, late


async def test_log_hook_store_bounds_every_wait(tmp_path):
    """The log-hook store's run() is bounded by its timeout (it was unbounded: a stuck
    writer held the publisher and the senders forever)."""
    store = Store(tmp_path / "loghooks.db", timeout=0.2)
    store.open()
    blocker = _Blocker()
    held = asyncio.create_task(store.run(blocker))
    try:
        assert await asyncio.to_thread(blocker.started.wait, WAIT)
        with pytest.raises(WriterTimeout):
            await asyncio.wait_for(store.run(lambda conn: None), WAIT)
    finally:
        blocker.release.set()
        with pytest.raises(WriterTimeout):  # the blocker itself outlived the bound
            await asyncio.wait_for(held, WAIT)
        await store.close()


async def test_a_bare_op_runs_outside_a_transaction_between_its_neighbours(tmp_path):
    """run_bare: requests queued before it are committed first, it runs with no
    transaction open (VACUUM needs that), then the ones after it; its error is its own."""
    path = tmp_path / "w.db"
    writer = Writer("test")
    writer.start(_db(path))
    seen: dict[str, object] = {}

    def bare(conn: sqlite3.Connection) -> str:
        seen["in_transaction"] = conn.in_transaction
        seen["values"] = [v for (v,) in conn.execute("SELECT v FROM t ORDER BY v")]
        conn.execute("VACUUM")
        return "done"

    blocker = _Blocker()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(writer.run(blocker))
            assert await asyncio.to_thread(blocker.started.wait, WAIT)
            before = tg.create_task(writer.run(partial(_insert, 1)))
            await asyncio.sleep(0)
            middle = tg.create_task(writer.run_bare(bare))
            await asyncio.sleep(0)
            after = tg.create_task(writer.run(partial(_insert, 2)))
            await asyncio.sleep(0)
            tg.create_task(asyncio.to_thread(blocker.release.set))
        with pytest.raises(sqlite3.OperationalError):
            await writer.run_bare(partial(_raise, sqlite3.OperationalError("boom")))
        assert await writer.run(partial(_insert, 3)) == [3]
    finally:
        await writer.close()
    assert (before.result(), middle.result(), after.result()) == ([1], "done", [2])
    assert seen == {"in_transaction": False, "values": [1]}
    assert _values(path) == [1, 2, 3]
