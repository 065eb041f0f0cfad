"""Asynchronous bounce and complaint reports: RFC 3464 DSNs and RFC 5965 ARF reports.

Exports:
    DsnRecipient   one per-recipient block of a DSN (final recipient, action, status, diagnostic)
    Report         a parsed report: kind (``oob`` / ``arf``), its recipients or ARF fields,
                   and what the original message's headers say (trace header, Message-ID)
    MalformedReport  a ``multipart/report`` that cannot be read, and why
    parse_report(data, *, trace_header) -> Report | MalformedReport | None
                   None when the message is no report at all (ordinary mail)
    decode_trace(value) -> dict | None   the JSON of an ``X-KumoRef`` value (base64)
    oob_response(recipient) -> Response  the SMTP-shaped reply a DSN block reports
    arf_fields(report) -> dict           KumoMTA's ``feedback_report`` object
    report_records(report, *, ...) -> list[LogRecord]   the ``OOB`` records (one per DSN
                   recipient block) or the one ``Feedback`` record of a report

All pure, on the standard library's ``email`` package (no hand-written MIME parser).
A report is matched to the message it is about through our trace header
(``X-KumoRef``: base64 of JSON ``{"_@_":"\\_/","recipient":...}`` plus any meta the
injection copied in), found in the report's ``message/rfc822`` or
``text/rfc822-headers`` part; when that header is absent the original Message-ID and
the DSN's Final-Recipient (or ARF's Original-Rcpt-To) name it instead.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.header
import email.policy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from engine.records import Json, LogRecord, PeerAddress, RecordType, Response

__all__ = [
    "DsnRecipient",
    "Report",
    "MalformedReport",
    "parse_report",
    "decode_trace",
    "oob_response",
    "arf_fields",
    "report_records",
]

_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
_SMTP_DIAGNOSTIC = re.compile(r"^\s*smtp\s*;\s*(\d{3})[ -]?(.*)$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True, kw_only=True)
class DsnRecipient:
    """One per-recipient block of a delivery-status part (RFC 3464 §2.3)."""

    final_recipient: str
    action: str  # failed / delayed / delivered / relayed / expanded
    status: str  # "5.1.1"
    diagnostic: str = ""  # Diagnostic-Code without its type, e.g. "550 5.1.1 no such user"
    remote_mta: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    kind: str  # "oob" (a DSN) or "arf" (a feedback report)
    reporting_mta: str = ""
    recipients: tuple[DsnRecipient, ...] = ()  # oob only
    arf: dict[str, Any] = field(default_factory=dict)  # arf only: the report's fields
    trace: dict[str, Any] | None = None  # our trace header's JSON from the original
    trace_error: str = ""  # the trace header was there but could not be decoded
    original_message_id: str = ""
    original_headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MalformedReport:
    kind: str  # "oob" / "arf" / "" when the report-type was not one we read
    reason: str


def decode_trace(value: str) -> dict[str, Any] | None:
    """The JSON object of a trace header value, or None when it is not ours."""
    try:
        raw = base64.b64decode("".join(value.split()), validate=True)
        obj = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(obj, dict) or obj.get("_@_") != "\\_/":
        return None
    return obj


def _fields(text: str) -> list[dict[str, str]]:
    """RFC 3464 §2.1 groups of ``Name: value`` lines, separated by blank lines (names
    lower-cased, continuation lines folded)."""
    groups: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if current:
                groups.append(current)
            current, last = {}, ""
        elif line[0] in " \t" and last:
            current[last] += " " + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            last = name.strip().lower()
            current[last] = value.strip()
    if current:
        groups.append(current)
    return groups


def _address(value: str) -> str:
    """``rfc822; user@example.com`` -> ``user@example.com``."""
    kind, sep, rest = value.partition(";")
    address = rest if sep else kind
    return address.strip().strip("<>")


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload.decode("utf-8", "replace")
    inner = part.get_payload()
    if isinstance(inner, list):  # message/* parts parse into sub-messages
        return "\n\n".join(m.as_string() for m in inner if isinstance(m, Message))
    return str(inner or "")


def _original_headers(report: Message) -> Message | None:
    for part in report.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return inner[0]
        if ctype == "text/rfc822-headers":
            return email.message_from_string(_part_text(part), policy=email.policy.compat32)
    return None


def _trace_of(original: Message | None, header: str) -> tuple[dict[str, Any] | None, str, str]:
    """(trace JSON, decode error, original Message-ID)."""
    if original is None:
        return None, "", ""
    message_id = str(original.get("Message-ID", "") or "").strip()
    value = original.get(header)
    if value is None:
        return None, "", message_id
    # A reporting MTA may have re-folded it as RFC 2047 encoded words: undo that first.
    try:
        text = str(email.header.make_header(email.header.decode_header(str(value))))
    except (ValueError, LookupError, UnicodeError):
        text = str(value)
    trace = decode_trace(text)
    if trace is None:
        return None, f"{header} header is not a Nimbus/KumoMTA trace header", message_id
    return trace, "", message_id


def parse_report(
    data: bytes, *, trace_header: str = "X-KumoRef"
) -> Report | MalformedReport | None:
    """Read ``data`` as a report. None: not a ``multipart/report`` (ordinary mail)."""
    try:
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
    except Exception as exc:  # the email package is lenient; anything else is malformed
        return MalformedReport("", f"unparsable message: {type(exc).__name__}: {exc}")
    if msg.get_content_type() != "multipart/report":
        return None
    report_type = str(msg.get_param("report-type", "", header="content-type")).lower()
    kind = {"delivery-status": "oob", "feedback-report": "arf"}.get(report_type)
    if kind is None:
        return MalformedReport("", f"report-type {report_type or '(none)'!r} is not read")
    wanted = "message/delivery-status" if kind == "oob" else "message/feedback-report"
    part = next((p for p in msg.walk() if p.get_content_type() == wanted), None)
    if part is None:
        return MalformedReport(kind, f"no {wanted} part")
    groups = _fields(_part_text(part))
    if not groups:
        return MalformedReport(kind, f"the {wanted} part has no fields")
    original = _original_headers(msg)
    trace, trace_error, message_id = _trace_of(original, trace_header)
    headers = {k: str(v) for k, v in original.items()} if original is not None else {}

    def report(reporting_mta: str, **parsed: Any) -> Report:
        return Report(
            kind=kind,
            reporting_mta=_address(reporting_mta),
            trace=trace,
            trace_error=trace_error,
            original_message_id=message_id,
            original_headers=headers,
            **parsed,
        )

    if kind == "arf":
        fields = groups[0]
        if "feedback-type" not in fields:
            return MalformedReport(kind, "no Feedback-Type field")
        return report(fields.get("reporting-mta", ""), arf=fields)
    per_message, blocks = groups[0], groups[1:]
    recipients = tuple(_recipient(b) for b in blocks if "final-recipient" in b)
    if not recipients:
        return MalformedReport(kind, "no per-recipient block with a Final-Recipient")
    bad = next((r for r in recipients if not _STATUS.match(r.status)), None)
    if bad is not None:
        return MalformedReport(kind, f"invalid Status {bad.status!r} for {bad.final_recipient}")
    return report(per_message.get("reporting-mta", ""), recipients=recipients)


def _recipient(block: dict[str, str]) -> DsnRecipient:
    diagnostic = block.get("diagnostic-code", "")
    _, sep, rest = diagnostic.partition(";")
    return DsnRecipient(
        final_recipient=_address(block["final-recipient"]),
        action=block.get("action", "").lower(),
        status=block.get("status", "").split()[0] if block.get("status") else "",
        diagnostic=(rest if sep else diagnostic).strip(),
        remote_mta=_address(block.get("remote-mta", "")),
    )


def oob_response(recipient: DsnRecipient) -> Response:
    """The reply a DSN block reports: its SMTP diagnostic when it has one (``smtp; 550
    5.1.1 ...``), else the Status with a code of its class (5 -> 550, 4 -> 451)."""
    match = _SMTP_DIAGNOSTIC.match(f"smtp; {recipient.diagnostic}")
    if match and recipient.diagnostic[:3].isdigit():
        text = match.group(2).strip()
        if not text.startswith(recipient.status):
            text = f"{recipient.status} {text}".strip()
        return Response.parse(int(match.group(1)), " ".join(text.split()))
    code = {"5": 550, "4": 451}.get(recipient.status[:1], 250)
    detail = f"{recipient.status} {recipient.action}".strip()
    return Response.parse(code, f"{detail} {recipient.diagnostic}".strip())


def arf_fields(report: Report) -> dict[str, Any]:
    """KumoMTA's ``feedback_report`` object (snake_case ARF fields, RFC 5965 §3.1)."""
    f = report.arf
    out: dict[str, Any] = {
        "feedback_type": f.get("feedback-type", "").lower(),
        "user_agent": f.get("user-agent") or None,
        "version": f.get("version") or None,
        "arrival_date": f.get("arrival-date") or f.get("received-date") or None,
        "incidents": int(f["incidents"]) if f.get("incidents", "").isdigit() else None,
        "original_envelope_id": f.get("original-envelope-id") or None,
        "original_mail_from": _address(f["original-mail-from"])
        if "original-mail-from" in f
        else None,
        "original_rcpt_to": _address(f["original-rcpt-to"]) if "original-rcpt-to" in f else None,
        "reported_domain": f.get("reported-domain") or None,
        "reported_uri": f.get("reported-uri") or None,
        "reporting_mta": report.reporting_mta or None,
        "source_ip": f.get("source-ip") or None,
        "authentication_results": f.get("authentication-results") or None,
        "supplemental_trace": report.trace,
    }
    return out


def _meta(report: Report) -> dict[str, Json]:
    """The record's meta: what the trace header carried (the injection's
    ``include_meta_names``) and the original Message-ID."""
    meta: dict[str, Json] = {
        k: v for k, v in (report.trace or {}).items() if k not in ("_@_", "recipient")
    }
    if report.original_message_id:
        meta["original_message_id"] = report.original_message_id
    if report.trace_error:
        meta["trace_error"] = report.trace_error
    return meta


def report_records(
    report: Report,
    *,
    id: str,
    sender: str,
    size: int,
    peer: PeerAddress | None,
    now: float,
    node_id: str,
    classify: Callable[[Response], str],
) -> list[LogRecord]:
    """The records a report becomes. The recipient is the original message's: from our
    trace header, else the DSN's Final-Recipient / the ARF's Original-Rcpt-To."""
    traced = (report.trace or {}).get("recipient")
    meta = _meta(report)

    def record(
        kind: RecordType, recipient: object, response: Response, feedback: dict[str, Any] | None
    ) -> LogRecord:
        return LogRecord(
            type=kind,
            id=id,
            sender=sender,
            recipient=str(recipient or ""),
            queue="",
            site="",
            size=size,
            response=response,
            timestamp=now,
            created=now,
            nodeid=node_id,
            peer_address=peer,
            bounce_classification=classify(response),
            feedback_report=feedback,
            meta=meta,
            reception_protocol="ESMTP",
        )

    if report.kind == "arf":
        fields = arf_fields(report)
        response = Response.parse(250, f"feedback report: {fields['feedback_type']}")
        return [record(RecordType.FEEDBACK, traced or fields["original_rcpt_to"], response, fields)]
    return [
        record(RecordType.OOB, traced or block.final_recipient, oob_response(block), None)
        for block in report.recipients
    ]
