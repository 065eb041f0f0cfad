"""Admin operations on a running node: what the admin API's callables do.

Exports:
    AdminOps    bounce_now, rebind, inspect_message, inspect_sched_q, ready_q_states,
                queue_summary, inspect_ready_q, abort_ready_q_conn, retry_now,
                provider_summary, resolve_egress_path — handed to
                ``engine.admin.state.AdminApi``; take and give_back — for transfers to
                another node (``engine/xfer``)
    jsonable(value)   an option value (enums, throttle specs, read-only maps) as JSON

Each works on the node's in-memory queues (scheduled and ready) and writes its records
through ``Outcomes`` (AdminBounce, AdminRebind), so the spool and the log stay in step.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Mapping
from typing import Any

from engine.admin.entries import BounceEntry, Criteria, matches_queue
from engine.queues.naming import scheduled_queue_name
from engine.queues.outcomes import Outcomes
from engine.queues.routing import Router
from engine.queues.scheduled import Scheduler
from engine.records import JsonObject, Message, rfc3339
from engine.storage.spool import Spool

__all__ = ["AdminOps", "jsonable"]


def jsonable(value: Any) -> Any:
    """A config value as JSON: enums by value, maps and sequences recursively, durations
    as seconds, anything else (throttle specs) by its text form."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)


def _config_json(cfg: Any) -> dict[str, Any]:
    return {f.name: jsonable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


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

    # -- ready queues (inspect-ready-q, abort-ready-q-conn, provider-summary) -----------

    def inspect_ready_q(self, name: str, include_scheduled_queues: bool) -> JsonObject | None:
        """One ready queue: identity, state, its connection tasks and path config."""
        ready = self._router.ready.get(name)
        if ready is None:
            return None
        now = time.time()
        out: JsonObject = {
            "queue_name": name,
            "egress_source": ready.source.name,
            "egress_pool": ready.route.pool,
            "site_name": ready.site,
            "provider_name": ready.path.provider_name,
            "ready_count": len(ready.queue),
            "connection_count": ready.connections,
            "connection_limit": ready.path.connection_limit,
            "states": dict(ready.states),
            "suspended": (ready.states.get("suspended") or {}).get("context"),
            "connections": [d.to_json(now) for d in ready.sessions()],
            "config": _config_json(ready.path),
        }
        if include_scheduled_queues:
            out["scheduled_queues"] = sorted({m.queue for m in ready.queue})
        return out

    def abort_ready_q_conn(self, queue_name: str, session_id: str) -> bool | None:
        """Abort one connection task; None: no such queue, False: no such session."""
        ready = self._router.ready.get(queue_name)
        if ready is None:
            return None
        return ready.abort(session_id)

    def provider_summary(self) -> list[dict[str, Any]]:
        """Ready queues rolled up by provider (or MX site when no provider matched), pool
        and source: messages waiting, connections open, and the destination domains."""
        rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        for ready in self._router.ready.values():
            provider = ready.path.provider_name
            key = (provider or ready.site, ready.route.pool, ready.source.name)
            row = rows.setdefault(
                key,
                {
                    "provider": key[0],
                    "matched_provider": provider is not None,
                    "pool": key[1],
                    "source": key[2],
                    "ready": 0,
                    "connections": 0,
                    "ready_queues": 0,
                    "domains": set(),
                },
            )
            row["ready"] += len(ready.queue)
            row["connections"] += ready.connections
            row["ready_queues"] += 1
            row["domains"].update(m.recipient_domain for m in ready.queue)
        for row in rows.values():
            row["domains"] = sorted(row["domains"])
        return list(rows.values())

    # -- retry now -----------------------------------------------------------------------

    def retry_now(self, criteria: Criteria) -> dict[str, int]:
        """Make every matching scheduled message due now, without counting an attempt
        (``outcomes.delay(msg, 0)``: the spool keeps the new due time); per queue."""
        counts: dict[str, int] = {}
        now = time.time()
        for msg in self._scheduler.messages():
            if msg.due > now and matches_queue(criteria, msg.queue):
                self._outcomes.delay(msg, 0.0)
                counts[msg.queue] = counts.get(msg.queue, 0) + 1
        return counts

    # -- resolve-egress-path -------------------------------------------------------------

    async def resolve_egress_path(self, domain: str, source: str | None) -> JsonObject:
        """The effective egress path for a domain and source, each value with its origin:
        ``tsa`` (a TSA override), what the policy says (``default``, ``provider:<name>``,
        ``site:<site>``, ``domain:<domain>``, ``... source:<source>``), ``policy`` (set by
        the policy, origin not given) or ``built-in`` (the engine's default)."""
        resolved = await self._router.resolve_path(domain, source)
        builtin = type(resolved.config)()
        values: JsonObject = {}
        for f in dataclasses.fields(resolved.config):
            value = getattr(resolved.config, f.name)
            if f.name in resolved.overrides or (
                f.name == "connection_limit_local" and "connection_limit" in resolved.overrides
            ):
                origin = "tsa"
            elif f.name in resolved.origins:
                origin = resolved.origins[f.name]
            elif value == getattr(builtin, f.name):
                origin = "built-in"
            else:
                origin = "policy"
            values[f.name] = {"value": jsonable(value), "source": origin}
        path = resolved.config
        return {
            "domain": resolved.domain,
            "source": resolved.source,
            "egress_pool": resolved.pool,
            "site_name": resolved.site,
            "mx_hosts": list(resolved.mx_hosts),
            "ready_queue_name": resolved.ready_queue,
            "provider_name": path.provider_name,
            "tsa_overrides": {k: jsonable(v) for k, v in resolved.overrides.items()},
            "constraints": {
                "connection_limit": path.connection_limit,
                "max_connection_rate": jsonable(path.max_connection_rate),
                "max_message_rate": jsonable(path.max_message_rate),
                "max_deliveries_per_connection": path.max_deliveries_per_connection,
                "additional_connection_limits": jsonable(path.additional_connection_limits),
                "additional_message_rate_throttles": jsonable(
                    path.additional_message_rate_throttles
                ),
            },
            "config": values,
        }
