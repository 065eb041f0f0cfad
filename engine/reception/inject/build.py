"""Injection message building: the templating part of ``POST /api/inject/v1`` (reference §1).

Compile a validated request's templates once, then build one RFC 5322 message per
recipient. No sockets, spool or clocks: the HTTP handler passes ``now`` in and owns
queueing, logging and status codes. Validation (parse_request, the records and
errors) is ``engine.reception.inject.request``.

Exports:
    Templates(req)                             the request's templates, compiled once
    build_message(req, templates, rcpt, ...)   one CRLF message for one recipient
    template_variables(req, rcpt)              what a recipient's templates see
    trace_header(trace, recipient, meta)       the ``X-KumoRef`` supplemental header line

As in KumoMTA (MiniJinja names the template ``N.html``), ``html_body`` and
``amp_html_body`` are autoescaped; everything else is rendered verbatim. Undefined
variables render empty (MiniJinja's lenient default); using one (``{{ x.y }}``)
fails the render.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from email import errors as email_errors
from email import headerregistry, policy
from email.message import MIMEPart
from email.utils import format_datetime, formataddr, make_msgid
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from engine.reception.inject.request import (
    Attachment,
    Builder,
    InjectRequest,
    Recipient,
    TemplateFailed,
    TraceHeaders,
)
from engine.records import Json

__all__ = ["Templates", "build_message", "template_variables", "trace_header"]

# --- templates --------------------------------------------------------------

_PLAIN = SandboxedEnvironment(autoescape=False)
_HTML = SandboxedEnvironment(autoescape=True)


def _sources(content: str | Builder) -> Iterator[tuple[str, str, bool]]:
    """(field path, template source, is HTML) for every templated field."""
    if isinstance(content, str):
        yield "content", content, False
        return
    for key, html in (
        ("subject", False),
        ("text_body", False),
        ("html_body", True),
        ("amp_html_body", True),
    ):
        source = getattr(content, key)
        if source is not None:
            yield f"content.{key}", source, html
    for key, box in (("from", content.from_), ("reply_to", content.reply_to)):
        if box is not None and box.name is not None:
            yield f"content.{key}.name", box.name, False
    for name, value in content.headers:
        yield f"content.headers.{name}", value, False


class Templates:
    """A request's templates, compiled once and rendered per recipient.

    req: the validated request; with the ``Static`` dialect nothing is compiled
        and sources are returned as they are.
    Raises TemplateFailed naming the field whose template does not compile.
    """

    __slots__ = ("_static", "_sources", "_compiled")

    def __init__(self, req: InjectRequest) -> None:
        self._static = req.template_dialect == "Static"
        self._sources = {path: source for path, source, _ in _sources(req.content)}
        self._compiled: dict[str, jinja2.Template] = {}
        if not self._static:
            for path, source, html in _sources(req.content):
                try:
                    self._compiled[path] = (_HTML if html else _PLAIN).from_string(source)
                except jinja2.TemplateSyntaxError as exc:
                    raise TemplateFailed(f"line {exc.lineno}: {exc.message}", path) from None

    def render(self, path: str, variables: Mapping[str, Json]) -> str | None:
        """Render the template for ``path`` (``content.subject``); None if the field is absent.

        Raises TemplateFailed when rendering fails: an unsafe attribute
        (SecurityError), an operation on an undefined value, a type error.
        """
        if path not in self._sources:
            return None
        if self._static:
            return self._sources[path]
        try:
            return self._compiled[path].render(variables)
        except Exception as exc:  # Template code is the request's; any failure is its own.
            raise TemplateFailed(f"{type(exc).__name__}: {exc}", path) from None


# --- building ---------------------------------------------------------------

_CRLF = re.compile(r"\r\n|\r|\n")


def _to_header(email: str, name: str | None) -> str:
    """``"Name" <email>`` (RFC 2047-encoded when the name is not ASCII), or the bare email."""
    if not name:
        return email
    if not name.isascii() and email.isascii():
        return formataddr((name, email))
    # formataddr needs an ASCII address (it raised UnicodeEncodeError -> 500); with an
    # SMTPUTF8 address the header is UTF-8 anyway (RFC 6532 §3.2), so the name can be too.
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{email}>'


def template_variables(req: InjectRequest, rcpt: Recipient) -> dict[str, Json]:
    """Global substitutions, the recipient's on top, then ``email``, ``name``, ``to_header``."""
    variables = {**req.substitutions, **rcpt.substitutions}
    variables["email"] = rcpt.email
    if rcpt.name is not None:
        variables["name"] = rcpt.name
    variables["to_header"] = _to_header(rcpt.email, rcpt.name)
    return variables


def trace_header(trace: TraceHeaders, recipient: str, meta: Mapping[str, Json]) -> bytes:
    """The supplemental header line: base64 of JSON ``{"_@_":"\\\\_/","recipient":…}``.

    meta: message metadata; keys named in ``include_meta_names`` are copied in.
    Compact JSON with UTF-8 kept, as serde_json writes it, so ARF decoding matches.
    """
    payload: dict[str, Any] = {"_@_": "\\_/", "recipient": recipient}
    payload.update((k, meta[k]) for k in trace.include_meta_names if k in meta)
    raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return f"{trace.header_name}: {base64.b64encode(raw).decode('ascii')}\r\n".encode("ascii")


def build_message(
    req: InjectRequest,
    templates: Templates,
    rcpt: Recipient,
    *,
    message_id_domain: str,
    now: float,
    meta: Mapping[str, Json] | None = None,
) -> bytes:
    """Build the message for one recipient, CRLF line endings throughout.

    templates: ``Templates(req)``, shared by all recipients of the request.
    message_id_domain: right-hand side of a builder message's Message-ID.
    now: unix seconds for a builder message's Date header.
    meta: metadata for ``trace_headers.include_meta_names`` (default: none).
    Raises TemplateFailed when a template fails for this recipient.
    """
    variables = template_variables(req, rcpt)
    if isinstance(req.content, str):
        text = _CRLF.sub("\r\n", templates.render("content", variables) or "")
        body = (text if text.endswith("\r\n") else text + "\r\n").encode("utf-8")
    else:
        body = _build_mime(
            req.content, templates, rcpt, variables, message_id_domain=message_id_domain, now=now
        )
    if req.trace_headers.supplemental_header:
        body = trace_header(req.trace_headers, rcpt.email, meta or {}) + body
    return body


def _build_mime(
    b: Builder,
    templates: Templates,
    rcpt: Recipient,
    variables: Mapping[str, Any],
    *,
    message_id_domain: str,
    now: float,
) -> bytes:
    def render(path: str) -> str | None:
        return templates.render(path, variables)

    msg = MIMEPart(policy=policy.SMTP)  # MIMEPart: no MIME-Version stamped on every part
    given = {name.lower() for name, _ in b.headers}
    for key, name, box in (("from", "From", b.from_), ("reply_to", "Reply-To", b.reply_to)):
        if box is not None:
            path = f"content.{key}.name"
            mailbox = headerregistry.Address(render(path) or "", addr_spec=box.email)
            _set_header(msg, name, mailbox, path)
    if "to" not in given:
        msg["To"] = headerregistry.Address(rcpt.name or "", addr_spec=rcpt.email)
    if b.subject is not None:
        _set_header(msg, "Subject", render("content.subject") or "", "content.subject")
    for name, _ in b.headers:
        path = f"content.headers.{name}"
        _set_header(msg, name, render(path) or "", path)
    if "date" not in given:
        msg["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    if "message-id" not in given:
        msg["Message-ID"] = make_msgid(domain=message_id_domain)
    msg["MIME-Version"] = "1.0"
    _add_bodies(msg, b, render)
    _add_attachments(msg, b.attachments)
    return msg.as_bytes(policy=policy.SMTP)


def _set_header(msg: MIMEPart, name: str, value: Any, path: str) -> None:
    """Add a header rendered from ``path``; a newline in it is the template's fault."""
    if "\r" in str(value) or "\n" in str(value):
        raise TemplateFailed("rendered header value contains CR or LF", path)
    try:
        msg[name] = value
    except (ValueError, TypeError, email_errors.HeaderParseError) as exc:
        raise TemplateFailed(f"invalid header value: {exc}", path) from None


def _add_bodies(msg: MIMEPart, b: Builder, render: Any) -> None:
    # RFC 2046 §5.1.4: richest last; AMP sits before the HTML fallback.
    order = (
        ("plain", "content.text_body"),
        ("x-amp-html", "content.amp_html_body"),
        ("html", "content.html_body"),
    )
    bodies = [(subtype, text) for subtype, path in order if (text := render(path)) is not None]
    for i, (subtype, text) in enumerate(bodies):
        if i == 0:
            msg.set_content(text, subtype=subtype)
        else:
            msg.add_alternative(text, subtype=subtype)


def _mime_type(content_type: str) -> tuple[str, str, dict[str, str]]:
    parsed = policy.default.header_factory("Content-Type", content_type)
    return parsed.maintype, parsed.subtype, dict(parsed.params)


def _add_attachments(msg: MIMEPart, attachments: tuple[Attachment, ...]) -> None:
    inline = [a for a in attachments if a.content_id]
    if inline:
        # RFC 2387: inline parts live in multipart/related beside the HTML they serve.
        target = msg
        if msg.is_multipart():
            target = list(msg.iter_parts())[-1]  # the multipart/alternative's last (HTML) part
            assert isinstance(target, MIMEPart)  # parts of an EmailMessage are EmailMessages
        for a in inline:
            maintype, subtype, params = _mime_type(a.content_type)
            target.add_related(
                a.data,
                maintype,
                subtype,
                cid=f"<{a.content_id}>",
                disposition="inline",
                filename=a.file_name,
                params=params,
            )
    for a in attachments:
        if not a.content_id:
            maintype, subtype, params = _mime_type(a.content_type)
            msg.add_attachment(a.data, maintype, subtype, filename=a.file_name, params=params)
