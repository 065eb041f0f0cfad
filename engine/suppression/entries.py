"""Suppression entries and the pure decisions about them.

Exports:
    Reason                       why a recipient is suppressed: bounce, complaint, admin
    Suppression                  one entry: recipient (lowercased), tenant ("" = every
                                 tenant), reason, detail, created, expires (None = never)
    Filter                       list criteria (recipient, domain, tenant, reason)
    normalize(address) -> str    the key an address is looked up by
    entry_from_record(record, settings, now) -> Suppression | None
    applicable(entries, tenant, now, *, every_tenant_only=False) -> Suppression | None
    refusal(entry) -> Response   the 550 5.7.1 a suppressed recipient gets
    expiry(reason, settings, now) -> float | None
    to_json(entry) / from_json(obj)   the stored and answered shape

Addresses compare case-insensitively (the whole address is lowercased): RFC 5321 §2.4
lets a local part be case-sensitive, but no mailbox provider treats it so, and a list
that missed ``User@x`` after ``user@x`` bounced would not protect the sender.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from engine.config.settings import SuppressionSettings
from engine.records import LogRecord, RecordType, Response, rfc3339

__all__ = [
    "Reason",
    "Suppression",
    "Filter",
    "normalize",
    "entry_from_record",
    "applicable",
    "refusal",
    "expiry",
    "to_json",
    "from_json",
    "format_time",
    "parse_time",
]


class Reason(StrEnum):
    BOUNCE = "bounce"  # a hard bounce (Bounce or OOB record) of a listed classification
    COMPLAINT = "complaint"  # an abuse report (Feedback record) of a listed feedback type
    ADMIN = "admin"  # added through the admin API or CLI (imports included)


@dataclass(frozen=True, slots=True, kw_only=True)
class Suppression:
    recipient: str
    tenant: str = ""  # "" holds for every tenant
    reason: Reason
    detail: str = ""  # classification, feedback type, or the admin's description
    created: float
    expires: float | None = None  # epoch seconds; None: until removed

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now


@dataclass(frozen=True, slots=True, kw_only=True)
class Filter:
    """List criteria; None matches anything. ``tenant=""`` selects entries for every tenant."""

    recipient: str | None = None
    domain: str | None = None
    tenant: str | None = None
    reason: Reason | None = None

    def matches(self, entry: Suppression) -> bool:
        if self.recipient is not None and entry.recipient != normalize(self.recipient):
            return False
        if self.domain is not None and entry.recipient.rpartition("@")[2] != self.domain.lower():
            return False
        if self.tenant is not None and entry.tenant != self.tenant:
            return False
        return self.reason is None or entry.reason == self.reason


def normalize(address: str) -> str:
    """The lookup key of ``address``: stripped of ``<>`` and spaces, lowercased."""
    return address.strip().strip("<>").strip().lower()


def expiry(reason: Reason, settings: SuppressionSettings, now: float) -> float | None:
    """When an entry made now for ``reason`` expires (None: never), from the settings."""
    seconds = {
        Reason.BOUNCE: settings.bounce_expiry,
        Reason.COMPLAINT: settings.complaint_expiry,
        Reason.ADMIN: settings.admin_expiry,
    }[reason]
    return now + seconds if seconds > 0 else None


def _tenant_of(record: LogRecord, settings: SuppressionSettings) -> str:
    if not settings.per_tenant:
        return ""
    tenant = (record.meta or {}).get("tenant")
    return tenant if isinstance(tenant, str) else ""


def entry_from_record(
    record: LogRecord, settings: SuppressionSettings, now: float
) -> Suppression | None:
    """The entry a log record makes, or None.

    A ``Bounce`` or ``OOB`` record suppresses when its reply is permanent (5xx: a 4xx DSN
    says "delayed") and its ``bounce_classification`` is in ``settings.classifications``;
    a ``Feedback`` record when its ARF ``feedback_type`` is in ``settings.feedback_types``.
    With ``per_tenant`` the entry holds for the record's meta ``tenant`` only.
    """
    if not isinstance(record.recipient, str) or "@" not in record.recipient:
        return None
    if record.type in (RecordType.BOUNCE, RecordType.OOB):
        if record.response.code < 500:
            return None
        if record.bounce_classification not in settings.classifications:
            return None
        reason, detail = Reason.BOUNCE, record.bounce_classification
    elif record.type == RecordType.FEEDBACK:
        kind = (record.feedback_report or {}).get("feedback_type")
        if not isinstance(kind, str) or kind.lower() not in settings.feedback_types:
            return None
        reason, detail = Reason.COMPLAINT, kind.lower()
    else:
        return None
    return Suppression(
        recipient=normalize(record.recipient),
        tenant=_tenant_of(record, settings),
        reason=reason,
        detail=detail,
        created=now,
        expires=expiry(reason, settings, now),
    )


def applicable(
    entries: Iterable[Suppression],
    tenant: str | None,
    now: float,
    *,
    every_tenant_only: bool = False,
) -> Suppression | None:
    """The entry that refuses mail to a recipient for ``tenant``, or None.

    entries: the recipient's entries (any tenant). tenant: the message's tenant (None:
    none or not known yet). every_tenant_only: consider only entries for every tenant
    (at SMTP RCPT, before the tenant header has been read). An entry of the message's
    own tenant wins over one for every tenant (its detail is the more specific).
    """
    found: Suppression | None = None
    for entry in entries:
        if entry.expired(now):
            continue
        if entry.tenant == "":
            found = found or entry
        elif not every_tenant_only and tenant is not None and entry.tenant == tenant:
            return entry
    return found


_WHY = {
    Reason.BOUNCE: "hard bounce",
    Reason.COMPLAINT: "complaint",
    Reason.ADMIN: "added by an administrator",
}


def refusal(entry: Suppression) -> Response:
    """``550 5.7.1`` naming the recipient and why it is suppressed (RFC 3463 5.7.1:
    delivery not authorized, message refused)."""
    why = _WHY[entry.reason] + (f": {entry.detail}" if entry.detail else "")
    scope = f" for tenant {entry.tenant}" if entry.tenant else ""
    return Response.parse(
        550, f"5.7.1 <{entry.recipient}> is on the suppression list{scope} ({why})"
    )


def format_time(ts: float | None) -> str | None:
    return None if ts is None else rfc3339(ts)


def parse_time(value: Any) -> float | None:
    """RFC 3339 text or epoch seconds -> epoch seconds; None / "" -> None.
    Raises ValueError naming the value."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected an RFC 3339 time or epoch seconds, got {value!r}")
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"expected an RFC 3339 time such as 2026-01-31T12:00:00Z, got {value!r}"
        ) from None
    if parsed.tzinfo is None:
        raise ValueError(f"time {value!r} has no UTC offset (add Z or +00:00)")
    return parsed.timestamp()


def to_json(entry: Suppression) -> dict[str, Any]:
    """The shape stored in Redis/SQLite and answered by the admin API."""
    return {
        "recipient": entry.recipient,
        "tenant": entry.tenant or None,
        "reason": entry.reason.value,
        "detail": entry.detail,
        "created": format_time(entry.created),
        "expires": format_time(entry.expires),
    }


def from_json(obj: dict[str, Any]) -> Suppression:
    """Inverse of ``to_json``; raises ValueError / KeyError on a malformed object."""
    created = parse_time(obj.get("created"))
    return Suppression(
        recipient=normalize(str(obj["recipient"])),
        tenant=str(obj.get("tenant") or ""),
        reason=Reason(obj.get("reason") or "admin"),
        detail=str(obj.get("detail") or ""),
        created=time.time() if created is None else created,
        expires=parse_time(obj.get("expires")),
    )
