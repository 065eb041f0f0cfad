"""Injection request validation: the ``/api/inject/v1`` body as frozen records (reference §1).

Validate the decoded JSON body strictly and name the first offending field; pure,
no templating (that is engine.reception.inject.build). The request's *shape* is checked
here for the whole body (a malformed shape fails the request); a recipient's address is
checked by ``check_recipient``, once per recipient while building, so an unusable address
fails only that recipient, as in KumoMTA (reference §1: "an error fails only that
recipient") and the check's cost is spread over the build loop.

Exports:
    parse_request(body, max_recipients=) -> InjectRequest   strict validation of the JSON value
    check_recipient(req, index)                raise RecipientInvalid for an unusable address
    InjectRequest, Recipient, Builder, Attachment, Address, TraceHeaders   records

Exceptions::

    InjectError
    ├── RequestInvalid    bad field in the body          -> 400 {"error", "field"}
    │   └── RequestTooLarge  more recipients than allowed -> 413 {"error", "field"}
    ├── RecipientInvalid  one recipient's address        -> that recipient fails (200)
    └── TemplateFailed    template syntax or render error -> 422

Deliberate differences from KumoMTA: ``deferred_generation: true`` and the
``Handlebars`` dialect are rejected as not supported; ``deferred_spool`` is
accepted and ignored (we always spool before answering); JSON ``null`` for an
optional field means "absent".
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email import errors as email_errors
from email import headerregistry, policy
from typing import Any

from engine.reception.json_body import BodyInvalid, check_json
from engine.records import Json

__all__ = [
    "InjectError",
    "RequestInvalid",
    "RequestTooLarge",
    "RecipientInvalid",
    "TemplateFailed",
    "InjectRequest",
    "Recipient",
    "Builder",
    "Attachment",
    "Address",
    "TraceHeaders",
    "parse_request",
    "check_recipient",
]


class InjectError(Exception):
    """Base of every error raised while turning a request into messages."""


class RequestInvalid(InjectError):
    """A field of the request body is missing, of the wrong type or unsupported.

    field: JSON path of the offending value (``recipients[2].email``); ``""`` is the body.
    reason: what was expected, for the ``error`` member of the 400 answer.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field or 'body'}: {reason}")
        self.field = field
        self.reason = reason


class RequestTooLarge(RequestInvalid):
    """More recipients than the per-request limit (``http.max_recipients``)."""


class RecipientInvalid(InjectError):
    """One recipient's address cannot be used; only that recipient fails.

    field: JSON path of the address (``recipients[2].email``). reason: why.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class TemplateFailed(InjectError):
    """A template did not compile, or failed while rendering for a recipient.

    reason: the template engine's message.
    field: JSON path of the template's source (``content.subject``), when known.
    """

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    """A From or Reply-To mailbox; ``name`` is a template."""

    email: str
    name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    """One attachment, never templated.

    data: the payload, base64 already decoded.
    content_type: the MIME type with any parameters (``text/csv; charset=utf-8``).
    content_id: without angle brackets; set, the part is inline in multipart/related.
    """

    data: bytes
    content_type: str
    file_name: str | None = None
    content_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Builder:
    """The ``content`` object: what to build per recipient (text_body or html_body set).

    headers: extra ``(name, value template)`` pairs in request order.
    """

    subject: str | None = None
    from_: Address | None = None
    reply_to: Address | None = None
    headers: tuple[tuple[str, str], ...] = ()
    text_body: str | None = None
    html_body: str | None = None
    amp_html_body: str | None = None
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipient:
    """One envelope recipient; ``metadata`` becomes the message's meta ``extra``."""

    email: str
    name: str | None = None
    substitutions: Mapping[str, Json] = field(default_factory=dict)
    metadata: Mapping[str, Json] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceHeaders:
    """``trace_headers``; only the supplemental header is added here.

    received_header: kept for the HTTP layer, which knows the peer it needs.
    include_meta_names: meta keys copied into the supplemental header's JSON.
    """

    supplemental_header: bool = True
    header_name: str = "X-KumoRef"
    received_header: bool = False
    include_meta_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class InjectRequest:
    """A validated ``/api/inject/v1`` body.

    envelope_sender: MAIL FROM; ``""`` is the null reverse-path.
    content: a whole RFC 5322 message template, or a Builder.
    template_dialect: ``"Jinja"`` or ``"Static"`` (no templating).
    """

    envelope_sender: str
    recipients: tuple[Recipient, ...]
    content: str | Builder
    substitutions: Mapping[str, Json] = field(default_factory=dict)
    template_dialect: str = "Jinja"
    trace_headers: TraceHeaders = field(default_factory=TraceHeaders)


# --- parsing ----------------------------------------------------------------

_TOP_KEYS = frozenset(
    {
        "envelope_sender",
        "recipients",
        "content",
        "substitutions",
        "template_dialect",
        "deferred_generation",
        "deferred_spool",
        "trace_headers",
    }
)
_BUILDER_KEYS = frozenset(
    {
        "subject",
        "from",
        "reply_to",
        "headers",
        "text_body",
        "html_body",
        "amp_html_body",
        "attachments",
    }
)
_KIND = {str: "a string", bool: "a boolean", dict: "an object", list: "an array"}
_ADDRESS = re.compile(r"[^\s@<>]+@[^\s@<>]+")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 §2.2 ftext
# The builder decides the MIME structure, so these cannot come from `headers`.
_RESERVED_HEADERS = frozenset({"content-type", "content-transfer-encoding", "mime-version"})


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _object(value: Any, path: str, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RequestInvalid(path, "expected an object")
    for key in value:
        if key not in allowed:
            raise RequestInvalid(_join(path, key), "unknown field")
    return value


def _field(
    obj: Mapping[str, Any], key: str, path: str, kind: type, *, required: bool = False
) -> Any:
    """obj[key] checked to be of ``kind``; None when absent or null and not required."""
    value = obj.get(key)
    if value is None:
        if required:
            raise RequestInvalid(_join(path, key), "required")
        return None
    if not isinstance(value, kind):
        raise RequestInvalid(_join(path, key), f"expected {_KIND[kind]}")
    return value


def _one_line(value: str | None, where: str) -> None:
    if value is not None and ("\r" in value or "\n" in value):
        raise RequestInvalid(where, "must not contain CR or LF")


def _check_address(value: str, where: str, *, in_header: bool) -> None:
    """Require ``local@domain``; ``in_header`` also requires RFC 5322 addr-spec syntax."""
    if not _ADDRESS.fullmatch(value):
        raise RequestInvalid(where, "expected an address such as user@example.com")
    if in_header:
        try:
            headerregistry.Address(addr_spec=value)
        except (ValueError, email_errors.HeaderParseError) as exc:
            raise RequestInvalid(where, f"not usable in a header: {exc}") from None
        except (AttributeError, TypeError, IndexError) as exc:
            # The stdlib parser itself fails on some malformed input (an unclosed domain
            # literal ending in a backslash raises AttributeError in all_defects): the
            # address is unusable, not the server broken.
            raise RequestInvalid(where, f"not usable in a header ({type(exc).__name__})") from None


def parse_request(body: Json, *, max_recipients: int | None = None) -> InjectRequest:
    """Validate a decoded ``/api/inject/v1`` JSON body (its shape; addresses of
    recipients are ``check_recipient``'s).

    body: the JSON value as ``json.loads`` returns it.
    max_recipients: the most recipients allowed (None: no limit).
    Returns the request as frozen records, attachments decoded.
    Raises RequestTooLarge past ``max_recipients``, RequestInvalid naming the first
    offending field (also for nesting deeper than json_body.MAX_DEPTH and lone
    surrogates, which no message could carry).
    """
    try:
        check_json(body)
    except BodyInvalid as exc:
        raise RequestInvalid(exc.field, exc.reason) from None
    obj = _object(body, "", _TOP_KEYS)
    sender = _field(obj, "envelope_sender", "", str, required=True)
    if sender:
        _check_address(sender, "envelope_sender", in_header=False)
    if obj.get("content") is None:
        raise RequestInvalid("content", "required")
    content = _parse_content(obj["content"])
    recipients = _field(obj, "recipients", "", list, required=True)
    if not recipients:
        raise RequestInvalid("recipients", "must not be empty")
    if max_recipients is not None and len(recipients) > max_recipients:
        raise RequestTooLarge(
            "recipients",
            f"{len(recipients)} recipients exceed the limit of {max_recipients} per request "
            "(http.max_recipients)",
        )
    rcpts = tuple(_parse_recipient(r, f"recipients[{i}]") for i, r in enumerate(recipients))
    dialect = _field(obj, "template_dialect", "", str)
    dialect = "Jinja" if dialect is None else dialect
    if dialect == "Handlebars":
        raise RequestInvalid("template_dialect", "Handlebars is not supported")
    if dialect not in ("Jinja", "Static"):
        raise RequestInvalid("template_dialect", "expected Jinja or Static")
    if _field(obj, "deferred_generation", "", bool):
        raise RequestInvalid("deferred_generation", "not supported")
    _field(obj, "deferred_spool", "", bool)  # Ignored: we always spool before answering.
    return InjectRequest(
        envelope_sender=sender,
        recipients=rcpts,
        content=content,
        substitutions=dict(_field(obj, "substitutions", "", dict) or {}),
        template_dialect=dialect,
        trace_headers=_parse_trace(obj.get("trace_headers")),
    )


def check_recipient(req: InjectRequest, index: int) -> None:
    """Check ``req.recipients[index]``'s address: ``local@domain``, and for a builder
    request (which writes it into ``To:``) RFC 5322 addr-spec syntax.

    Raises RecipientInvalid naming ``recipients[index].email`` and why.
    """
    where = f"recipients[{index}].email"
    try:
        _check_address(
            req.recipients[index].email, where, in_header=isinstance(req.content, Builder)
        )
    except RequestInvalid as exc:
        raise RecipientInvalid(where, exc.reason) from None


def _parse_recipient(value: Any, path: str) -> Recipient:
    obj = _object(value, path, frozenset({"email", "name", "substitutions", "metadata"}))
    email = _field(obj, "email", path, str, required=True)
    name = _field(obj, "name", path, str)
    _one_line(name, f"{path}.name")
    return Recipient(
        email=email,
        name=name,
        substitutions=dict(_field(obj, "substitutions", path, dict) or {}),
        metadata=dict(_field(obj, "metadata", path, dict) or {}),
    )


def _parse_content(value: Any) -> str | Builder:
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise RequestInvalid("content", "expected a string or an object")
    obj = _object(value, "content", _BUILDER_KEYS)
    bodies = {
        k: _field(obj, k, "content", str) for k in ("text_body", "html_body", "amp_html_body")
    }
    if bodies["text_body"] is None and bodies["html_body"] is None:
        raise RequestInvalid("content", "at least one of text_body and html_body is required")
    subject = _field(obj, "subject", "content", str)
    _one_line(subject, "content.subject")
    from_, reply_to = _parse_mailbox(obj, "from"), _parse_mailbox(obj, "reply_to")
    headers = _parse_headers(_field(obj, "headers", "content", dict) or {})
    taken = {n.lower() for n, _ in headers}
    for key, name, given in (
        ("subject", "Subject", subject),
        ("from", "From", from_),
        ("reply_to", "Reply-To", reply_to),
    ):
        if given is not None and name.lower() in taken:
            raise RequestInvalid(f"content.headers.{name}", f"conflicts with content.{key}")
    attachments = _field(obj, "attachments", "content", list) or []
    return Builder(
        subject=subject,
        from_=from_,
        reply_to=reply_to,
        headers=headers,
        **bodies,
        attachments=tuple(
            _parse_attachment(a, f"content.attachments[{i}]") for i, a in enumerate(attachments)
        ),
    )


def _parse_mailbox(builder: Mapping[str, Any], key: str) -> Address | None:
    path = f"content.{key}"
    if builder.get(key) is None:
        return None
    obj = _object(builder[key], path, frozenset({"email", "name"}))
    email = _field(obj, "email", path, str, required=True)
    _check_address(email, f"{path}.email", in_header=True)
    name = _field(obj, "name", path, str)
    _one_line(name, f"{path}.name")
    return Address(email=email, name=name)


def _parse_headers(obj: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    seen: set[str] = set()
    for name, value in obj.items():
        where = f"content.headers.{name}"
        if not _HEADER_NAME.fullmatch(name):
            raise RequestInvalid(where, "not a valid header name")
        if name.lower() in _RESERVED_HEADERS:
            raise RequestInvalid(where, "set by the builder; cannot be given")
        if name.lower() in seen:
            raise RequestInvalid(where, "given twice (header names are case-insensitive)")
        seen.add(name.lower())
        if not isinstance(value, str):
            raise RequestInvalid(where, "expected a string")
        _one_line(value, where)
    return tuple(obj.items())


def _parse_attachment(value: Any, path: str) -> Attachment:
    keys = frozenset({"data", "content_type", "base64", "file_name", "content_id"})
    obj = _object(value, path, keys)
    data = _field(obj, "data", path, str, required=True)
    ctype = _field(obj, "content_type", path, str, required=True)
    parsed = policy.default.header_factory("Content-Type", ctype)
    if parsed.defects or "/" not in ctype:
        raise RequestInvalid(f"{path}.content_type", "expected a MIME type such as image/png")
    if _field(obj, "base64", path, bool):
        raw = _decode_base64(data, f"{path}.data")
    else:
        raw = data.encode("utf-8")
        if parsed.maintype == "text" and "charset" not in parsed.params:
            ctype += "; charset=utf-8"  # A JSON string is UTF-8; MIME text defaults to ASCII.
    cid, file_name = _field(obj, "content_id", path, str), _field(obj, "file_name", path, str)
    _one_line(cid, f"{path}.content_id")
    _one_line(file_name, f"{path}.file_name")
    cid = cid.strip().removeprefix("<").removesuffix(">") if cid else None
    return Attachment(data=raw, content_type=ctype, file_name=file_name, content_id=cid or None)


def _decode_base64(data: str, where: str) -> bytes:
    try:  # Line-wrapped base64 (RFC 2045 §6.8) is common; other junk is not.
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestInvalid(where, "invalid base64") from None


def _parse_trace(value: Any) -> TraceHeaders:
    if value is None:
        return TraceHeaders()
    path = "trace_headers"
    keys = frozenset(
        {"supplemental_header", "header_name", "received_header", "include_meta_names"}
    )
    obj = _object(value, path, keys)
    name = _field(obj, "header_name", path, str)
    if name is not None and not _HEADER_NAME.fullmatch(name):
        raise RequestInvalid(f"{path}.header_name", "not a valid header name")
    names = _field(obj, "include_meta_names", path, list) or []
    for i, meta_name in enumerate(names):
        if not isinstance(meta_name, str):
            raise RequestInvalid(f"{path}.include_meta_names[{i}]", "expected a string")
    supplemental = _field(obj, "supplemental_header", path, bool)
    return TraceHeaders(
        supplemental_header=supplemental is not False,
        header_name=name or "X-KumoRef",
        received_header=bool(_field(obj, "received_header", path, bool)),
        include_meta_names=tuple(names),
    )
