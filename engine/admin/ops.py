"""Admin operations on a running node: what the admin API's callables do.

Exports:
    AdminOps    bounce_now, rebind, inspect_message, inspect_sched_q, ready_q_states,
                queue_summary — handed to ``engine.admin.state.AdminApi``; take and
                give_back — for transfers to another node (``engine/xfer``)

Each works on the node's in-memory queues (scheduled and ready) and writes its records
through ``Outcomes`` (AdminBounce, AdminRebind), so the spool and the log stay in step.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from engine.admin.entries import BounceEntry, Criteria, matches_queue
from engine.queues.naming import scheduled_queue_name
from engine.queues.outcomes import Outcomes
from engine.queues.routing import Router
from engine.queues.scheduled import Scheduler
from engine.records import JsonObject, Message, rfc3339
from engine.storage.spool import Spool

__all__ = ["AdminOps"]


class AdminOps:
    """The node parts admin operations act on."""

    def __init__(
        self, *, scheduler: Scheduler, router: Router, spool: Spool, outcomes: Outcomes
    ) -> None:
        self._scheduler = scheduler
        self._router = router
        self._spool = spool
        self._outcomes = outcomes

    def _waiting(self) -> list[tuple[Message, Any]]:
        """Every message not in flight: (message, ready queue or None when scheduled)."""
        out: list[tuple[Message, Any]] = [(m, None) for m in self._scheduler.messages()]
        for ready in self._router.ready.values():
            out.extend((m, ready) for m in ready.queue)
        return out

    def _take(self, msg: Message, ready: Any) -> None:
        if ready is None:
            self._scheduler.remove(msg.id)
        else:
            ready.queue.remove(msg)

    def bounce_now(self, entry: BounceEntry) -> dict[str, int]:
        """Bounce every waiting message the entry covers; returns counts per queue."""
        counts: dict[str, int] = {}
        for msg, ready in self._waiting():
            if matches_queue(entry, msg.queue):
                self._take(msg, ready)
                self._outcomes.admin_bounce(msg, entry.reason, log=not entry.suppress_logging)
                counts[msg.queue] = counts.get(msg.queue, 0) + 1
        return counts

    def take(self, criteria: Criteria) -> list[Message]:
        """Take every waiting (not in-flight) message the criteria cover out of its
        scheduled or ready queue; the spool keeps it. Oldest first."""
        taken = []
        for msg, ready in self._waiting():
            if matches_queue(criteria, msg.queue):
                self._take(msg, ready)
                taken.append(msg)
        taken.sort(key=lambda m: m.created)
        return taken

    def give_back(self, msg: Message) -> None:
        """Return a message taken with ``take`` to its scheduled queue, at its due time."""
        self._scheduler.insert(msg)

    def rebind(self, criteria: Criteria, data: dict[str, str], reason: str, trigger: bool) -> int:
        """Merge ``data`` into the meta of matching waiting messages and requeue them now
        under the queue name that meta gives (``trigger`` is accepted; there is no
        rebind_message event yet)."""
        moved = 0
        now = time.time()
        for msg, ready in self._waiting():
            if not matches_queue(criteria, msg.queue):
                continue
            meta = {**msg.meta, **data}
            rebound = dataclasses.replace(
                msg, meta=meta, due=now, queue=scheduled_queue_name(msg.recipient, meta)
            )
            self._take(msg, ready)
            self._outcomes.admin_rebind(rebound, from_queue=msg.queue, reason=reason)
            moved += 1
        return moved

    def _find(self, id: str) -> Message | None:
        msg = self._scheduler.get(id)
        if msg is not None:
            return msg
        for ready in self._router.ready.values():
            for queued in ready.queue:
                if queued.id == id:
                    return queued
        return None

    async def _describe(self, msg: Message, want_body: bool) -> JsonObject:
        out: JsonObject = {
            "sender": msg.sender,
            "recipient": msg.recipient,
            "meta": dict(msg.meta),
            "due": rfc3339(msg.due),
            "num_attempts": msg.num_attempts,
            "scheduling": msg.meta.get("scheduling"),
            "queue": msg.queue,
        }
        if want_body:
            data = await self._spool.load_data(msg.id)
            out["data"] = None if data is None else data.decode("utf-8", "replace")
        return out

    async def inspect_message(self, id: str, want_body: bool) -> JsonObject | None:
        msg = self._find(id)
        if msg is None:
            return None
        return {"id": id, "message": await self._describe(msg, want_body)}

    async def inspect_sched_q(
        self, queue_name: str, want_body: bool, limit: int | None
    ) -> JsonObject | None:
        messages = [m for m in self._scheduler.messages() if m.queue == queue_name]
        if not messages and queue_name not in self._scheduler.counts:
            return None
        messages.sort(key=lambda m: m.due)
        shown = messages if limit is None else messages[:limit]
        cfg = await self._router.queue_config(queue_name)
        return {
            "queue_name": queue_name,
            "queue_config": {k: v for k, v in dataclasses.asdict(cfg).items()},
            "num_scheduled": len(messages),
            "delayed_metric": len(messages),
            "last_changed": None,
            "now": rfc3339(time.time()),
            "messages": [
                {"id": m.id, "message": await self._describe(m, want_body)} for m in shown
            ],
        }

    def ready_q_states(self, queues: list[str] | None) -> JsonObject:
        return {
            name: dict(ready.states)
            for name, ready in self._router.ready.items()
            if (queues is None or name in queues) and ready.states
        }

    def queue_summary(self) -> JsonObject:
        return {
            "scheduled": [
                {"name": name, "count": count} for name, count in self._scheduler.counts.items()
            ],
            "ready": [
                {
                    "name": name,
                    "site": ready.site,
                    "count": len(ready.queue),
                    "connections": ready.connections,
                }
                for name, ready in self._router.ready.items()
            ],
        }
