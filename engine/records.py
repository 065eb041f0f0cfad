"""Hand-off records passed between the stages of the mail flow.

Exports:
    EnhancedCode, Response   an SMTP reply (RFC 5321 code + RFC 3463 enhanced code)
    Message                  a spooled message's envelope and scheduling state (no body)
    PeerAddress              the other side of a connection, as log records show it
    LogRecord                one disposition, serialised in KumoMTA's JsonLogRecord shape
    RecordType               the record type names
    Json, JsonObject         a JSON value / object, as json.loads gives and json.dumps takes

All are frozen; change one with ``dataclasses.replace``. Bodies never live in
these records: they stay in the spool and are read when a delivery needs them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeAlias

__all__ = [
    "EnhancedCode",
    "Response",
    "Message",
    "PeerAddress",
    "LogRecord",
    "RecordType",
    "new_message_id",
    "rfc3339",
    "Json",
    "JsonObject",
]

# Read-only containers, so a dict[str, str] or a tuple is a Json too (json.dumps writes a
# tuple as an array); what json.loads returns is always one.
Json: TypeAlias = "Mapping[str, Json] | Sequence[Json] | str | int | float | bool | None"
JsonObject: TypeAlias = "dict[str, Json]"


def new_message_id() -> str:
    """A new spool id: a version-1 UUID as 32 hex digits, as KumoMTA's ``id()``."""
    return uuid.uuid1().hex


def rfc3339(ts: float) -> str:
    """Unix seconds -> RFC 3339 UTC with microseconds (``2026-11-21T19:00:00.123456Z``)."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class EnhancedCode:
    """RFC 3463 ``class.subject.detail``."""

    klass: int
    subject: int
    detail: int

    def __str__(self) -> str:
        return f"{self.klass}.{self.subject}.{self.detail}"

    def to_json(self) -> dict[str, int]:
        return {"class": self.klass, "subject": self.subject, "detail": self.detail}


_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """An SMTP reply, ours or a peer's.

    code: the three-digit reply code.
    enhanced_code: the RFC 3463 code, or None when the text has none.
    content: the reply text without the code, joined to a single line.
    command: the command this answers (``"RCPT TO:<a@b>\\r\\n"``) or None.
    """

    code: int
    enhanced_code: EnhancedCode | None = None
    content: str = ""
    command: str | None = None

    @classmethod
    def parse(cls, code: int, text: str, command: str | None = None) -> Response:
        """Build from a code and raw reply text, lifting a leading enhanced code."""
        line = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
        m = _ENHANCED.match(line)
        enhanced = None
        if m:
            enhanced = EnhancedCode(int(m.group(1)), int(m.group(2)), int(m.group(3)))
            line = line[m.end() :]
        return cls(code=int(code), enhanced_code=enhanced, content=line, command=command)

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def single_line(self) -> str:
        """``"<code> <c.s.d> <content>"``: the text bounce and TSA rules match against."""
        if self.enhanced_code is None:
            return f"{self.code} {self.content}".rstrip()
        return f"{self.code} {self.enhanced_code} {self.content}".rstrip()

    def __str__(self) -> str:
        return self.single_line()

    def to_json(self) -> JsonObject:
        return {
            "code": self.code,
            "enhanced_code": self.enhanced_code.to_json() if self.enhanced_code else None,
            "content": self.content,
            "command": self.command,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """A spooled message: its envelope and scheduling state, never its body.

    id: spool id (32 hex digits, UUID v1).
    sender: envelope sender (``""`` for the null reverse-path).
    recipient: envelope recipient; one message per recipient, as KumoMTA.
    queue: scheduled queue name (``campaign:tenant@domain!routing_domain``).
    meta: JSON-able metadata (tenant, campaign, routing_domain, reception facts, ...).
    created: reception time, unix seconds.
    due: when the next delivery attempt may start, unix seconds.
    num_attempts: delivery attempts made so far.
    size: body size in bytes.
    """

    id: str
    sender: str
    recipient: str
    queue: str
    meta: Mapping[str, Json] = field(default_factory=dict)
    created: float
    due: float
    num_attempts: int = 0
    size: int = 0

    @property
    def recipient_domain(self) -> str:
        return self.recipient.rpartition("@")[2].lower()


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """The other side of a connection: an EHLO/MX name and an address."""

    name: str
    addr: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "addr": self.addr}


class RecordType(StrEnum):
    RECEPTION = "Reception"
    DELIVERY = "Delivery"
    TRANSIENT_FAILURE = "TransientFailure"
    BOUNCE = "Bounce"
    EXPIRATION = "Expiration"
    ADMIN_BOUNCE = "AdminBounce"
    ADMIN_REBIND = "AdminRebind"
    REJECTION = "Rejection"
    OOB = "OOB"  # an asynchronous bounce (RFC 3464 DSN) received for a listener domain
    FEEDBACK = "Feedback"  # an abuse report (RFC 5965 ARF) received for a listener domain
    XFER_OUT = "XferOut"  # a message handed to another node (``engine/xfer``)
    XFER_IN = "XferIn"  # a message taken over from another node
    ADMIN_AUDIT = "AdminAudit"  # Nimbus addition: one per mutating admin API request


@dataclass(frozen=True, slots=True, kw_only=True)
class LogRecord:
    """One disposition; ``to_json()`` gives KumoMTA's JsonLogRecord shape (reference §7)."""

    type: RecordType
    id: str
    sender: str
    recipient: str | list[str]
    queue: str
    site: str
    size: int
    response: Response
    timestamp: float
    created: float
    nodeid: str
    num_attempts: int = 0
    peer_address: PeerAddress | None = None
    bounce_classification: str = "Uncategorized"
    egress_pool: str | None = None
    egress_source: str | None = None
    source_address: Mapping[str, Json] | None = None
    feedback_report: Mapping[str, Json] | None = None
    meta: Mapping[str, Json] = field(default_factory=dict)
    headers: Mapping[str, Json] = field(default_factory=dict)
    delivery_protocol: str | None = None
    reception_protocol: str | None = None
    tls_cipher: str | None = None
    tls_protocol_version: str | None = None
    provider_name: str | None = None
    session_id: str | None = None

    def to_json(self) -> JsonObject:
        out: JsonObject = {
            "type": str(self.type),
            "id": self.id,
            "sender": self.sender,
            "recipient": self.recipient,
            "queue": self.queue,
            "site": self.site,
            "size": self.size,
            "response": self.response.to_json(),
            "peer_address": self.peer_address.to_json() if self.peer_address else None,
            "timestamp": int(self.timestamp),
            "event_time": rfc3339(self.timestamp),
            "created": int(self.created),
            "created_time": rfc3339(self.created),
            "num_attempts": self.num_attempts,
            "bounce_classification": self.bounce_classification,
            "egress_pool": self.egress_pool,
            "egress_source": self.egress_source,
            "source_address": dict(self.source_address) if self.source_address else None,
            "feedback_report": dict(self.feedback_report) if self.feedback_report else None,
            "meta": dict(self.meta),
            "headers": dict(self.headers),
            "delivery_protocol": self.delivery_protocol,
            "reception_protocol": self.reception_protocol,
            "nodeid": self.nodeid,
        }
        # Optional fields are omitted when absent, as KumoMTA does.
        for name in ("tls_cipher", "tls_protocol_version", "provider_name", "session_id"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out
