"""The node's status, as the status page and ``GET /api/admin/status/v1`` show it (pure).

Exports:
    Readings       what the node reads from its parts at one moment (``status_readings.py``)
    QueueReading, ReadyReading, Worker     parts of Readings
    NodeStatus     the status: frozen records; ``to_json()`` is the endpoint's body
    build_status(readings) -> NodeStatus   pure: no clock, sockets or node objects
    node_state(draining, not_ready, shedding) -> str   "draining" | "starting" | "shedding" | "up"
    MAIL_TYPES     record types always listed in the rates, in this order

Lists are bounded for a readable page and a small poll: the busiest ``TOP`` scheduled
queues and destinations, ``TOP_READY`` ready queues (busiest, then most connections);
``hidden`` says how many were left out. Ages are seconds since the oldest waiting
message was received. Holds are admin entries (this node) and TSA overlay entries,
soonest expiry first.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from engine.admin.entries import BounceEntry, ReadyQSuspendEntry, SuspendEntry, matches_queue
from engine.queues.naming import QueueName
from engine.reception.shedding import Shedding
from engine.records import Json, JsonObject, RecordType, rfc3339
from engine.shaping.overlay import BounceRule, ConfigOverride, OverlayEntry, Suspension

__all__ = [
    "Readings",
    "QueueReading",
    "ReadyReading",
    "Worker",
    "NodeStatus",
    "build_status",
    "node_state",
    "MAIL_TYPES",
    "TOP",
    "TOP_READY",
]

TOP = 20
TOP_READY = 50
MAIL_TYPES = (
    RecordType.RECEPTION,
    RecordType.DELIVERY,
    RecordType.TRANSIENT_FAILURE,
    RecordType.BOUNCE,
    RecordType.EXPIRATION,
    RecordType.REJECTION,
)
_NOT_RATES = {str(RecordType.ADMIN_AUDIT)}  # control-plane records, not mail


# -- readings in -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueReading:
    """A scheduled queue: its message count and the reception time of its oldest."""

    name: str
    count: int
    oldest: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadyReading:
    """A ready queue. states: ``ReadyQueue.states`` (state -> {context, since}).
    by_queue: its waiting messages per scheduled queue (for the destinations)."""

    name: str
    site: str
    source: str
    count: int
    connections: int
    connection_limit: int
    oldest: float | None = None
    states: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    by_queue: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Worker:
    """A pool of workers the node runs (DKIM signing processes, policy threads)."""

    name: str
    count: int
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Readings:
    """The node at one moment. now: unix seconds. uptime: seconds since the node started.
    not_ready: the acceptor's reason (starting, shutting down) or None. draining: a
    shutdown began. rates_1m / rates_5m: records per type in the trailing window.
    bounces_5m / bounce_totals: Bounce/Expiration/OOB records per classification.
    overlay: TSA (and admin-origin) overlay entries. disk_total / disk_free: bytes of
    the spool filesystem (None: not measured). transfers: ``Transfers.jobs()``.
    warmup: the warm-up status of each warming source (``shaping/warmup.py`` readings)."""

    now: float
    node_id: str
    uptime: float = 0.0
    not_ready: str | None = None
    draining: bool = False
    shedding: Shedding | None = None
    scheduled: Sequence[QueueReading] = ()
    ready: Sequence[ReadyReading] = ()
    rates_1m: Mapping[str, int] = field(default_factory=dict)
    rates_5m: Mapping[str, int] = field(default_factory=dict)
    bounces_5m: Mapping[str, int] = field(default_factory=dict)
    bounce_totals: Mapping[str, int] = field(default_factory=dict)
    admin_bounces: Sequence[BounceEntry] = ()
    admin_suspensions: Sequence[SuspendEntry] = ()
    admin_ready_suspensions: Sequence[ReadyQSuspendEntry] = ()
    overlay: Sequence[OverlayEntry] = ()
    redis_configured: bool = False
    redis_degraded: bool = False
    tsa_configured: bool = False
    tsa_healthy: bool = False
    tsa_synced: bool = False
    spool_messages: int = 0
    spool_bytes: int = 0
    disk_total: int | None = None
    disk_free: int | None = None
    transfers: Sequence[Mapping[str, Json]] = ()
    warmup: Sequence[Mapping[str, Json]] = ()
    workers: Sequence[Worker] = ()


# -- the status out ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    id: str
    state: str
    why: str | None  # one line: why the node is not plainly up
    not_ready: str | None
    shedding: JsonObject | None
    uptime_seconds: float
    workers: list[JsonObject]


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueRow:
    name: str
    count: int
    oldest_age_seconds: float | None
    suspended: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduledSummary:
    messages: int
    queues: int
    oldest_age_seconds: float | None
    top: list[QueueRow]
    hidden: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadySummary:
    messages: int
    queues: int
    connections: int
    oldest_age_seconds: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    domain: str
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Queues:
    scheduled: ScheduledSummary
    ready: ReadySummary
    destinations: list[Destination]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadyRow:
    name: str
    site: str
    source: str
    count: int
    connections: int
    connection_limit: int
    oldest_age_seconds: float | None
    states: list[JsonObject]


@dataclass(frozen=True, slots=True, kw_only=True)
class RateRow:
    type: str
    last_1m: int
    last_5m: int
    per_minute_5m: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BounceRow:
    classification: str
    last_5m: int
    total: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldRow:
    """An admin or TSA entry that holds, bounces or re-configures mail."""

    origin: str  # "admin" | "tsa"
    kind: str
    id: str
    target: str
    reason: str
    expires: str
    expires_in_seconds: float
    detail: str = ""  # an override's option = value


@dataclass(frozen=True, slots=True, kw_only=True)
class Health:
    redis: JsonObject
    tsa: JsonObject


@dataclass(frozen=True, slots=True, kw_only=True)
class SpoolInfo:
    messages: int
    bytes: int
    disk_total_bytes: int | None
    disk_free_bytes: int | None
    disk_used_percent: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus:
    generated: str
    node: NodeInfo
    queues: Queues
    ready_queues: list[ReadyRow]
    ready_queues_hidden: int
    rates: list[RateRow]
    bounces: list[BounceRow]
    holds: list[HoldRow]
    health: Health
    spool: SpoolInfo
    transfers: list[JsonObject]
    warmup: list[JsonObject]

    def to_json(self) -> JsonObject:
        """The body of ``GET /api/admin/status/v1`` (and what the page renders)."""
        out: JsonObject = dataclasses.asdict(self)
        return out


# -- the pure function -------------------------------------------------------------


def node_state(draining: bool, not_ready: str | None, shedding: Shedding | None) -> str:
    """One word for the node: a shutdown wins, then not yet ready, then shedding."""
    if draining:
        return "draining"
    if not_ready:
        return "starting"
    if shedding is not None:
        return "shedding"
    return "up"


def _why(state: str, r: Readings) -> str | None:
    if state == "draining":
        return r.not_ready or "shutting down"
    if state == "starting":
        return r.not_ready
    if r.shedding is not None:
        return f"shedding load ({r.shedding.reason}): {r.shedding.detail}"
    return None


def _age(now: float, oldest: float | None) -> float | None:
    return None if oldest is None else round(max(0.0, now - oldest), 1)


def _oldest(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _destination(queue: str) -> str:
    try:
        return QueueName.parse(queue).destination.lower()
    except ValueError:
        return queue  # a policy's own queue name: shown as it is


def _queues(r: Readings, suspended: Mapping[str, str]) -> Queues:
    busiest = sorted(r.scheduled, key=lambda q: (-q.count, q.name))
    top = [
        QueueRow(
            name=q.name,
            count=q.count,
            oldest_age_seconds=_age(r.now, q.oldest),
            suspended=suspended.get(q.name),
        )
        for q in busiest[:TOP]
    ]
    by_domain: Counter[str] = Counter()
    for q in r.scheduled:
        by_domain[_destination(q.name)] += q.count
    for ready in r.ready:
        for name, count in ready.by_queue.items():
            by_domain[_destination(name)] += count
    destinations = sorted(by_domain.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]
    return Queues(
        scheduled=ScheduledSummary(
            messages=sum(q.count for q in r.scheduled),
            queues=len(r.scheduled),
            oldest_age_seconds=_age(r.now, _oldest([q.oldest for q in r.scheduled])),
            top=top,
            hidden=max(0, len(busiest) - TOP),
        ),
        ready=ReadySummary(
            messages=sum(q.count for q in r.ready),
            queues=len(r.ready),
            connections=sum(q.connections for q in r.ready),
            oldest_age_seconds=_age(r.now, _oldest([q.oldest for q in r.ready])),
        ),
        destinations=[Destination(domain=d, count=n) for d, n in destinations if n > 0],
    )


def _ready_rows(r: Readings) -> list[ReadyRow]:
    busiest = sorted(r.ready, key=lambda q: (-q.count, -q.connections, q.name))
    return [
        ReadyRow(
            name=q.name,
            site=q.site,
            source=q.source,
            count=q.count,
            connections=q.connections,
            connection_limit=q.connection_limit,
            oldest_age_seconds=_age(r.now, q.oldest),
            states=[
                {"state": state, "context": info.get("context", ""), "since": info.get("since")}
                for state, info in sorted(q.states.items())
            ],
        )
        for q in busiest[:TOP_READY]
    ]


def _rates(r: Readings) -> list[RateRow]:
    seen = set(r.rates_5m) | set(r.rates_1m)
    types = [str(t) for t in MAIL_TYPES]
    types += sorted(seen - set(types) - _NOT_RATES)
    return [
        RateRow(
            type=t,
            last_1m=r.rates_1m.get(t, 0),
            last_5m=r.rates_5m.get(t, 0),
            per_minute_5m=round(r.rates_5m.get(t, 0) / 5, 1),
        )
        for t in types
    ]


def _bounces(r: Readings) -> list[BounceRow]:
    names = set(r.bounce_totals) | set(r.bounces_5m)
    rows = [
        BounceRow(classification=n, last_5m=r.bounces_5m.get(n, 0), total=r.bounce_totals.get(n, 0))
        for n in names
    ]
    return sorted(rows, key=lambda b: (-b.last_5m, -b.total, b.classification))


def _scope(**parts: str | None) -> str:
    """``domain=example.com tenant=t``; every queue when nothing is given."""
    return " ".join(f"{k}={v}" for k, v in parts.items() if v) or "every queue"


def _criteria_target(e: BounceEntry | SuspendEntry) -> str:
    if e.queue_names:
        return ", ".join(e.queue_names)
    return _scope(
        domain=e.domain,
        routing_domain=getattr(e, "routing_domain", None),
        tenant=e.tenant,
        campaign=e.campaign,
    )


def _overlay_row(e: OverlayEntry, now: float) -> HoldRow:
    detail = ""
    if isinstance(e, Suspension):
        target = (
            (e.queue or _scope(source=e.source, site=e.site))
            if e.scope == "ready"
            else _scope(domain=e.domain, tenant=e.tenant, campaign=e.campaign)
        )
    elif isinstance(e, BounceRule):
        target = _scope(domain=e.domain, tenant=e.tenant, campaign=e.campaign)
    else:
        assert isinstance(e, ConfigOverride)
        where = {"site": e.site} if e.mx_rollup else {"domain": e.domain}
        target = _scope(**where, source=e.source)
        detail = f"{e.name} = {e.value}"
    return _hold(e.origin, e.kind, e.id, target, e.reason, e.expires, now, detail)


def _hold(
    origin: str,
    kind: str,
    id: str,
    target: str,
    reason: str,
    expires: float,
    now: float,
    detail: str = "",
) -> HoldRow:
    return HoldRow(
        origin=origin,
        kind=kind,
        id=id,
        target=target,
        reason=reason,
        expires=rfc3339(expires),
        expires_in_seconds=round(max(0.0, expires - now), 1),
        detail=detail,
    )


def _holds(r: Readings) -> list[HoldRow]:
    now = r.now
    rows = [
        *(
            _hold("admin", "suspend", e.id, _criteria_target(e), e.reason, e.expires, now)
            for e in r.admin_suspensions
        ),
        *(
            _hold("admin", "suspend-ready-q", e.id, e.name, e.reason, e.expires, now)
            for e in r.admin_ready_suspensions
        ),
        *(
            _hold("admin", "bounce", e.id, _criteria_target(e), e.reason, e.expires, now)
            for e in r.admin_bounces
        ),
        *(_overlay_row(e, now) for e in r.overlay),
    ]
    live = [h for h in rows if h.expires_in_seconds > 0]
    return sorted(live, key=lambda h: (h.expires_in_seconds, h.origin, h.id))


def _tsa_holds(e: Suspension, queue: str) -> bool:
    """Whether TSA scheduled-queue suspension ``e`` covers ``queue`` (None matches any)."""
    try:
        q = QueueName.parse(queue)
    except ValueError:
        return False
    return all(
        want is None or want.lower() == (have or "").lower()
        for want, have in ((e.domain, q.domain), (e.tenant, q.tenant), (e.campaign, q.campaign))
    )


def _suspended_queues(r: Readings) -> dict[str, str]:
    """Scheduled queue -> the reason of the admin or TSA suspension holding it."""
    tsa = [
        e
        for e in r.overlay
        if isinstance(e, Suspension) and e.scope == "scheduled" and e.expires > r.now
    ]
    out: dict[str, str] = {}
    for q in r.scheduled:
        admin = next((e for e in r.admin_suspensions if matches_queue(e, q.name)), None)
        if admin is not None:
            out[q.name] = admin.reason
            continue
        held = next((e for e in tsa if _tsa_holds(e, q.name)), None)
        if held is not None:
            out[q.name] = f"TSA: {held.reason}"
    return out


def _health(r: Readings) -> Health:
    if not r.redis_configured:
        redis = "not configured"
    else:
        redis = "degraded" if r.redis_degraded else "ok"
    if not r.tsa_configured:
        tsa = "not configured"
    elif r.tsa_healthy:
        tsa = "ok"
    else:
        tsa = "unreachable" if r.tsa_synced else "not synced"
    tsa_entries = sum(1 for e in r.overlay if e.origin == "tsa" and e.expires > r.now)
    return Health(
        redis={"state": redis, "configured": r.redis_configured, "degraded": r.redis_degraded},
        tsa={
            "state": tsa,
            "configured": r.tsa_configured,
            "healthy": r.tsa_healthy,
            "synced": r.tsa_synced,
            "entries": tsa_entries,
        },
    )


def _spool(r: Readings) -> SpoolInfo:
    used = None
    if r.disk_total and r.disk_free is not None:
        used = round(100 * (r.disk_total - r.disk_free) / r.disk_total, 1)
    return SpoolInfo(
        messages=r.spool_messages,
        bytes=r.spool_bytes,
        disk_total_bytes=r.disk_total,
        disk_free_bytes=r.disk_free,
        disk_used_percent=used,
    )


def build_status(r: Readings) -> NodeStatus:
    """The status of the node whose readings are ``r``."""
    state = node_state(r.draining, r.not_ready, r.shedding)
    shedding: JsonObject | None = (
        None
        if r.shedding is None
        else {"reason": str(r.shedding.reason), "detail": r.shedding.detail}
    )
    transfer_keys = ("queue_name", "target", "state", "total", "moved", "failed", "left")
    return NodeStatus(
        generated=rfc3339(r.now),
        node=NodeInfo(
            id=r.node_id,
            state=state,
            why=_why(state, r),
            not_ready=r.not_ready,
            shedding=shedding,
            uptime_seconds=round(r.uptime, 1),
            workers=[{"name": w.name, "count": w.count, "detail": w.detail} for w in r.workers],
        ),
        queues=_queues(r, _suspended_queues(r)),
        ready_queues=_ready_rows(r),
        ready_queues_hidden=max(0, len(r.ready) - TOP_READY),
        rates=_rates(r),
        bounces=_bounces(r),
        holds=_holds(r),
        health=_health(r),
        spool=_spool(r),
        transfers=[{k: job.get(k) for k in transfer_keys} for job in r.transfers],
        warmup=_warmup_rows(r.warmup),
    )


def _warmup_rows(sources: Sequence[Mapping[str, Json]]) -> list[JsonObject]:
    """One row per warming source and provider counter: its day, used/allowed in the
    current window, and when the window ends."""
    rows: list[JsonObject] = []
    for source in sources:
        counters = source.get("counters")
        for c in counters if isinstance(counters, Sequence) else ():
            if not isinstance(c, Mapping):
                continue
            rows.append(
                {
                    "source": source.get("source"),
                    "provider": c.get("provider") or "*",
                    "day": source.get("day"),
                    "state": c.get("state"),
                    "used": c.get("used"),
                    "allowed": c.get("allowed"),
                    "window_end": c.get("window_end"),
                }
            )
    return rows
