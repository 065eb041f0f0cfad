"""The node-to-node transfer request, and what its answers mean (pure).

Exports:
    MEDIA_TYPE                 Content-Type of a transfer body
    PATH                       the receiving route
    Transfer                   a decoded request: the message, its body, the sending node
    WireError                  a body that is not a transfer (HTTP 422 at the receiver)
    encode(msg, data, from_node) -> bytes
    decode(body) -> Transfer
    Verdict, verdict(status, body) -> Verdict   the sender's reading of an answer
    xfer_queue_name(target) / target_of(queue_name)   KumoMTA's xfer queue names

A body is one line of JSON (the envelope and schedule, the SHA-256 of the message
bytes, the sending node's id), a newline, then the message bytes unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from engine.config.units import parse_url_prefix
from engine.records import Json, Message

__all__ = [
    "MEDIA_TYPE",
    "PATH",
    "VERSION",
    "Transfer",
    "WireError",
    "encode",
    "decode",
    "Verdict",
    "verdict",
    "xfer_queue_name",
    "target_of",
]

MEDIA_TYPE = "application/vnd.nimbus.xfer.v1"
PATH = "/api/xfer/inject/v1"
VERSION = 1
XFER_QUEUE_SUFFIX = ".xfer.kumomta.internal"  # KumoMTA's XferProtocol::to_queue_name


class WireError(ValueError):
    """The body is not a well-formed transfer; the text says what is wrong."""


@dataclass(frozen=True, slots=True)
class Transfer:
    msg: Message
    data: bytes
    from_node: str


def encode(msg: Message, data: bytes, *, from_node: str) -> bytes:
    head = {
        "v": VERSION,
        "id": msg.id,
        "sender": msg.sender,
        "recipient": msg.recipient,
        "queue": msg.queue,
        "meta": msg.meta,
        "created": msg.created,
        "due": msg.due,
        "num_attempts": msg.num_attempts,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "from_node": from_node,
    }
    return json.dumps(head, separators=(",", ":"), ensure_ascii=True).encode() + b"\n" + data


def _field(head: Mapping[str, Json], name: str, kind: type | tuple[type, ...]) -> Json:
    if name not in head:
        raise WireError(f"{name}: missing")
    value = head[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise WireError(f"{name}: wrong type {type(value).__name__}")
    return value


def decode(body: bytes) -> Transfer:
    """Parse a transfer body; WireError names the first problem."""
    line, sep, data = body.partition(b"\n")
    if not sep:
        raise WireError("no envelope line (JSON, then a newline, then the message)")
    try:
        head = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"envelope is not JSON: {exc}") from None
    if not isinstance(head, dict):
        raise WireError("envelope is not a JSON object")
    if head.get("v") != VERSION:
        raise WireError(f"v: unsupported version {head.get('v')!r} (this node speaks {VERSION})")
    id = str(_field(head, "id", str))
    if not id or len(id) > 128 or not id.isprintable():
        raise WireError("id: must be 1-128 printable characters")
    meta = _field(head, "meta", dict)
    size = _field(head, "size", int)
    if size != len(data):
        raise WireError(f"size: envelope says {size} bytes, body has {len(data)}")
    if _field(head, "sha256", str) != hashlib.sha256(data).hexdigest():
        raise WireError("sha256: the message bytes do not match their digest")
    attempts = _field(head, "num_attempts", int)
    if not isinstance(attempts, int) or attempts < 0:
        raise WireError("num_attempts: must be 0 or more")
    created = _field(head, "created", (int, float))
    due = _field(head, "due", (int, float))
    assert isinstance(created, (int, float)) and isinstance(due, (int, float))
    assert isinstance(meta, dict)
    msg = Message(
        id=id,
        sender=str(_field(head, "sender", str)),
        recipient=str(_field(head, "recipient", str)),
        queue=str(_field(head, "queue", str)),
        meta=meta,
        created=float(created),
        due=float(due),
        num_attempts=attempts,
        size=len(data),
    )
    if not msg.recipient or not msg.queue:
        raise WireError("recipient and queue must not be empty")
    return Transfer(msg=msg, data=data, from_node=str(_field(head, "from_node", str)))


class Verdict(StrEnum):
    MOVED = "moved"  # stored by the peer: delete our copy
    DUPLICATE = "duplicate"  # the peer already had it: delete our copy
    TRY_LATER = "try_later"  # the peer is busy, stopping or unreachable: another peer, or later
    SELF = "self"  # the "peer" is this node: never send there again
    PEER_REFUSED = "peer_refused"  # this peer refuses every transfer (secret, policy)
    MESSAGE_REFUSED = "message_refused"  # this peer refuses this message (too large, bad)


def verdict(status: int | None, body: Json = None) -> Verdict:
    """What an answer means to the sender; ``status`` None: no answer (connect error,
    timeout, connection lost). Nothing but a 200 lets the sender delete its copy."""
    if status == 200:
        if isinstance(body, Mapping) and body.get("duplicate") is True:
            return Verdict.DUPLICATE
        return Verdict.MOVED
    if status is None or status in (408, 429) or status >= 500:
        return Verdict.TRY_LATER
    if status == 409:
        return Verdict.SELF
    if status in (413, 422):
        return Verdict.MESSAGE_REFUSED
    return Verdict.PEER_REFUSED  # 401, 403, 404 (not a nimbus node), other 4xx


def xfer_queue_name(target: str) -> str:
    """KumoMTA's name of the queue holding messages bound for ``target`` (its URL with
    the trailing slash a URL prints with: ``http://10.0.0.2:8000/.xfer.kumomta.internal``)."""
    return f"{target.rstrip('/')}/{XFER_QUEUE_SUFFIX}"


def target_of(queue_name: str) -> str | None:
    """The target of an xfer queue name, or None when it is not one."""
    if not queue_name.endswith(XFER_QUEUE_SUFFIX):
        return None
    try:
        return parse_url_prefix(queue_name[: -len(XFER_QUEUE_SUFFIX)])
    except ValueError:
        return None
