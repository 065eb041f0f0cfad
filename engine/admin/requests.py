"""Admin request parsing: request JSON -> records, pure (``id`` and ``now`` passed in).

Exports:
    parse_bounce / parse_suspend / parse_ready_suspend -> the entry records
    parse_rebind(body) -> Rebind             a rebind request
    parse_cancel(body) -> str                the ``id`` of a cancel (DELETE) request
    parse_xfer(body) -> XferRequest          a transfer to another node
    parse_xfer_cancel(body) -> (queue_name, reason)
    Rebind, XferRequest                      frozen records of those requests
    AdminInputError                          a missing or malformed field (HTTP 400)
    DEFAULT_DURATION                         an entry's lifetime when none is given

Unknown fields are refused, as KumoMTA's ``deny_unknown_fields``. Entries live until
``expires`` (``duration``, default 5 minutes, or an RFC 3339 ``expires``, which wins).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from engine.admin.entries import BounceEntry, Criteria, ReadyQSuspendEntry, SuspendEntry
from engine.config.units import parse_duration, parse_url_prefix
from engine.records import Json

__all__ = [
    "parse_bounce",
    "parse_suspend",
    "parse_ready_suspend",
    "parse_rebind",
    "parse_cancel",
    "Rebind",
    "parse_xfer",
    "parse_spool_compact",
    "parse_xfer_cancel",
    "XferRequest",
    "AdminInputError",
    "DEFAULT_DURATION",
]

DEFAULT_DURATION = 300.0
"""KumoMTA's default lifetime of a bounce or suspension: 5 minutes."""


class AdminInputError(ValueError):
    """A request field is missing or malformed (HTTP 400)."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Rebind:
    """A rebind request: set ``data`` as meta on matching messages (queue moves follow)."""

    criteria: Criteria
    data: Mapping[str, str]
    reason: str
    trigger_rebind_event: bool = False
    always_flush: bool = False
    suppress_logging: bool = False


def _expiry(body: Mapping[str, Json], now: float) -> float:
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
        return max(now, when.astimezone(UTC).timestamp())
    duration = body.get("duration")
    if duration is None:
        return now + DEFAULT_DURATION
    if not isinstance(duration, (str, int, float)):
        raise AdminInputError("duration", f'expected a duration like "1h", got {duration!r}')
    try:
        return now + parse_duration(duration)
    except (ValueError, TypeError) as exc:
        raise AdminInputError("duration", str(exc)) from None


def _check_fields(body: Json, allowed: Iterable[str]) -> Mapping[str, Json]:
    # Unknown fields are refused (KumoMTA: deny_unknown_fields): a misspelt
    # "domian" must not silently become a bounce of everything.
    if not isinstance(body, Mapping):
        raise AdminInputError(None, "request body must be a JSON object")
    allowed = set(allowed)
    for key in body:
        if key not in allowed:
            raise AdminInputError(key, "unknown field")
    return body


def _text(body: Mapping[str, Json], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise AdminInputError(key, "is required")
        return None
    if not isinstance(value, str) or not value.strip():
        # An empty criterion would otherwise widen the match to every queue.
        raise AdminInputError(key, "must be a non-empty string")
    return value


def _flag(body: Mapping[str, Json], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise AdminInputError(key, "must be true or false")
    return value


def _names(body: Mapping[str, Json]) -> tuple[str, ...]:
    value = body.get("queue_names")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise AdminInputError("queue_names", "must be a list of queue names")
    return tuple(value)


_CRITERIA = ("domain", "tenant", "campaign")
_LIFETIME = ("reason", "duration", "expires")


def parse_bounce(body: Json, *, id: str, now: float) -> BounceEntry:
    """A ``POST /api/admin/bounce/v1`` body as a BounceEntry; AdminInputError names the field."""
    body = _check_fields(
        body, (*_CRITERIA, "routing_domain", "queue_names", *_LIFETIME, "suppress_logging")
    )
    return BounceEntry(
        id=id,
        reason=_text(body, "reason", required=True) or "",
        created=now,
        expires=_expiry(body, now),
        domain=_text(body, "domain"),
        routing_domain=_text(body, "routing_domain"),
        tenant=_text(body, "tenant"),
        campaign=_text(body, "campaign"),
        queue_names=_names(body),
        suppress_logging=_flag(body, "suppress_logging"),
    )


def parse_suspend(body: Json, *, id: str, now: float) -> SuspendEntry:
    """A ``POST /api/admin/suspend/v1`` body as a SuspendEntry."""
    body = _check_fields(body, (*_CRITERIA, "queue_names", *_LIFETIME))
    return SuspendEntry(
        id=id,
        reason=_text(body, "reason", required=True) or "",
        created=now,
        expires=_expiry(body, now),
        domain=_text(body, "domain"),
        tenant=_text(body, "tenant"),
        campaign=_text(body, "campaign"),
        queue_names=_names(body),
    )


def parse_ready_suspend(body: Json, *, id: str, now: float) -> ReadyQSuspendEntry:
    """A ``POST /api/admin/suspend-ready-q/v1`` body as a ReadyQSuspendEntry."""
    body = _check_fields(body, ("name", *_LIFETIME))
    return ReadyQSuspendEntry(
        id=id,
        name=_text(body, "name", required=True) or "",
        reason=_text(body, "reason", required=True) or "",
        created=now,
        expires=_expiry(body, now),
    )


def parse_rebind(body: Json) -> Rebind:
    """A ``POST /api/admin/rebind/v1`` body; ``data`` must map strings to strings."""
    body = _check_fields(
        body,
        (
            *_CRITERIA,
            "routing_domain",
            "reason",
            "data",
            "always_flush",
            "trigger_rebind_event",
            "suppress_logging",
        ),
    )
    data = body.get("data")
    if not isinstance(data, Mapping) or not data:
        raise AdminInputError("data", "must be a non-empty object of meta name -> value")
    if not all(isinstance(k, str) and k and isinstance(v, str) for k, v in data.items()):
        raise AdminInputError("data", "names and values must be strings")
    criteria = Criteria(
        domain=_text(body, "domain"),
        routing_domain=_text(body, "routing_domain"),
        tenant=_text(body, "tenant"),
        campaign=_text(body, "campaign"),
    )
    return Rebind(
        criteria=criteria,
        data={k: v for k, v in data.items() if isinstance(v, str)},  # all are, checked above
        reason=_text(body, "reason", required=True) or "",
        trigger_rebind_event=_flag(body, "trigger_rebind_event"),
        always_flush=_flag(body, "always_flush"),
        suppress_logging=_flag(body, "suppress_logging"),
    )


def parse_cancel(body: Json) -> str:
    """A cancel request body (``{"id": ...}``) -> the id."""
    body = _check_fields(body, ("id",))
    return _text(body, "id", required=True) or ""


@dataclass(frozen=True, slots=True, kw_only=True)
class XferRequest:
    """``POST /api/admin/xfer/v1``: move the selected queues' messages to ``target``."""

    criteria: Criteria
    target: str
    reason: str


def _selection(body: Mapping[str, Json]) -> Criteria:
    """The queues an xfer or retry-now selects: criteria, or ``everything: true`` alone.
    Unlike KumoMTA an empty selection is refused rather than taken as every queue."""
    criteria = Criteria(
        domain=_text(body, "domain"),
        routing_domain=_text(body, "routing_domain"),
        tenant=_text(body, "tenant"),
        campaign=_text(body, "campaign"),
        queue_names=_names(body),
    )
    everything = _flag(body, "everything")
    selects = criteria != Criteria()
    if everything and selects:
        raise AdminInputError("everything", "cannot be combined with other criteria")
    if not everything and not selects:
        raise AdminInputError(
            None,
            "select queues with domain, routing_domain, campaign, tenant or queue_names, "
            "or set everything: true",
        )
    return criteria


def parse_xfer(body: Json) -> XferRequest:
    """KumoMTA's XferV1Request (``domain``, ``routing_domain``, ``campaign``, ``tenant``,
    ``queue_names``, ``reason``, ``target``), plus ``everything``. Unlike KumoMTA, a
    request that selects nothing is refused rather than moving every queue: say
    ``everything: true`` for that (as kcli's ``--everything``)."""
    body = _check_fields(
        body, (*_CRITERIA, "routing_domain", "queue_names", "reason", "target", "everything")
    )
    raw_target = _text(body, "target", required=True) or ""
    try:
        target = parse_url_prefix(raw_target)
    except ValueError as exc:
        raise AdminInputError("target", str(exc)) from None
    criteria = _selection(body)
    return XferRequest(
        criteria=criteria, target=target, reason=_text(body, "reason", required=True) or ""
    )


def parse_xfer_cancel(body: Json) -> tuple[str, str]:
    """KumoMTA's XferCancelV1Request: ``queue_name`` (an xfer queue) and ``reason``."""
    body = _check_fields(body, ("queue_name", "reason"))
    return (
        _text(body, "queue_name", required=True) or "",
        _text(body, "reason", required=True) or "",
    )


def parse_retry_now(body: Json) -> Criteria:
    """Nimbus's retry-now: ``domain``, ``routing_domain``, ``tenant``, ``campaign``,
    ``queue_names`` select scheduled queues (as a bounce does), or ``everything: true``;
    an empty selection is refused. ``reason`` is optional (audited)."""
    body = _check_fields(
        body, (*_CRITERIA, "routing_domain", "queue_names", "everything", "reason")
    )
    _text(body, "reason")
    return _selection(body)


def parse_abort_conn(body: Json) -> tuple[str, str]:
    """KumoMTA's AbortReadyQueueConnRequest: ``queue_name`` and ``session_id``."""
    body = _check_fields(body, ("queue_name", "session_id"))
    return (
        _text(body, "queue_name", required=True) or "",
        _text(body, "session_id", required=True) or "",
    )


def parse_spool_compact(body: Json) -> str:
    """KumoMTA's SpoolCompactV1Request: ``{"name": "data"}``."""
    body = _check_fields(body, ("name",))
    return _text(body, "name", required=True) or ""


def parse_log_filter_request(body: Json) -> str:
    """KumoMTA's SetDiagnosticFilterRequest: ``{"filter": "kumod=trace"}``."""
    body = _check_fields(body, ("filter",))
    return _text(body, "filter", required=True) or ""
