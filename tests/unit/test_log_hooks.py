"""Log hooks: type filters, batching, backoff schedule, loop and policy skips, the cap."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time

import pytest

from engine.logs.hooks.publisher import LogHookPublisher
from engine.policy.events import Registry
from engine.policy.log_hook import LogHook, tsa_hooks
from engine.records import LogRecord, RecordType, Response

T = 1_700_000_000.25
WAIT = 5.0


def record(n: int, type: RecordType = RecordType.BOUNCE, **overrides) -> LogRecord:
    fields = dict(
        type=type,
        id=f"{n:032x}",
        sender="s@example.com",
        recipient="r@example.net",
        queue="example.net",
        site="mx.example.net",
        size=n,
        response=Response.parse(550, "5.1.1 no such user"),
        timestamp=T,
        created=T,
        nodeid="node-1",
        reception_protocol="ESMTP",
    )
    fields.update(overrides)
    return LogRecord(**fields)


class FakeTransport:
    """Records each POSTed batch as (hook name, [record sizes]); answers from ``statuses``."""

    def __init__(self, statuses: list[int | Exception] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.batches: list[tuple[str, list[int]]] = []
        self.attempts = 0
        self.changed = asyncio.Event()

    async def __call__(self, hook: LogHook, body: bytes) -> int:
        self.attempts += 1
        self.changed.set()
        answer = self.statuses.pop(0) if self.statuses else 200
        if isinstance(answer, Exception):
            raise answer
        if 200 <= answer < 300:
            self.batches.append((hook.name, [r["size"] for r in json.loads(body)]))
        return answer

    def sizes(self, hook: str = "h") -> list[int]:
        return [s for name, batch in self.batches if name == hook for s in batch]

    async def until(self, predicate) -> None:
        async with asyncio.timeout(WAIT):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


def hook(**overrides) -> LogHook:
    fields = dict(
        name="h",
        url="http://127.0.0.1:1/log",
        max_latency=0.0,
        backoff_base=0.001,
        backoff_max=0.002,
    )
    fields.update(overrides)
    return LogHook(**fields)


@contextlib.asynccontextmanager
async def running(pub: LogHookPublisher):
    task = asyncio.create_task(pub.run())
    try:
        yield pub
    finally:
        await pub.close()
        await task


def pending_rows(tmp_path, name: str = "h") -> list[int]:
    """Sizes of the records still stored for hook ``name``, in seq order."""
    with contextlib.closing(sqlite3.connect(tmp_path / "loghooks.db")) as db:
        return [
            json.loads(text)["size"]
            for (text,) in db.execute(
                "SELECT json FROM pending WHERE hook = ? ORDER BY seq", (name,)
            )
        ]


def publisher(tmp_path, hooks, transport, **kw) -> LogHookPublisher:
    return LogHookPublisher(hooks, db_path=tmp_path / "loghooks.db", transport=transport, **kw)


# -- pure functions ---------------------------------------------------------------------


def test_tsa_hooks_publish_failures_to_each_url():
    """tsa_hooks gives one hook per TSA URL, posting failure records to /publish_log_v1."""
    hooks = tsa_hooks(["http://tsa-0:8008/", "http://tsa-1:8008"])
    assert [(h.name, h.url) for h in hooks] == [
        ("tsa:http://tsa-0:8008/", "http://tsa-0:8008/publish_log_v1"),
        ("tsa:http://tsa-1:8008", "http://tsa-1:8008/publish_log_v1"),
    ]
    assert hooks[0].record_types == {"TransientFailure", "Bounce", "Expiration"}


@pytest.mark.parametrize(
    "bad",
    [
        {"name": ""},
        {"url": "ftp://x/"},
        {"batch_size": 0},
        {"max_pending": 0},
        {"timeout": 0},
        {"max_latency": -1},
        {"backoff_base": 0},
        {"backoff_base": 2, "backoff_max": 1},
    ],
)
def test_log_hook_rejects_bad_settings(bad):
    """LogHook refuses settings that cannot work."""
    with pytest.raises(ValueError):
        hook(**bad)


def test_publisher_rejects_duplicate_hook_names(tmp_path):
    """Two hooks with one name would share rows; the publisher refuses them."""
    with pytest.raises(ValueError):
        publisher(tmp_path, [hook(), hook()], None)


# -- intake ----------------------------------------------------------------------------


async def test_records_filtered_by_type(tmp_path):
    """A hook publishes only the record types it names."""
    tx = FakeTransport()
    async with running(publisher(tmp_path, [hook(record_types={"Bounce"})], tx)) as pub:
        pub.offer(record(1, RecordType.DELIVERY))
        pub.offer(record(2, RecordType.BOUNCE))
        pub.offer(record(3, RecordType.RECEPTION))
        await tx.until(lambda: tx.sizes() == [2])
    assert tx.sizes() == [2]
    assert pending_rows(tmp_path) == []


async def test_hook_without_types_takes_every_record(tmp_path):
    """record_types=None publishes every type."""
    tx = FakeTransport()
    async with running(publisher(tmp_path, [hook()], tx)) as pub:
        for n, t in enumerate(RecordType):
            pub.offer(record(n, t))
        await tx.until(lambda: len(tx.sizes()) == len(RecordType))
    assert tx.sizes() == list(range(len(RecordType)))


async def test_log_record_origin_is_skipped(tmp_path):
    """Records made by a log hook (reception_protocol LogRecord) are never published."""
    tx = FakeTransport()
    async with running(publisher(tmp_path, [hook()], tx)) as pub:
        pub.offer(record(1, reception_protocol="LogRecord"))
        pub.offer(record(2))
        await tx.until(lambda: tx.sizes() == [2])


async def test_attach_takes_records_from_the_log_writer(tmp_path):
    """attach registers an on_record callback that offers each record."""
    callbacks = []

    class Writer:
        def on_record(self, cb):
            callbacks.append(cb)

    pub = publisher(tmp_path, [hook()], FakeTransport())
    pub.attach(Writer())
    pub.attach(Writer())
    assert callbacks == [pub.offer]


def policy_with(handler) -> Registry:
    registry = Registry()
    registry.on("should_enqueue_log_record")(handler)
    return registry


async def test_should_enqueue_false_skips_for_that_hook(tmp_path):
    """should_enqueue_log_record returning False skips the record for the named hook only."""
    registry = policy_with(lambda msg, hook_name: False if hook_name == "b" else None)
    tx = FakeTransport()
    pub = publisher(tmp_path, [hook(name="a"), hook(name="b")], tx, policy=lambda: registry)
    async with running(pub):
        pub.offer(record(1))
        await tx.until(lambda: tx.sizes("a") == [1])
    assert tx.sizes("b") == [] and pending_rows(tmp_path, "b") == []
    assert pub.stats()["b"]["skipped_by_policy"] == 1


async def test_should_enqueue_sees_record_as_message(tmp_path):
    """The policy gets a message with the record in meta ``log_record`` and as JSON data."""
    seen = []

    async def handler(msg, hook_name):
        seen.append(
            (
                msg.id(),
                msg.sender(),
                msg.recipient(),
                msg.get_meta("log_record"),
                json.loads(msg.get_data()),
                hook_name,
            )
        )
        return True

    registry = policy_with(handler)
    tx = FakeTransport()
    async with running(publisher(tmp_path, [hook()], tx, policy=lambda: registry)) as pub:
        pub.offer(record(7))
        await tx.until(lambda: tx.sizes() == [7])
    expected = record(7).to_json()
    assert seen == [(f"{7:032x}", "s@example.com", "r@example.net", expected, expected, "h")]


async def test_policy_failure_keeps_the_record(tmp_path):
    """A should_enqueue_log_record handler that raises does not lose the record."""

    def broken(msg, hook_name):
        raise RuntimeError("policy bug")

    registry = policy_with(broken)
    tx = FakeTransport()
    async with running(publisher(tmp_path, [hook()], tx, policy=lambda: registry)) as pub:
        pub.offer(record(1))
        await tx.until(lambda: tx.sizes() == [1])


# -- batching --------------------------------------------------------------------------


async def test_full_batches_go_at_once(tmp_path):
    """Rows go out batch_size at a time; a partial batch waits for max_latency."""
    tx = FakeTransport()
    async with running(publisher(tmp_path, [hook(batch_size=2, max_latency=60)], tx)) as pub:
        for n in range(5):
            pub.offer(record(n))
        await tx.until(lambda: len(tx.batches) == 2)
        assert [b for _, b in tx.batches] == [[0, 1], [2, 3]]
    assert pending_rows(tmp_path) == [4]


async def test_partial_batch_goes_after_max_latency(tmp_path):
    """A partial batch is sent once its oldest record has waited max_latency."""
    tx = FakeTransport()
    async with running(publisher(tmp_path, [hook(batch_size=100, max_latency=0.2)], tx)) as pub:
        started = time.monotonic()
        for n in range(3):
            pub.offer(record(n))
        await tx.until(lambda: tx.batches)
        assert time.monotonic() - started >= 0.19
        assert [b for _, b in tx.batches] == [[0, 1, 2]]


# -- failures --------------------------------------------------------------------------


async def test_failed_batch_is_retried_until_accepted(tmp_path):
    """Network errors and non-2xx answers retry the same batch; nothing is lost."""
    tx = FakeTransport([ConnectionRefusedError("down"), 503, 404, 200])
    async with running(publisher(tmp_path, [hook(batch_size=10)], tx)) as pub:
        for n in range(3):
            pub.offer(record(n))
        await tx.until(lambda: tx.batches)
        assert pub.stats()["h"]["failed_attempts"] == 3
    assert [b for _, b in tx.batches] == [[0, 1, 2]]


async def test_failing_is_set_by_a_failed_post_and_cleared_by_a_2xx(tmp_path):
    """``failing`` (the nimbus_log_hook_failing gauge) is 1 from the first failed POST
    until a POST is accepted, then 0."""
    tx = FakeTransport([503, 503, 200])
    async with running(publisher(tmp_path, [hook(batch_size=10)], tx)) as pub:
        assert pub.stats()["h"]["failing"] == 0
        pub.offer(record(1))
        await tx.until(lambda: tx.attempts >= 1)
        assert pub.stats()["h"]["failing"] == 1
        await tx.until(lambda: tx.batches)
        assert pub.stats()["h"]["failing"] == 0


async def test_backlog_over_max_pending_drops_oldest(tmp_path, caplog):
    """Past max_pending rows for a hook the oldest are dropped, counted and logged."""
    tx = FakeTransport()
    pub = publisher(tmp_path, [hook(max_pending=3)], tx)
    await pub.open()
    for n in range(5):
        pub.offer(record(n))
    await pub.flush()
    assert (pub.stats()["h"]["pending"], pub.stats()["h"]["dropped"]) == (3, 2)
    assert "log_hook_backlog_dropped" in caplog.messages
    async with running(pub):
        await tx.until(lambda: len(tx.sizes()) == 3)
    assert tx.sizes() == [2, 3, 4]


async def test_records_offered_after_close_are_refused(tmp_path):
    """After close() no new records are taken; the count says how many were refused."""
    pub = publisher(tmp_path, [hook()], FakeTransport())
    await pub.close()
    pub.offer(record(1))
    assert pub.refused_after_close == 1


async def test_failure_streak_is_logged_once(tmp_path, caplog):
    """A streak of failures logs one warning, and the recovery one info line."""
    caplog.set_level(logging.INFO, logger="nimbus.log_hooks")
    tx = FakeTransport([503, 503, 503, 200])
    async with running(publisher(tmp_path, [hook()], tx)) as pub:
        pub.offer(record(1))
        await tx.until(lambda: tx.batches)
    ours = [r for r in caplog.records if r.name == "nimbus.log_hooks"]
    assert [(r.levelno, r.getMessage()) for r in ours] == [
        (logging.WARNING, "log_hook_delivery_failed"),
        (logging.INFO, "log_hook_delivery_recovered"),
    ]


async def test_close_lets_a_post_under_way_finish(tmp_path):
    """close() waits for a POST in flight, so an accepted batch is not kept to resend."""
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(hook: LogHook, body: bytes) -> int:
        started.set()
        await release.wait()
        return 200

    pub = publisher(tmp_path, [hook()], slow)
    task = asyncio.create_task(pub.run())
    pub.offer(record(1))
    async with asyncio.timeout(WAIT):
        await started.wait()
    closing = asyncio.create_task(pub.close())
    await asyncio.sleep(0)  # let close() begin before the answer comes
    release.set()
    await closing
    await task
    assert pending_rows(tmp_path) == []
    assert pub.stats()["h"]["sent"] == 1


async def test_close_does_not_wait_for_backoff(tmp_path):
    """close() during a long backoff returns at once; the batch stays stored."""
    tx = FakeTransport([503] * 100)
    pub = publisher(tmp_path, [hook(backoff_base=30, backoff_max=60)], tx)
    task = asyncio.create_task(pub.run())
    pub.offer(record(1))
    await tx.until(lambda: tx.attempts == 1)
    async with asyncio.timeout(2):
        await pub.close()
        await task
    assert pending_rows(tmp_path) == [1]


async def test_close_commits_records_when_never_run(tmp_path):
    """Records offered before run() started are committed by close()."""
    pub = publisher(tmp_path, [hook()], FakeTransport())
    pub.offer(record(1))
    pub.offer(record(2))
    await pub.close()
    assert pending_rows(tmp_path) == [1, 2]


class _Blocker:
    """A store op that holds the writer thread (a hung disk) until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: sqlite3.Connection) -> None:
        self.started.set()
        self.release.wait(WAIT)


async def test_a_stuck_store_delays_records_but_stops_nothing(tmp_path, caplog):
    """With the writer stuck, storing a record and deleting a sent batch each give up after
    the store timeout, are logged and retried; once the disk answers again every record is
    delivered and the sender still runs (before, both waits were unbounded, and a timeout
    would have ended the sender task)."""
    blocker = _Blocker()
    pub: LogHookPublisher

    class StallAfterPost(FakeTransport):
        async def __call__(self, hook: LogHook, body: bytes) -> int:
            status = await super().__call__(hook, body)
            if self.attempts == 1:  # the batch is out: now the disk hangs before the delete
                held.append(asyncio.create_task(pub._store._writer.run(blocker)))
                assert await asyncio.to_thread(blocker.started.wait, WAIT)
            return status

    held: list[asyncio.Task] = []
    tx = StallAfterPost()
    pub = publisher(tmp_path, [hook()], tx, store_timeout=0.2)
    async with running(pub):
        pub.offer(record(1))
        await tx.until(lambda: tx.attempts == 1)
        async with asyncio.timeout(WAIT):  # the delete timed out and was logged, not fatal
            while "log_hook_database_read_failed" not in caplog.messages:
                await asyncio.sleep(0.05)
        pub.offer(record(2))
        async with asyncio.timeout(WAIT):  # storing record 2 is stuck behind it as well
            while "log_hook_database_write_failed" not in caplog.messages:
                await asyncio.sleep(0.05)
        blocker.release.set()
        await tx.until(lambda: 2 in tx.sizes())
        await asyncio.gather(*held)
    assert set(tx.sizes()) == {1, 2}  # at least once each (a late commit may repeat one)
