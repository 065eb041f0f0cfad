"""The suppression admin requests (``/api/admin/suppression/v1``): parsing and answers.

Exports:
    MAX_ENTRIES                 entries one POST may add
    list_filter(query) -> (Filter, limit)          GET query -> criteria (pure)
    parse_add(body, settings, now) -> list[Suppression]   POST body -> entries (pure)
    parse_remove(body) -> (recipient, tenant)      DELETE body (pure)
    answer_list(entries, limit) -> dict            ``{"entries", "total", "truncated"}``

POST body: one entry object, or ``{"entries": [entry, ...]}`` (imports)::

    {"recipient": "a@b.example",        required
     "tenant": "acme",                  optional: only this tenant's mail (default: all)
     "reason": "admin",                 admin | bounce | complaint (imports keep theirs)
     "detail": "asked to be removed",   free text, listed and in the 550's text
     "duration": "30d" | "expires": RFC 3339    optional: default suppression.admin_expiry
     "created": RFC 3339}               optional (imports): default now

All fields are validated before anything is stored (one bad entry: 400, nothing added).
Raises AdminInputError naming the field (``entries[3].recipient``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.admin.requests import AdminInputError
from engine.config.settings import SuppressionSettings
from engine.config.units import parse_duration
from engine.suppression.entries import (
    Filter,
    Reason,
    Suppression,
    expiry,
    normalize,
    parse_time,
    to_json,
)

__all__ = ["MAX_ENTRIES", "list_filter", "parse_add", "parse_remove", "answer_list"]

MAX_ENTRIES = 10_000
DEFAULT_LIMIT = 1000

_ADD_FIELDS = {"recipient", "tenant", "reason", "detail", "duration", "expires", "created"}


def _reason(value: Any, field: str) -> Reason:
    try:
        return Reason(str(value).lower())
    except ValueError:
        raise AdminInputError(field, f"must be bounce, complaint or admin, got {value!r}") from None


def list_filter(query: Mapping[str, str]) -> tuple[Filter, int]:
    """GET query (``recipient``, ``domain``, ``tenant``, ``reason``, ``limit``) -> criteria
    and the most entries to answer (default 1000; 0: all)."""
    unknown = sorted(set(query) - {"recipient", "domain", "tenant", "reason", "limit"})
    if unknown:
        raise AdminInputError(unknown[0], "unknown parameter")
    limit = DEFAULT_LIMIT
    if query.get("limit", "").strip():
        try:
            limit = int(query["limit"])
        except ValueError:
            limit = -1
        if limit < 0:
            raise AdminInputError("limit", "must be a non-negative integer")
    reason = query.get("reason", "").strip()
    return (
        Filter(
            recipient=query.get("recipient", "").strip() or None,
            domain=query.get("domain", "").strip().lower() or None,
            tenant=query["tenant"].strip() if "tenant" in query else None,
            reason=_reason(reason, "reason") if reason else None,
        ),
        limit,
    )


def _entry(obj: Any, field: str, settings: SuppressionSettings, now: float) -> Suppression:
    if not isinstance(obj, dict):
        raise AdminInputError(field or None, "must be a JSON object")
    prefix = f"{field}." if field else ""
    unknown = sorted(set(obj) - _ADD_FIELDS)
    if unknown:
        raise AdminInputError(prefix + unknown[0], "unknown field")
    recipient = obj.get("recipient")
    if not isinstance(recipient, str) or "@" not in recipient or recipient.split() != [recipient]:
        raise AdminInputError(prefix + "recipient", "is required: an address such as a@b.example")
    for name in ("tenant", "detail"):
        if obj.get(name) is not None and not isinstance(obj[name], str):
            raise AdminInputError(prefix + name, "must be a string")
    reason = _reason(obj["reason"], prefix + "reason") if obj.get("reason") else Reason.ADMIN
    try:
        created = parse_time(obj.get("created"))
    except ValueError as exc:
        raise AdminInputError(prefix + "created", str(exc)) from None
    created = now if created is None else created
    try:
        expires = parse_time(obj.get("expires"))
    except ValueError as exc:
        raise AdminInputError(prefix + "expires", str(exc)) from None
    if expires is None and obj.get("duration") is not None:
        try:
            expires = now + parse_duration(obj["duration"])
        except ValueError as exc:
            raise AdminInputError(prefix + "duration", str(exc)) from None
    elif expires is None:
        expires = expiry(reason, settings, now)
    return Suppression(
        recipient=normalize(recipient),
        tenant=obj.get("tenant") or "",
        reason=reason,
        detail=obj.get("detail") or "",
        created=created,
        expires=expires,
    )


def parse_add(body: Any, settings: SuppressionSettings, now: float) -> list[Suppression]:
    """The entries a POST adds (every one validated first)."""
    if isinstance(body, dict) and "entries" in body:
        items = body["entries"]
        if set(body) != {"entries"}:
            raise AdminInputError(sorted(set(body) - {"entries"})[0], "unknown field")
        if not isinstance(items, list) or not items:
            raise AdminInputError("entries", "must be a non-empty list of entries")
        if len(items) > MAX_ENTRIES:
            raise AdminInputError("entries", f"at most {MAX_ENTRIES} entries per request")
        return [_entry(o, f"entries[{i}]", settings, now) for i, o in enumerate(items)]
    return [_entry(body, "", settings, now)]


def parse_remove(body: Any) -> tuple[str, str]:
    """DELETE ``{"recipient", "tenant"?}`` -> (normalized recipient, tenant or "")."""
    if not isinstance(body, dict):
        raise AdminInputError(None, "body must be a JSON object")
    unknown = sorted(set(body) - {"recipient", "tenant"})
    if unknown:
        raise AdminInputError(unknown[0], "unknown field")
    recipient = body.get("recipient")
    if not isinstance(recipient, str) or "@" not in recipient:
        raise AdminInputError("recipient", "is required: an address such as a@b.example")
    tenant = body.get("tenant")
    if tenant is not None and not isinstance(tenant, str):
        raise AdminInputError("tenant", "must be a string")
    return normalize(recipient), tenant or ""


def answer_list(entries: list[Suppression], limit: int) -> dict[str, Any]:
    """The GET answer: the first ``limit`` entries (0: all), the total, whether cut."""
    shown = entries if limit == 0 else entries[:limit]
    return {
        "entries": [to_json(e) for e in shown],
        "total": len(entries),
        "truncated": len(shown) < len(entries),
    }
