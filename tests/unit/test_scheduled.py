"""Scheduler: due-order hand-out under an injected clock, re-insert, remove, counts, pause."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from engine.queues.scheduled import Scheduler
from engine.records import Message

T = 1_000_000.0
WAIT = 5.0


def msg(id: str, due: float, queue: str = "example.com") -> Message:
    return Message(
        id=id, sender="s@x", recipient="r@example.com", queue=queue, created=T - 10, due=due
    )


class Harness:
    """A Scheduler with a settable clock, recording what it hands out."""

    def __init__(self) -> None:
        self.now = T
        self.delivered: list[Message] = []
        self.clock_calls = 0
        self._want = 0
        self._delivered_enough = asyncio.Event()
        self._polled_enough = asyncio.Event()
        self._poll_target = 0
        self.scheduler = Scheduler(self._on_due, clock=self._clock)

    def _clock(self) -> float:
        self.clock_calls += 1
        if self.clock_calls >= self._poll_target:
            self._polled_enough.set()
        return self.now

    def _on_due(self, m: Message) -> None:
        self.delivered.append(m)
        if len(self.delivered) >= self._want:
            self._delivered_enough.set()

    async def delivered_count(self, n: int) -> list[Message]:
        """Wait until ``n`` messages in all have been handed out."""
        self._want = n
        if len(self.delivered) >= n:
            return self.delivered
        self._delivered_enough.clear()
        async with asyncio.timeout(WAIT):
            await self._delivered_enough.wait()
        return self.delivered

    async def polls(self, n: int) -> None:
        """Wait until the scheduler has read the clock ``n`` more times."""
        self._poll_target = self.clock_calls + n
        self._polled_enough.clear()
        async with asyncio.timeout(WAIT):
            await self._polled_enough.wait()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    task = asyncio.create_task(h.scheduler.run())
    # Tests insert before the first pass runs (the task has not started yet).
    yield h
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_past_due_messages_handed_out_in_due_order(harness):
    """Messages already due are handed out earliest due first."""
    for id, due in [("c", T - 1), ("a", T - 3), ("b", T - 2)]:
        harness.scheduler.insert(msg(id, due))
    out = await harness.delivered_count(3)
    assert [m.id for m in out] == ["a", "b", "c"]


async def test_message_not_handed_out_before_due(harness):
    """A message due in the future stays put while the clock is before its due time."""
    harness.scheduler.insert(msg("later", T + 0.02))
    await harness.polls(6)  # several wake-ups past the real-time timeout
    assert harness.delivered == [] and harness.scheduler.get("later") is not None


async def test_message_handed_out_once_clock_reaches_due(harness):
    """A future message is handed out after the clock passes its due time."""
    harness.scheduler.insert(msg("later", T + 0.02))
    await harness.polls(2)
    harness.now = T + 0.02
    out = await harness.delivered_count(1)
    assert [m.id for m in out] == ["later"] and len(harness.scheduler) == 0


async def test_future_messages_follow_clock_in_due_order(harness):
    """As the clock advances, messages come out one by one in due order."""
    for id, due in [("2", T + 0.02), ("1", T + 0.01), ("3", T + 0.03)]:
        harness.scheduler.insert(msg(id, due))
    await harness.polls(2)
    harness.now = T + 0.015
    assert [m.id for m in await harness.delivered_count(1)] == ["1"]
    harness.now = T + 0.05
    assert [m.id for m in await harness.delivered_count(3)] == ["1", "2", "3"]


async def test_earlier_insert_wakes_scheduler(harness):
    """Inserting a due message while the scheduler waits on a far one hands it out promptly."""
    harness.scheduler.insert(msg("far", T + 3600))
    await harness.polls(2)
    harness.scheduler.insert(msg("now", T - 1))
    assert [m.id for m in await harness.delivered_count(1)] == ["now"]


async def test_reinsert_with_earlier_due_replaces_entry(harness):
    """Re-inserting a message with an earlier due hands it out once, with the new due."""
    harness.scheduler.insert(msg("m", T + 0.02))
    harness.scheduler.insert(msg("m", T - 1))
    await harness.delivered_count(1)
    harness.now = T + 1
    harness.scheduler.insert(msg("marker", T + 0.5))
    out = await harness.delivered_count(2)
    assert [(m.id, m.due) for m in out] == [("m", T - 1), ("marker", T + 0.5)]


async def test_reinsert_with_later_due_replaces_entry(harness):
    """Re-inserting a message with a later due keeps it until the new due."""
    harness.scheduler.insert(msg("m", T - 1))
    harness.scheduler.insert(msg("m", T + 0.02))
    await harness.polls(4)
    assert harness.delivered == []
    harness.now = T + 0.02
    out = await harness.delivered_count(1)
    assert [(m.id, m.due) for m in out] == [("m", T + 0.02)]


async def test_removed_message_not_handed_out(harness):
    """remove() returns the message and it is never handed out."""
    harness.scheduler.insert(msg("gone", T - 2))
    harness.scheduler.insert(msg("kept", T - 1))
    removed = harness.scheduler.remove("gone")
    out = await harness.delivered_count(1)
    assert removed.id == "gone" and [m.id for m in out] == ["kept"]


async def test_pause_stops_hand_out(harness):
    """After pause() due messages are no longer handed out."""
    harness.scheduler.pause()
    await asyncio.sleep(0)
    harness.scheduler.insert(msg("m", T - 1))
    for _ in range(10):  # an unpaused scheduler hands it out within a few loop turns
        await asyncio.sleep(0)
    assert harness.delivered == [] and len(harness.scheduler) == 1


async def test_paused_scheduler_reads_no_clock(harness):
    """A paused scheduler parks without polling the clock."""
    harness.scheduler.pause()
    for _ in range(5):
        await asyncio.sleep(0)
    calls = harness.clock_calls
    harness.scheduler.insert(msg("m", T - 1))
    for _ in range(5):
        await asyncio.sleep(0)
    assert harness.clock_calls == calls and harness.delivered == []


def test_counts_per_queue():
    """counts tracks waiting messages per queue through insert and remove."""
    s = Scheduler(lambda m: None, clock=lambda: T)
    s.insert(msg("1", T + 60, "a.example"))
    s.insert(msg("2", T + 60, "a.example"))
    s.insert(msg("3", T + 60, "b.example"))
    s.remove("3")
    s.insert(msg("1", T + 120, "a.example"))  # re-insert in the same queue
    assert (dict(s.counts), len(s)) == ({"a.example": 2}, 2)


def test_remove_unknown_returns_none():
    """remove() of an unknown id returns None and leaves counts alone."""
    s = Scheduler(lambda m: None, clock=lambda: T)
    s.insert(msg("1", T, "a"))
    assert s.remove("nope") is None and dict(s.counts) == {"a": 1}


def test_reinsert_into_other_queue_moves_count():
    """Re-inserting a message into another queue moves its count and leaves no zero entry."""
    s = Scheduler(lambda m: None, clock=lambda: T)
    s.insert(msg("1", T + 60, "a.example"))
    s.insert(msg("1", T + 60, "b.example"))
    assert dict(s.counts) == {"b.example": 1}


async def test_counts_drop_when_handed_out(harness):
    """Handed-out messages leave counts and the scheduler."""
    harness.scheduler.insert(msg("1", T - 1, "a"))
    harness.scheduler.insert(msg("2", T - 1, "b"))
    await harness.delivered_count(2)
    assert (dict(harness.scheduler.counts), len(harness.scheduler)) == ({}, 0)
