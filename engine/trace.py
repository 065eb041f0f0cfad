"""Live SMTP traces: what reception and delivery say and hear, for operators watching.

Exports:
    TraceHub        ``active`` (cheap check), ``publish(event)``, ``subscribe(want)``
    Subscription    one watcher's bounded queue (``get``), ``dropped``, ``close``
    SERVER_TRACES   inbound sessions (``reception/smtp_session.py``)
    CLIENT_TRACES   outbound sessions (``delivery/client.py``, ``delivery/commands.py``)
    CLIENT_CONTEXT  contextvar: the ready queue facts of the connection task running
                    (set by ``queues/ready.py``, read when a client event is published)
    trace_event(kind, session_id, **fields) -> dict

An event is a JSON object: ``{"when": unix seconds, "kind": "connected" | "read" |
"write" | "closed", "session_id", "data"?, "peer"?, ...}``; client events add the ready
queue, egress source and pool, MX host and, once a transaction starts, ``domain``,
``mail_from`` and ``rcpt_to``. The websocket routes (``admin/trace_ws.py``) stream
them. It sits in the lowest layer so that reception and delivery, which may not import
each other or ``logs``, both publish to it.

Cost when nobody watches: the hook sites test ``hub.active`` (one attribute read) and
build nothing else; ``tests/integration/test_admin_trace.py`` measures it. One hub per
process and direction: several nodes in one test process share them.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "TraceHub",
    "Subscription",
    "SERVER_TRACES",
    "CLIENT_TRACES",
    "CLIENT_CONTEXT",
    "trace_event",
]

TraceEvent = dict[str, Any]
# Bytes of one read or write kept in an event: a large DATA body is cut (and says so).
MAX_DATA = 64 * 1024


def trace_event(kind: str, session_id: str, **fields: Any) -> TraceEvent:
    """A trace event stamped now; ``data`` (bytes or str) is decoded and cut at MAX_DATA."""
    event: TraceEvent = {"when": round(time.time(), 6), "kind": kind, "session_id": session_id}
    data = fields.pop("data", None)
    if data is not None:
        if isinstance(data, bytes | bytearray | memoryview):
            raw = bytes(data)
            event["bytes"] = len(raw)
            text = raw[:MAX_DATA].decode("utf-8", "replace")
        else:
            event["bytes"] = len(data)
            text = data[:MAX_DATA]
        event["data"] = text
        if event["bytes"] > MAX_DATA:
            event["truncated"] = True
    event.update({k: v for k, v in fields.items() if v is not None})
    return event


class Subscription:
    """One watcher: events it wants, in a bounded queue; overflow is counted, not kept."""

    def __init__(self, hub: TraceHub, want: Callable[[TraceEvent], bool], maxsize: int) -> None:
        self._hub = hub
        self.want = want
        self.queue: asyncio.Queue[TraceEvent] = asyncio.Queue(maxsize)
        self.dropped = 0

    def offer(self, event: TraceEvent) -> None:
        if not self.want(event):
            return
        if self.queue.full():
            self.dropped += 1
        else:
            self.queue.put_nowait(event)

    async def get(self) -> TraceEvent:
        return await self.queue.get()

    def close(self) -> None:
        self._hub.unsubscribe(self)


class TraceHub:
    """Fans trace events out to subscribers; ``active`` is False while there are none."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self.active = False

    def subscribe(
        self, want: Callable[[TraceEvent], bool] | None = None, maxsize: int = 10_000
    ) -> Subscription:
        sub = Subscription(self, want or (lambda _e: True), maxsize)
        self._subs.append(sub)
        self.active = True
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        self.active = bool(self._subs)

    def publish(self, event: TraceEvent) -> None:
        for sub in self._subs:
            sub.offer(event)

    @property
    def subscribers(self) -> int:
        return len(self._subs)


SERVER_TRACES = TraceHub()
CLIENT_TRACES = TraceHub()
CLIENT_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "nimbus_trace_client_context", default=None
)
