"""Realistic asynchronous reports for tests: RFC 3464 DSNs and RFC 5965 ARF reports, written
out as a receiving MTA sends them (raw MIME: the stdlib generator cannot write a
message/delivery-status part from text)."""

from __future__ import annotations

import base64
import email.policy
import json
from email.message import EmailMessage

__all__ = ["trace_value", "original", "dsn", "arf"]

_BOUNDARY = "=_report_boundary_"


def trace_value(recipient: str, **meta: object) -> str:
    """An X-KumoRef value as Nimbus (and KumoMTA) writes it."""
    payload = {"_@_": "\\_/", "recipient": recipient, **meta}
    return base64.b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def original(
    recipient: str = "user@dest.test", *, trace: str | None = None, refold: bool = False
) -> EmailMessage:
    """The message a report is about; ``refold``: its trace header re-encoded as RFC 2047
    words, as some reporting MTAs rewrite long headers."""
    policy = email.policy.default if refold else email.policy.default.clone(max_line_length=998)
    msg = EmailMessage(policy=policy)
    if trace is not None:
        msg["X-KumoRef"] = trace
    msg["From"] = "news@sender.test"
    msg["To"] = recipient
    msg["Subject"] = "Our spring sale"
    msg["Message-ID"] = "<orig-1@sender.test>"
    msg.set_content("Hello\n")
    return msg


def _assemble(report_type: str, parts: list[tuple[str, str]]) -> bytes:
    lines = [
        "From: MAILER-DAEMON@mx.dest.test",
        "To: bounces@bounce.test",
        "Subject: Report",
        "Message-ID: <report-1@mx.dest.test>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type={report_type}; boundary="{_BOUNDARY}"',
        "",
        "This is a MIME-encapsulated report.",
    ]
    for ctype, body in parts:
        lines += [f"--{_BOUNDARY}", f"Content-Type: {ctype}", "", body.rstrip("\n")]
    lines += [f"--{_BOUNDARY}--", ""]
    return "\r\n".join("\r\n".join(lines).split("\n")).replace("\r\r\n", "\r\n").encode()


def _original_part(attach: EmailMessage | None, headers_only: bool) -> list[tuple[str, str]]:
    if attach is None:
        return []
    text = attach.as_string()
    if headers_only:
        return [("text/rfc822-headers", text.split("\n\n", 1)[0] + "\n")]
    return [("message/rfc822", text)]


def dsn(
    *,
    status: str = "5.1.1",
    action: str = "failed",
    diagnostic: str = "smtp; 550 5.1.1 <user@dest.test>: Recipient address rejected",
    recipient: str = "user@dest.test",
    attach: EmailMessage | None = None,
    headers_only: bool = False,
    report_part: bool = True,
) -> bytes:
    parts = [("text/plain", "Your message could not be delivered.\n")]
    if report_part:
        parts.append(
            (
                "message/delivery-status",
                "Reporting-MTA: dns; mx.dest.test\n"
                "Arrival-Date: Thu, 3 Dec 2026 10:00:00 +0000\n\n"
                f"Final-Recipient: rfc822; {recipient}\n"
                f"Action: {action}\n"
                f"Status: {status}\n"
                "Remote-MTA: dns; mx.dest.test\n"
                f"Diagnostic-Code: {diagnostic}\n",
            )
        )
    return _assemble("delivery-status", parts + _original_part(attach, headers_only))


def arf(
    *,
    feedback_type: str | None = "abuse",
    attach: EmailMessage | None = None,
    headers_only: bool = False,
    report_type: str = "feedback-report",
) -> bytes:
    fields = "" if feedback_type is None else f"Feedback-Type: {feedback_type}\n"
    fields += (
        "User-Agent: SomeGenerator/1.0\n"
        "Version: 1\n"
        "Original-Mail-From: <news@sender.test>\n"
        "Original-Rcpt-To: <user@dest.test>\n"
        "Arrival-Date: Thu, 3 Dec 2026 10:00:00 +0000\n"
        "Reporting-MTA: dns; fbl.dest.test\n"
        "Source-IP: 192.0.2.1\n"
        "Incidents: 1\n"
    )
    parts = [
        ("text/plain", "This is an email abuse report.\n"),
        ("message/feedback-report", fields),
    ]
    return _assemble(report_type, parts + _original_part(attach, headers_only))
