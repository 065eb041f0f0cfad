"""Administrative bounces and suspensions: the live state and the admin API over it.

Exports:
    AdminState      add / list / cancel per kind; prune(now); bounce_for,
                    suspension_for, ready_suspension_for
    AdminApi        what the HTTP layer calls; the node's actions are injected callables
    entry_json(entry, now)            a list entry as KumoMTA shows it
    UnknownEntry, UnknownXferQueue (HTTP 404), XferNotAvailable (HTTP 409)

The entry records are ``engine.admin.entries``; request parsing is ``engine.admin.requests``.

Semantics follow KumoMTA's admin API (``crates/kumod/src/http_server/admin_*``):
a bounce or suspension names a scheduled queue by ``queue_names`` (exact names,
taking precedence) or by any of domain, routing_domain, tenant and campaign; an
entry with **no criteria matches every queue**. Entries live until ``expires``
(``duration``, default 5 minutes, or an RFC 3339 ``expires``). A bounce also
bounces newly arriving matching mail while it lives: the node asks ``bounce_for``.
Ready-queue suspensions name one ready queue (``source->site@proto``) exactly.

With a ``path`` (the node gives ``<spool dir>/admin-state.json``) the entries survive a
restart: written on every change, read at start with expired entries dropped
(``engine.admin.persist``).
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from engine.admin.entries import (
    BounceEntry,
    Criteria,
    Entry,
    ReadyQSuspendEntry,
    SuspendEntry,
    is_live,
    matches_queue,
)
from engine.admin.persist import dump_entries, read_state, write_state
from engine.admin.requests import (
    XferRequest,
    parse_abort_conn,
    parse_bounce,
    parse_cancel,
    parse_ready_suspend,
    parse_rebind,
    parse_retry_now,
    parse_spool_compact,
    parse_suspend,
    parse_xfer,
    parse_xfer_cancel,
)
from engine.config.units import format_duration
from engine.records import Json, JsonObject, rfc3339

__all__ = [
    "AdminState",
    "AdminApi",
    "UnknownEntry",
    "UnknownSpool",
    "SPOOL_NAMES",
    "UnknownReadyQueue",
    "UnknownXferQueue",
    "XferNotAvailable",
]


class XferNotAvailable(Exception):
    """The node cannot transfer messages now (no cluster secret, shutting down): 409."""


class UnknownXferQueue(LookupError):
    """No transfer job has this xfer queue name (404)."""


SPOOL_NAMES = frozenset({"data", "meta", "spool"})
"""KumoMTA's default spool names (``data``, ``meta``) and ours: one SQLite database."""


class UnknownSpool(LookupError):
    """No spool has this name (404)."""

    def __init__(self, what: str, field: str) -> None:
        super().__init__(what)
        self.field = field


class UnknownReadyQueue(LookupError):
    """No ready queue (or no connection of it) has this name / session id (404)."""

    def __init__(self, what: str, field: str) -> None:
        super().__init__(what)
        self.field = field


class UnknownEntry(LookupError):
    """No bounce or suspension has this id (HTTP 404)."""


def entry_json(entry: BounceEntry | SuspendEntry | ReadyQSuspendEntry, now: float) -> JsonObject:
    """A list entry as KumoMTA shows it (``duration`` = time left), plus ``expires``."""
    out: JsonObject = {}
    for f in fields(entry):
        value = getattr(entry, f.name)
        if f.name in ("expires", "created"):
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    out["duration"] = format_duration(max(0.0, entry.expires - now))
    out["expires"] = rfc3339(entry.expires)
    return out


# -- state -------------------------------------------------------------------------


log = logging.getLogger("nimbus.admin")


class AdminState:
    """The live admin entries of one node, by kind, in the order they were added.

    path: where they are kept across restarts (None: memory only). Loaded here, with
    entries expired at ``now`` dropped; an unreadable file is logged and set aside
    (``.bad``) so the node still starts.
    """

    def __init__(self, path: Path | None = None, *, now: float | None = None) -> None:
        self._bounces: dict[str, BounceEntry] = {}
        self._suspends: dict[str, SuspendEntry] = {}
        self._ready: dict[str, ReadyQSuspendEntry] = {}
        self._bounced: dict[str, dict[str, int]] = {}
        self._path = path
        if path is not None:
            self._load(path, time.time() if now is None else now)

    def _load(self, path: Path, now: float) -> None:
        try:
            entries, bounced = read_state(path, now)
        except (OSError, ValueError, TypeError) as exc:
            log.error("admin_state_unreadable", extra={"path": str(path), "error": str(exc)})
            path.replace(path.with_name(path.name + ".bad"))
            return
        for entry in entries:
            if isinstance(entry, BounceEntry):
                self._bounces[entry.id] = entry
            elif isinstance(entry, SuspendEntry):
                self._suspends[entry.id] = entry
            else:
                self._ready[entry.id] = entry
        self._bounced = {id: bounced.get(id, {}) for id in self._bounces}
        if entries:
            log.info("admin_state_loaded", extra={"path": str(path), "entries": len(entries)})

    def _save(self) -> None:
        if self._path is None:
            return
        entries: list[BounceEntry | SuspendEntry | ReadyQSuspendEntry] = [
            *self._bounces.values(),
            *self._suspends.values(),
            *self._ready.values(),
        ]
        try:
            write_state(self._path, dump_entries(entries, self._bounced))
        except OSError as exc:  # the entry still applies; it just would not survive
            log.error("admin_state_not_saved", extra={"path": str(self._path), "error": str(exc)})

    # bounces
    def add_bounce(self, entry: BounceEntry) -> None:
        self._bounces[entry.id] = entry
        self._bounced.setdefault(entry.id, {})
        self._save()

    def bounces(self, now: float) -> list[BounceEntry]:
        return [e for e in self._bounces.values() if is_live(e, now)]

    def cancel_bounce(self, id: str) -> BounceEntry:
        """Remove bounce ``id``; UnknownEntry when there is none."""
        self._bounced.pop(id, None)
        entry = _pop(self._bounces, id)
        self._save()
        return entry

    def note_bounced(self, id: str, queue_name: str, count: int = 1) -> None:
        """Count messages that bounce ``id`` bounced (shown by the list)."""
        if id in self._bounces:
            per_queue = self._bounced.setdefault(id, {})
            per_queue[queue_name] = per_queue.get(queue_name, 0) + count
            self._save()

    def bounced_counts(self, id: str) -> dict[str, int]:
        return dict(self._bounced.get(id, {}))

    # scheduled-queue suspensions
    def add_suspension(self, entry: SuspendEntry) -> None:
        self._suspends[entry.id] = entry
        self._save()

    def suspensions(self, now: float) -> list[SuspendEntry]:
        return [e for e in self._suspends.values() if is_live(e, now)]

    def cancel_suspension(self, id: str) -> SuspendEntry:
        entry = _pop(self._suspends, id)
        self._save()
        return entry

    # ready-queue suspensions
    def add_ready_suspension(self, entry: ReadyQSuspendEntry) -> None:
        self._ready[entry.id] = entry
        self._save()

    def ready_suspensions(self, now: float) -> list[ReadyQSuspendEntry]:
        return [e for e in self._ready.values() if is_live(e, now)]

    def cancel_ready_suspension(self, id: str) -> ReadyQSuspendEntry:
        entry = _pop(self._ready, id)
        self._save()
        return entry

    # expiry and lookups
    def prune(self, now: float) -> list[BounceEntry | SuspendEntry | ReadyQSuspendEntry]:
        """Drop every entry expired at ``now``; returns them."""
        gone: list[BounceEntry | SuspendEntry | ReadyQSuspendEntry] = [
            *_pop_expired(self._bounces, now),
            *_pop_expired(self._suspends, now),
            *_pop_expired(self._ready, now),
        ]
        for entry in gone:
            self._bounced.pop(entry.id, None)
        if gone:
            self._save()
        return gone

    def bounce_for(self, queue_name: str, now: float) -> BounceEntry | None:
        """The oldest live bounce that matches scheduled queue ``queue_name``."""
        return next((e for e in self.bounces(now) if matches_queue(e, queue_name)), None)

    def suspension_for(self, queue_name: str, now: float) -> SuspendEntry | None:
        """The oldest live suspension of scheduled queue ``queue_name``."""
        return next((e for e in self.suspensions(now) if matches_queue(e, queue_name)), None)

    def ready_suspension_for(self, ready_queue_name: str, now: float) -> ReadyQSuspendEntry | None:
        """The oldest live suspension of ready queue ``ready_queue_name`` (exact name)."""
        return next((e for e in self.ready_suspensions(now) if e.name == ready_queue_name), None)


def _pop_expired(table: dict[str, Entry], now: float) -> list[Entry]:
    expired = [id for id, entry in table.items() if not is_live(entry, now)]
    return [table.pop(id) for id in expired]


def _pop(table: dict[str, Entry], id: str) -> Entry:
    try:
        return table.pop(id)
    except KeyError:
        raise UnknownEntry(id) from None


# -- the API -----------------------------------------------------------------------

MaybeAwaitable = Any  # a value, or an awaitable of it (the node may answer either way)


async def _call(fn: Callable[..., MaybeAwaitable], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class AdminApi:
    """Admin requests in, JSON-able answers out; the node acts through callables.

    Each callable may be a plain function or a coroutine function:
        bounce_now(entry: BounceEntry) -> int | Mapping[queue_name, int]
            bounce the matching scheduled and ready messages now; how many.
        rebind(criteria: Criteria, data: dict[str, str], reason: str, trigger: bool) -> int
            set meta ``data`` on matching scheduled messages and requeue them; how many.
        inspect_message(id: str, want_body: bool) -> dict | None
            ``{id, message: {sender, recipient, meta, data?, due, num_attempts, scheduling}}``;
            None when no message has that id.
        inspect_sched_q(queue_name: str, want_body: bool, limit: int | None) -> dict | None
            ``{queue_name, queue_config, num_scheduled, delayed_metric, last_changed, now,
            messages: [inspect_message answers]}``; None for an unknown queue.
        ready_q_states(queues: list[str] | None) -> dict
            ``{ready_queue_name: {state_name: {context, since}}}``, all queues when None.
        queue_summary() -> dict
            ``{"scheduled": [{name, count}], "ready": [{name, site, count, connections}]}``.
        xfer(request: XferRequest) -> dict;  xfer_cancel(queue_name, reason) -> dict | None;
        xfer_jobs() -> list
            transfers to other nodes (``engine/xfer/sender.py``); None: not available.
        warmup_status() -> list
            each warming egress source: schedule, day, used/allowed per counter
            (``engine/shaping/warmup.py``); None: no warm-up on this node.
        spool_compact() -> dict   checkpoint and VACUUM the spool (``Spool.compact``)
        inspect_ready_q(name, include_scheduled_queues) -> dict | None
        abort_ready_q_conn(queue_name, session_id) -> bool | None (None: no such queue)
        retry_now(criteria) -> {queue_name: count}
        provider_summary() -> list;  resolve_egress_path(domain, source) -> dict
            the operator verbs of the same names (``engine/admin/ops.py``)
    state: the entries (the node reads ``state.bounce_for`` etc. to enforce them).
    clock: wall clock, unix seconds.
    """

    def __init__(
        self,
        *,
        bounce_now: Callable[[BounceEntry], MaybeAwaitable],
        rebind: Callable[[Criteria, dict[str, str], str, bool], MaybeAwaitable],
        inspect_message: Callable[[str, bool], MaybeAwaitable],
        inspect_sched_q: Callable[[str, bool, int | None], MaybeAwaitable],
        ready_q_states: Callable[[list[str] | None], MaybeAwaitable],
        queue_summary: Callable[[], MaybeAwaitable],
        xfer: Callable[[XferRequest], MaybeAwaitable] | None = None,
        xfer_cancel: Callable[[str, str], MaybeAwaitable] | None = None,
        xfer_jobs: Callable[[], MaybeAwaitable] | None = None,
        warmup_status: Callable[[], MaybeAwaitable] | None = None,
        spool_compact: Callable[[], MaybeAwaitable] | None = None,
        inspect_ready_q: Callable[[str, bool], MaybeAwaitable] | None = None,
        abort_ready_q_conn: Callable[[str, str], MaybeAwaitable] | None = None,
        retry_now: Callable[[Criteria], MaybeAwaitable] | None = None,
        provider_summary: Callable[[], MaybeAwaitable] | None = None,
        resolve_egress_path: Callable[[str, str | None], MaybeAwaitable] | None = None,
        state: AdminState | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bounce_now = bounce_now
        self._rebind = rebind
        self._inspect_message = inspect_message
        self._inspect_sched_q = inspect_sched_q
        self._ready_q_states = ready_q_states
        self._queue_summary = queue_summary
        self._xfer = xfer
        self._xfer_cancel = xfer_cancel
        self._xfer_jobs = xfer_jobs
        self._warmup_status = warmup_status
        self._spool_compact = spool_compact
        self._inspect_ready_q = inspect_ready_q
        self._abort_ready_q_conn = abort_ready_q_conn
        self._retry_now = retry_now
        self._provider_summary = provider_summary
        self._resolve_egress_path = resolve_egress_path
        self.state = state if state is not None else AdminState()
        self.clock = clock

    def _now(self) -> float:
        now = self.clock()
        self.state.prune(now)
        return now

    # bounces
    async def bounce(self, body: Json, entry_id: str | None = None) -> JsonObject:
        """Add a bounce (it applies to new mail at once), then bounce what's queued.
        entry_id: the id to keep (the same entry on every worker of a node), else a new one."""
        entry = parse_bounce(body, id=entry_id or str(uuid.uuid4()), now=self._now())
        self.state.add_bounce(entry)
        result = await _call(self._bounce_now, entry)
        if isinstance(result, Mapping):
            bounced = {str(q): int(n) for q, n in result.items()}
        else:
            bounced = {}
        for queue, count in bounced.items():
            self.state.note_bounced(entry.id, queue, count)
        total = sum(bounced.values()) if isinstance(result, Mapping) else int(result or 0)
        return {"id": entry.id, "bounced": bounced, "total_bounced": total}

    def list_bounces(self) -> list[JsonObject]:
        now = self._now()
        out = []
        for entry in self.state.bounces(now):
            item = entry_json(entry, now)
            counts = self.state.bounced_counts(entry.id)
            item["bounced"] = counts
            item["total_bounced"] = sum(counts.values())
            out.append(item)
        return out

    def cancel_bounce(self, body: Json) -> None:
        id = parse_cancel(body)
        self._now()  # an expired entry is gone: 404
        self.state.cancel_bounce(id)

    # suspensions
    def suspend(self, body: Json, entry_id: str | None = None) -> JsonObject:
        entry = parse_suspend(body, id=entry_id or str(uuid.uuid4()), now=self._now())
        self.state.add_suspension(entry)
        return {"id": entry.id}

    def list_suspensions(self) -> list[JsonObject]:
        now = self._now()
        return [entry_json(e, now) for e in self.state.suspensions(now)]

    def cancel_suspension(self, body: Json) -> None:
        id = parse_cancel(body)
        self._now()  # an expired entry is gone: 404
        self.state.cancel_suspension(id)

    def suspend_ready_q(self, body: Json, entry_id: str | None = None) -> JsonObject:
        entry = parse_ready_suspend(body, id=entry_id or str(uuid.uuid4()), now=self._now())
        self.state.add_ready_suspension(entry)
        return {"id": entry.id}

    def list_ready_suspensions(self) -> list[JsonObject]:
        now = self._now()
        return [entry_json(e, now) for e in self.state.ready_suspensions(now)]

    def cancel_ready_suspension(self, body: Json) -> None:
        id = parse_cancel(body)
        self._now()  # an expired entry is gone: 404
        self.state.cancel_ready_suspension(id)

    # node reads and actions
    async def rebind(self, body: Json) -> JsonObject:
        req = parse_rebind(body)
        await _call(
            self._rebind, req.criteria, dict(req.data), req.reason, req.trigger_rebind_event
        )
        return {}

    async def inspect_message(self, id: str, want_body: bool) -> JsonObject | None:
        return await _call(self._inspect_message, id, want_body)

    async def inspect_sched_q(
        self, queue_name: str, want_body: bool, limit: int | None
    ) -> JsonObject | None:
        return await _call(self._inspect_sched_q, queue_name, want_body, limit)

    async def ready_q_states(self, queues: list[str] | None) -> JsonObject:
        states = await _call(self._ready_q_states, queues)
        return {"states_by_ready_queue": dict(states or {})}

    # transfers to other nodes
    async def xfer(self, body: Json) -> JsonObject:
        req = parse_xfer(body)
        if self._xfer is None:
            raise XferNotAvailable("this node does not transfer messages")
        return dict(await _call(self._xfer, req))

    async def xfer_cancel(self, body: Json) -> JsonObject:
        queue_name, reason = parse_xfer_cancel(body)
        if self._xfer_cancel is None:
            raise XferNotAvailable("this node does not transfer messages")
        found = await _call(self._xfer_cancel, queue_name, reason)
        if found is None:
            raise UnknownXferQueue(queue_name)
        return dict(found)

    async def xfer_jobs(self) -> list[JsonObject]:
        if self._xfer_jobs is None:
            return []
        return list(await _call(self._xfer_jobs))

    async def warmup_status(self) -> JsonObject:
        """``{"sources": [...]}``: every source with a warm-up schedule, and its counts."""
        if self._warmup_status is None:
            return {"sources": []}
        return {"sources": list(await _call(self._warmup_status))}

    # the spool
    async def spool_compact(self, body: Json) -> JsonObject:
        """KumoMTA's SpoolCompactV1Request ``{"name"}``: this node has one spool database
        for data and meta, so ``data``, ``meta`` and ``spool`` all name it."""
        name = parse_spool_compact(body)
        if name not in SPOOL_NAMES or self._spool_compact is None:
            raise UnknownSpool(
                f"no spool named {name} (this node has one spool database holding data "
                "and meta: data, meta or spool)",
                "name",
            )
        return {"name": name, **dict(await _call(self._spool_compact))}

    # ready queues and retries
    async def inspect_ready_q(self, name: str, include_scheduled_queues: bool) -> JsonObject:
        found = None
        if self._inspect_ready_q is not None:
            found = await _call(self._inspect_ready_q, name, include_scheduled_queues)
        if found is None:
            raise UnknownReadyQueue(f"no ready queue named {name}", "queue_name")
        hold = self.state.ready_suspension_for(name, self._now())
        if hold is not None and not found.get("suspended"):
            found["suspended"] = hold.reason
        return dict(found)

    async def abort_ready_q_conn(self, body: Json) -> JsonObject:
        queue_name, session_id = parse_abort_conn(body)
        done = None
        if self._abort_ready_q_conn is not None:
            done = await _call(self._abort_ready_q_conn, queue_name, session_id)
        if done is None:
            raise UnknownReadyQueue(f"no ready queue named {queue_name}", "queue_name")
        if not done:
            raise UnknownReadyQueue(
                f"ready queue {queue_name} has no connection {session_id}", "session_id"
            )
        return {}

    async def retry_now(self, body: Json) -> JsonObject:
        """Make matching scheduled messages due now; no attempt is counted."""
        criteria = parse_retry_now(body)
        counts = dict(await _call(self._retry_now, criteria)) if self._retry_now else {}
        return {"retried": counts, "total_retried": sum(counts.values())}

    async def provider_summary(self) -> list[JsonObject]:
        if self._provider_summary is None:
            return []
        return list(await _call(self._provider_summary))

    async def resolve_egress_path(self, domain: str, source: str | None) -> JsonObject:
        if self._resolve_egress_path is None:
            raise UnknownReadyQueue("this node resolves no egress paths", "domain")
        return dict(await _call(self._resolve_egress_path, domain, source))

    async def queue_summary(self) -> JsonObject:
        """The node's queues, each marked with the reason of an admin suspension, if any."""
        summary = await _call(self._queue_summary)
        now = self._now()
        scheduled = []
        for item in summary.get("scheduled", []):
            hold = self.state.suspension_for(item["name"], now)
            scheduled.append(
                {**item, "suspended": item.get("suspended") or (hold.reason if hold else None)}
            )
        ready = []
        for item in summary.get("ready", []):
            ready_hold = self.state.ready_suspension_for(item["name"], now)
            reason = ready_hold.reason if ready_hold else None
            ready.append({**item, "suspended": item.get("suspended") or reason})
        xfer = [
            {
                "name": j["queue_name"],
                "target": j["target"],
                "count": j["left"],
                "state": j["state"],
            }
            for j in await self.xfer_jobs()
            if j.get("left")
        ]
        return {"scheduled": scheduled, "ready": ready, "xfer": xfer}
