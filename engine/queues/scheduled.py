"""Scheduled queues: messages waiting for their due time, grouped by queue name.

Exports:
    Scheduler    insert / get / remove / run; counts per queue

One heap ordered by due time holds every waiting message; one task sleeps until
the earliest due time (woken early when an earlier message arrives) and hands
each due message to ``on_due`` (the router, which moves it to a ready queue).
A message's body is never held here, only its small ``Message`` record.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import Counter
from collections.abc import Callable

from engine.records import Message

__all__ = ["Scheduler"]


class Scheduler:
    """All scheduled queues of a node.

    on_due: called with each message whose due time has come.
    clock: wall clock (unix seconds), injectable for tests.
    """

    def __init__(
        self, on_due: Callable[[Message], None], *, clock: Callable[[], float] = time.time
    ) -> None:
        self._on_due = on_due
        self._clock = clock
        self._heap: list[tuple[float, int, str]] = []
        self._messages: dict[str, Message] = {}
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self.counts: Counter[str] = Counter()
        self._paused = False

    def __len__(self) -> int:
        return len(self._messages)

    def insert(self, msg: Message) -> None:
        """Schedule ``msg`` for its ``due`` time (now or past: at once)."""
        if msg.id in self._messages:
            self._drop_count(self._messages[msg.id].queue)
        self._messages[msg.id] = msg
        self.counts[msg.queue] += 1
        heapq.heappush(self._heap, (msg.due, next(self._seq), msg.id))
        if self._heap[0][2] == msg.id:
            self._wake.set()

    def get(self, id: str) -> Message | None:
        return self._messages.get(id)

    def remove(self, id: str) -> Message | None:
        """Take a message out (admin bounce); its heap entry is skipped lazily."""
        msg = self._messages.pop(id, None)
        if msg is not None:
            self._drop_count(msg.queue)
        return msg

    def messages(self) -> list[Message]:
        return list(self._messages.values())

    def pause(self) -> None:
        """Stop handing out due messages (shutdown: no new deliveries start)."""
        self._paused = True
        self._wake.set()

    def _drop_count(self, queue: str) -> None:
        self.counts[queue] -= 1
        if self.counts[queue] <= 0:
            del self.counts[queue]

    def _pop_due(self, now: float) -> list[Message]:
        due: list[Message] = []
        while self._heap and self._heap[0][0] <= now:
            when, _, id = heapq.heappop(self._heap)
            msg = self._messages.get(id)
            if msg is None or msg.due != when:
                continue  # removed, or rescheduled (a newer heap entry exists)
            del self._messages[id]
            self._drop_count(msg.queue)
            due.append(msg)
        return due

    async def run(self) -> None:
        """Hand out due messages until cancelled."""
        while True:
            if self._paused:
                await asyncio.Future()  # parked until cancelled at shutdown
            now = self._clock()
            for msg in self._pop_due(now):
                self._on_due(msg)
            self._wake.clear()
            timeout = None
            if self._heap:
                timeout = max(0.0, self._heap[0][0] - self._clock())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
