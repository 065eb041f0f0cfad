"""Admin audit: one ``AdminAudit`` log record per mutating admin API request.

Exports:
    AUDITED_METHODS          the HTTP methods that change state (POST, PUT, PATCH, DELETE)
    TRUSTED_HOST, ANONYMOUS  ``who`` for a trusted-host peer / a request refused before auth
    audit_params(query, body) -> JsonObject    what was asked, credential-like keys redacted
    audit_record(...) -> LogRecord             the record, in KumoMTA's JsonLogRecord shape

The record goes to the NDJSON log with every other record (``logs/writer.py``), so
whoever ships mail logs ships the audit trail too. Shape (README "Log records"):
``type`` ``AdminAudit``, a fresh ``id``, empty envelope fields, ``response``
``{code: <HTTP status>, content: <short reason>, command: "<METHOD> <path>"}``,
``peer_address`` ``{name: "", addr: <peer IP>}``, ``reception_protocol`` ``HTTP`` and
``meta`` ``{admin_user, admin_endpoint, admin_params}``. Read-only GETs are not audited.
Credentials never appear: ``who`` is the authenticated user name only after the
password matched (a refused request is ``ANONYMOUS``, as the user field is where
people paste passwords by mistake), and the Authorization header is never read here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

from engine.reception.json_body import BodyInvalid, decode_json
from engine.records import Json, JsonObject, LogRecord, PeerAddress, RecordType, Response
from engine.records import new_message_id as new_record_id

__all__ = [
    "AUDITED_METHODS",
    "TRUSTED_HOST",
    "ANONYMOUS",
    "audit_params",
    "audit_record",
]

AUDITED_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
TRUSTED_HOST = "trusted host"
ANONYMOUS = "anonymous"

# Admin bodies carry no secrets today; this keeps it so if a future route takes one.
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|credential|authori[sz]ation", re.I)
_REDACTED = "<redacted>"


def _redact(value: Json) -> Json:
    if isinstance(value, Mapping):
        return {
            str(k): _REDACTED if _SECRET_KEY.search(str(k)) else _redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def audit_params(query: Mapping[str, str], body: bytes) -> JsonObject:
    """The request's parameters: query string merged with a JSON object body.

    query: the URL's query parameters; body: the raw request body (maybe empty).
    A body that is not a JSON object is summarised by its size, never copied.
    """
    params: JsonObject = {str(k): v for k, v in query.items()}
    if body.strip():
        try:  # the shared limits: a 100,000-deep body raised RecursionError here (a 500)
            parsed = decode_json(body)
        except BodyInvalid:
            parsed = None
        if isinstance(parsed, dict):
            params.update(parsed)
        else:
            params["body"] = f"<{len(body)} bytes, not a JSON object>"
    redacted = _redact(params)
    assert isinstance(redacted, dict)
    return redacted


def audit_record(
    *,
    who: str,
    peer: str,
    method: str,
    path: str,
    params: JsonObject,
    status: int,
    reason: str,
    node_id: str,
    now: float | None = None,
) -> LogRecord:
    """The ``AdminAudit`` record of one request.

    who: the authenticated admin user, ``TRUSTED_HOST`` or ``ANONYMOUS``;
    peer: the peer's IP; method, path: the endpoint; params: ``audit_params(...)``;
    status, reason: the HTTP answer and its short reason; now: unix seconds (default now).
    """
    ts = time.time() if now is None else now
    endpoint = f"{method} {path}"
    return LogRecord(
        type=RecordType.ADMIN_AUDIT,
        id=new_record_id(),
        sender="",
        recipient="",
        queue="",
        site="",
        size=0,
        response=Response(code=status, content=reason, command=endpoint),
        timestamp=ts,
        created=ts,
        nodeid=node_id,
        peer_address=PeerAddress(name="", addr=peer),
        meta={"admin_user": who, "admin_endpoint": endpoint, "admin_params": params},
        reception_protocol="HTTP",
    )
