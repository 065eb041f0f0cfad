"""Administrative bounces and suspensions, and the admin API over them.

Exports:
    BounceEntry, SuspendEntry, ReadyQSuspendEntry, Criteria   frozen records
    matches_queue(entry, queue_name) -> bool                  pure criteria match
    parse_bounce / parse_suspend / parse_ready_suspend / parse_rebind
                                      request JSON -> record (pure; ``id`` and ``now`` in)
    AdminState      add / list / cancel per kind; prune(now); bounce_for,
                    suspension_for, ready_suspension_for
    AdminApi        what the HTTP layer calls; the node's actions are injected callables
    AdminInputError (HTTP 400, names the field), UnknownEntry (HTTP 404)

Semantics follow KumoMTA's admin API (``crates/kumod/src/http_server/admin_*``):
a bounce or suspension names a scheduled queue by ``queue_names`` (exact names,
taking precedence) or by any of domain, routing_domain, tenant and campaign; an
entry with **no criteria matches every queue**. Entries live until ``expires``
(``duration``, default 5 minutes, or an RFC 3339 ``expires``). A bounce also
bounces newly arriving matching mail while it lives: the node asks ``bounce_for``.
Ready-queue suspensions name one ready queue (``source->site@proto``) exactly.
"""

from __future__ import annotations

import inspect
import time
import uuid
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, TypeVar

from .queue_name import QueueName
from .records import rfc3339
from .units import format_duration, parse_duration

__all__ = [
    "BounceEntry", "SuspendEntry", "ReadyQSuspendEntry", "Criteria", "matches_queue",
    "parse_bounce", "parse_suspend", "parse_ready_suspend", "parse_rebind", "Rebind",
    "AdminState", "AdminApi", "AdminInputError", "UnknownEntry", "DEFAULT_DURATION",
]

DEFAULT_DURATION = 300.0
"""KumoMTA's default lifetime of a bounce or suspension: 5 minutes."""


class AdminInputError(ValueError):
    """A request field is missing or malformed (HTTP 400)."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


class UnknownEntry(LookupError):
    """No bounce or suspension has this id (HTTP 404)."""


# -- records -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Criteria:
    """Which scheduled queues an action applies to; all None and no names: every queue."""

    domain: str | None = None
    routing_domain: str | None = None
    tenant: str | None = None
    campaign: str | None = None
    queue_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BounceEntry:
    """Bounce matching messages now, and matching new mail until ``expires`` (unix s)."""

    id: str
    reason: str
    expires: float
    created: float
    domain: str | None = None
    routing_domain: str | None = None
    tenant: str | None = None
    campaign: str | None = None
    queue_names: tuple[str, ...] = ()
    suppress_logging: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SuspendEntry:
    """Hold matching scheduled queues (no delivery attempts) until ``expires``."""

    id: str
    reason: str
    expires: float
    created: float = 0.0
    domain: str | None = None
    tenant: str | None = None
    campaign: str | None = None
    queue_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadyQSuspendEntry:
    """Open no new connections for ready queue ``name`` until ``expires``."""

    id: str
    name: str
    reason: str
    expires: float
    created: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Rebind:
    """A rebind request: set ``data`` as meta on matching messages (queue moves follow)."""

    criteria: Criteria
    data: Mapping[str, str]
    reason: str
    trigger_rebind_event: bool = False
    always_flush: bool = False
    suppress_logging: bool = False


Entry = TypeVar("Entry", BounceEntry, SuspendEntry, ReadyQSuspendEntry)


# -- pure decisions ----------------------------------------------------------------


def matches_queue(entry: Criteria | BounceEntry | SuspendEntry, queue_name: str) -> bool:
    """Whether ``entry``'s criteria select scheduled queue ``queue_name``.

    ``queue_names``, when given, is an exact list and wins over the other criteria.
    Otherwise each given criterion must equal that part of the name (domains
    compare case-insensitively); none given selects every queue, as KumoMTA.
    A name that doesn't parse (a policy's ``queue`` meta) matches only by name
    or through an everything entry.
    """
    if entry.queue_names:
        return queue_name in entry.queue_names
    domain = entry.domain
    routing = getattr(entry, "routing_domain", None)
    if domain is None and routing is None and entry.tenant is None and entry.campaign is None:
        return True
    try:
        q = QueueName.parse(queue_name)
    except ValueError:
        return False
    return ((domain is None or domain.lower() == q.domain.lower())
            and (routing is None or routing.lower() == (q.routing_domain or "").lower())
            and (entry.tenant is None or entry.tenant == q.tenant)
            and (entry.campaign is None or entry.campaign == q.campaign))


def is_live(entry: BounceEntry | SuspendEntry | ReadyQSuspendEntry, now: float) -> bool:
    return entry.expires > now


def _expiry(body: Mapping[str, Any], now: float) -> float:
    """``expires`` (RFC 3339, wins as in KumoMTA) or ``now + duration`` (default 5m)."""
    expires = body.get("expires")
    if expires is not None:
        if not isinstance(expires, str):
            raise AdminInputError("expires", "must be an RFC 3339 timestamp string")
        try:
            when = datetime.fromisoformat(expires)
        except ValueError:
            raise AdminInputError("expires", f"not an RFC 3339 timestamp: {expires!r}") from None
        if when.tzinfo is None:
            raise AdminInputError("expires", "must include a time zone (e.g. Z)")
        return max(now, when.astimezone(timezone.utc).timestamp())
    duration = body.get("duration")
    if duration is None:
        return now + DEFAULT_DURATION
    try:
        return now + parse_duration(duration)
    except (ValueError, TypeError) as exc:
        raise AdminInputError("duration", str(exc)) from None


def _check_fields(body: Any, allowed: Iterable[str]) -> Mapping[str, Any]:
    # Unknown fields are refused (KumoMTA: deny_unknown_fields): a misspelt
    # "domian" must not silently become a bounce of everything.
    if not isinstance(body, Mapping):
        raise AdminInputError(None, "request body must be a JSON object")
    allowed = set(allowed)
    for key in body:
        if key not in allowed:
            raise AdminInputError(key, "unknown field")
    return body


def _text(body: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise AdminInputError(key, "is required")
        return None
    if not isinstance(value, str) or not value.strip():
        # An empty criterion would otherwise widen the match to every queue.
        raise AdminInputError(key, "must be a non-empty string")
    return value


def _flag(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise AdminInputError(key, "must be true or false")
    return value


def _names(body: Mapping[str, Any]) -> tuple[str, ...]:
    value = body.get("queue_names")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise AdminInputError("queue_names", "must be a list of queue names")
    return tuple(value)


_CRITERIA = ("domain", "tenant", "campaign")
_LIFETIME = ("reason", "duration", "expires")


def parse_bounce(body: Any, *, id: str, now: float) -> BounceEntry:
    """A ``POST /api/admin/bounce/v1`` body as a BounceEntry; AdminInputError names the field."""
    body = _check_fields(body, (*_CRITERIA, "routing_domain", "queue_names", *_LIFETIME,
                                "suppress_logging"))
    return BounceEntry(
        id=id, reason=_text(body, "reason", required=True) or "", created=now,
        expires=_expiry(body, now), domain=_text(body, "domain"),
        routing_domain=_text(body, "routing_domain"), tenant=_text(body, "tenant"),
        campaign=_text(body, "campaign"), queue_names=_names(body),
        suppress_logging=_flag(body, "suppress_logging"))


def parse_suspend(body: Any, *, id: str, now: float) -> SuspendEntry:
    """A ``POST /api/admin/suspend/v1`` body as a SuspendEntry."""
    body = _check_fields(body, (*_CRITERIA, "queue_names", *_LIFETIME))
    return SuspendEntry(
        id=id, reason=_text(body, "reason", required=True) or "", created=now,
        expires=_expiry(body, now), domain=_text(body, "domain"), tenant=_text(body, "tenant"),
        campaign=_text(body, "campaign"), queue_names=_names(body))


def parse_ready_suspend(body: Any, *, id: str, now: float) -> ReadyQSuspendEntry:
    """A ``POST /api/admin/suspend-ready-q/v1`` body as a ReadyQSuspendEntry."""
    body = _check_fields(body, ("name", *_LIFETIME))
    return ReadyQSuspendEntry(
        id=id, name=_text(body, "name", required=True) or "",
        reason=_text(body, "reason", required=True) or "", created=now,
        expires=_expiry(body, now))


def parse_rebind(body: Any) -> Rebind:
    """A ``POST /api/admin/rebind/v1`` body; ``data`` must map strings to strings."""
    body = _check_fields(body, (*_CRITERIA, "routing_domain", "reason", "data", "always_flush",
                                "trigger_rebind_event", "suppress_logging"))
    data = body.get("data")
    if not isinstance(data, Mapping) or not data:
        raise AdminInputError("data", "must be a non-empty object of meta name -> value")
    if not all(isinstance(k, str) and k and isinstance(v, str) for k, v in data.items()):
        raise AdminInputError("data", "names and values must be strings")
    criteria = Criteria(domain=_text(body, "domain"), routing_domain=_text(body, "routing_domain"),
                        tenant=_text(body, "tenant"), campaign=_text(body, "campaign"))
    return Rebind(criteria=criteria, data=dict(data),
                  reason=_text(body, "reason", required=True) or "",
                  trigger_rebind_event=_flag(body, "trigger_rebind_event"),
                  always_flush=_flag(body, "always_flush"),
                  suppress_logging=_flag(body, "suppress_logging"))


def entry_json(entry: BounceEntry | SuspendEntry | ReadyQSuspendEntry,
               now: float) -> dict[str, Any]:
    """A list entry as KumoMTA shows it (``duration`` = time left), plus ``expires``."""
    out: dict[str, Any] = {}
    for f in fields(entry):
        value = getattr(entry, f.name)
        if f.name in ("expires", "created"):
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    out["duration"] = format_duration(max(0.0, entry.expires - now))
    out["expires"] = rfc3339(entry.expires)
    return out


# -- state -------------------------------------------------------------------------


class AdminState:
    """The live admin entries of one node, by kind, in the order they were added."""

    def __init__(self) -> None:
        self._bounces: dict[str, BounceEntry] = {}
        self._suspends: dict[str, SuspendEntry] = {}
        self._ready: dict[str, ReadyQSuspendEntry] = {}
        self._bounced: dict[str, dict[str, int]] = {}

    # bounces
    def add_bounce(self, entry: BounceEntry) -> None:
        self._bounces[entry.id] = entry
        self._bounced.setdefault(entry.id, {})

    def bounces(self, now: float) -> list[BounceEntry]:
        return [e for e in self._bounces.values() if is_live(e, now)]

    def cancel_bounce(self, id: str) -> BounceEntry:
        """Remove bounce ``id``; UnknownEntry when there is none."""
        self._bounced.pop(id, None)
        return _pop(self._bounces, id)

    def note_bounced(self, id: str, queue_name: str, count: int = 1) -> None:
        """Count messages that bounce ``id`` bounced (shown by the list)."""
        if id in self._bounces:
            per_queue = self._bounced.setdefault(id, {})
            per_queue[queue_name] = per_queue.get(queue_name, 0) + count

    def bounced_counts(self, id: str) -> dict[str, int]:
        return dict(self._bounced.get(id, {}))

    # scheduled-queue suspensions
    def add_suspension(self, entry: SuspendEntry) -> None:
        self._suspends[entry.id] = entry

    def suspensions(self, now: float) -> list[SuspendEntry]:
        return [e for e in self._suspends.values() if is_live(e, now)]

    def cancel_suspension(self, id: str) -> SuspendEntry:
        return _pop(self._suspends, id)

    # ready-queue suspensions
    def add_ready_suspension(self, entry: ReadyQSuspendEntry) -> None:
        self._ready[entry.id] = entry

    def ready_suspensions(self, now: float) -> list[ReadyQSuspendEntry]:
        return [e for e in self._ready.values() if is_live(e, now)]

    def cancel_ready_suspension(self, id: str) -> ReadyQSuspendEntry:
        return _pop(self._ready, id)

    # expiry and lookups
    def prune(self, now: float) -> list[BounceEntry | SuspendEntry | ReadyQSuspendEntry]:
        """Drop every entry expired at ``now``; returns them."""
        gone: list[BounceEntry | SuspendEntry | ReadyQSuspendEntry] = []
        for table in (self._bounces, self._suspends, self._ready):
            for id, entry in list(table.items()):
                if not is_live(entry, now):
                    gone.append(table.pop(id))
                    self._bounced.pop(id, None)
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
    state: the entries (the node reads ``state.bounce_for`` etc. to enforce them).
    clock: wall clock, unix seconds.
    """

    def __init__(self, *, bounce_now: Callable[[BounceEntry], MaybeAwaitable],
                 rebind: Callable[[Criteria, dict[str, str], str, bool], MaybeAwaitable],
                 inspect_message: Callable[[str, bool], MaybeAwaitable],
                 inspect_sched_q: Callable[[str, bool, int | None], MaybeAwaitable],
                 ready_q_states: Callable[[list[str] | None], MaybeAwaitable],
                 queue_summary: Callable[[], MaybeAwaitable],
                 state: AdminState | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._bounce_now = bounce_now
        self._rebind = rebind
        self._inspect_message = inspect_message
        self._inspect_sched_q = inspect_sched_q
        self._ready_q_states = ready_q_states
        self._queue_summary = queue_summary
        self.state = state if state is not None else AdminState()
        self.clock = clock

    def _now(self) -> float:
        now = self.clock()
        self.state.prune(now)
        return now

    # bounces
    async def bounce(self, body: Any) -> dict[str, Any]:
        """Add a bounce (it applies to new mail at once), then bounce what's queued."""
        entry = parse_bounce(body, id=str(uuid.uuid4()), now=self._now())
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

    def list_bounces(self) -> list[dict[str, Any]]:
        now = self._now()
        out = []
        for entry in self.state.bounces(now):
            item = entry_json(entry, now)
            item["bounced"] = self.state.bounced_counts(entry.id)
            item["total_bounced"] = sum(item["bounced"].values())
            out.append(item)
        return out

    def cancel_bounce(self, body: Any) -> None:
        id = _cancel_id(body)
        self._now()  # an expired entry is gone: 404
        self.state.cancel_bounce(id)

    # suspensions
    def suspend(self, body: Any) -> dict[str, Any]:
        entry = parse_suspend(body, id=str(uuid.uuid4()), now=self._now())
        self.state.add_suspension(entry)
        return {"id": entry.id}

    def list_suspensions(self) -> list[dict[str, Any]]:
        now = self._now()
        return [entry_json(e, now) for e in self.state.suspensions(now)]

    def cancel_suspension(self, body: Any) -> None:
        id = _cancel_id(body)
        self._now()  # an expired entry is gone: 404
        self.state.cancel_suspension(id)

    def suspend_ready_q(self, body: Any) -> dict[str, Any]:
        entry = parse_ready_suspend(body, id=str(uuid.uuid4()), now=self._now())
        self.state.add_ready_suspension(entry)
        return {"id": entry.id}

    def list_ready_suspensions(self) -> list[dict[str, Any]]:
        now = self._now()
        return [entry_json(e, now) for e in self.state.ready_suspensions(now)]

    def cancel_ready_suspension(self, body: Any) -> None:
        id = _cancel_id(body)
        self._now()  # an expired entry is gone: 404
        self.state.cancel_ready_suspension(id)

    # node reads and actions
    async def rebind(self, body: Any) -> dict[str, Any]:
        req = parse_rebind(body)
        await _call(self._rebind, req.criteria, dict(req.data), req.reason,
                    req.trigger_rebind_event)
        return {}

    async def inspect_message(self, id: str, want_body: bool) -> dict[str, Any] | None:
        return await _call(self._inspect_message, id, want_body)

    async def inspect_sched_q(self, queue_name: str, want_body: bool,
                              limit: int | None) -> dict[str, Any] | None:
        return await _call(self._inspect_sched_q, queue_name, want_body, limit)

    async def ready_q_states(self, queues: list[str] | None) -> dict[str, Any]:
        states = await _call(self._ready_q_states, queues)
        return {"states_by_ready_queue": dict(states or {})}

    async def queue_summary(self) -> dict[str, Any]:
        """The node's queues, each marked with the reason of an admin suspension, if any."""
        summary = await _call(self._queue_summary)
        now = self._now()
        scheduled = []
        for item in summary.get("scheduled", []):
            hold = self.state.suspension_for(item["name"], now)
            scheduled.append({**item, "suspended": item.get("suspended")
                              or (hold.reason if hold else None)})
        ready = []
        for item in summary.get("ready", []):
            hold = self.state.ready_suspension_for(item["name"], now)
            ready.append({**item, "suspended": item.get("suspended")
                          or (hold.reason if hold else None)})
        return {"scheduled": scheduled, "ready": ready}


def _cancel_id(body: Any) -> str:
    body = _check_fields(body, ("id",))
    return _text(body, "id", required=True) or ""

