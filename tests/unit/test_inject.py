"""Injection requests: parse_request validation, Templates and build_message output."""

from __future__ import annotations

import base64
import copy
import email
import email.policy
import json
from email.message import EmailMessage
from typing import Any

import pytest

from engine.reception.inject.build import Templates, build_message
from engine.reception.inject.request import (
    InjectRequest,
    RecipientInvalid,
    RequestInvalid,
    RequestTooLarge,
    TemplateFailed,
    check_recipient,
    parse_request,
)

NOW = 1_780_000_000.0
PNG = b"\x89PNG\r\n\x1a\n\x00\x01binary\xff"


def request(**overrides: Any) -> dict[str, Any]:
    """A minimal valid body with a builder, fields replaced by ``overrides``."""
    body: dict[str, Any] = {
        "envelope_sender": "bounce@sender.example",
        "recipients": [{"email": "user@example.com", "name": "Ann User"}],
        "content": {"subject": "Hello", "text_body": "Hi there"},
    }
    body.update(overrides)
    return body


def build(body: dict[str, Any], index: int = 0) -> bytes:
    req = parse_request(body)
    return build_message(
        req, Templates(req), req.recipients[index], message_id_domain="mta.example", now=NOW
    )


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def render_string(body: dict[str, Any], index: int = 0) -> str:
    """The built message for a string-content body, without its trace header."""
    body = {**body, "trace_headers": {"supplemental_header": False}}
    return build(body, index).decode("utf-8")


# --- templating ---------------------------------------------------------------


def test_string_content_uses_global_and_recipient_substitutions() -> None:
    """A string content sees global substitutions with the recipient's overriding them."""
    body = request(
        content="Subject: {{ greeting }} {{ name }}\n\n{{ offer }} for {{ email }}\n",
        substitutions={"greeting": "Hello", "offer": "10% off"},
        recipients=[
            {"email": "a@example.com", "name": "Ann"},
            {"email": "b@example.com", "substitutions": {"offer": "20% off"}},
        ],
    )
    assert render_string(body, 0) == "Subject: Hello Ann\r\n\r\n10% off for a@example.com\r\n"
    assert render_string(body, 1) == "Subject: Hello \r\n\r\n20% off for b@example.com\r\n"


@pytest.mark.parametrize(
    ("rcpt", "expected"),
    [
        ({"email": "a@example.com", "name": "Ann User"}, '"Ann User" <a@example.com>'),
        (
            {"email": "a@example.com", "name": 'Ann "AU" User'},
            '"Ann \\"AU\\" User" <a@example.com>',
        ),
        ({"email": "a@example.com"}, "a@example.com"),
    ],
)
def test_to_header_variable(rcpt: dict[str, Any], expected: str) -> None:
    """``to_header`` formats the recipient as a quoted mailbox, or the bare address."""
    body = request(content="To: {{ to_header }}\n\nx", recipients=[rcpt])
    assert render_string(body).splitlines()[0] == f"To: {expected}"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("A: 1\n\nbody", "A: 1\r\n\r\nbody\r\n"),
        ("A: 1\r\n\r\nbody\r\n", "A: 1\r\n\r\nbody\r\n"),
        ("A: 1\r\rbody\r", "A: 1\r\n\r\nbody\r\n"),
        ("A: 1\n\nline1\r\nline2\nline3", "A: 1\r\n\r\nline1\r\nline2\r\nline3\r\n"),
    ],
)
def test_string_content_is_crlf_normalised(content: str, expected: str) -> None:
    """Bare LF and bare CR become CRLF, and the message ends with CRLF."""
    assert render_string(request(content=content)) == expected


def test_static_dialect_does_not_template() -> None:
    """With the Static dialect, template syntax passes through verbatim."""
    body = request(content="Subject: {{ name }}\n\n{% if x %}", template_dialect="Static")
    assert render_string(body) == "Subject: {{ name }}\r\n\r\n{% if x %}\r\n"


def test_undefined_variable_renders_empty() -> None:
    """An undefined variable renders as empty text, as MiniJinja's lenient default does."""
    assert render_string(request(content="A: [{{ missing }}]\n\nx")).startswith("A: []\r\n")


def test_subject_is_templated() -> None:
    """The builder subject is rendered per recipient."""
    body = request(
        content={"subject": "Hi {{ name }}, {{ deal }}", "text_body": "x"},
        substitutions={"deal": "50% off"},
    )
    assert parse(build(body))["Subject"] == "Hi Ann User, 50% off"


def test_non_ascii_subject_and_from_name_are_encoded() -> None:
    """Non-ASCII header text is RFC 2047-encoded on the wire and decodes back."""
    body = request(
        content={
            "subject": "Grüße ✓",
            "text_body": "x",
            "from": {"email": "news@sender.example", "name": "Zoë"},
        }
    )
    data = build(body)
    assert data.isascii()
    msg = parse(data)
    assert msg["Subject"] == "Grüße ✓"
    assert msg["From"].addresses[0].display_name == "Zoë"


def test_html_body_is_autoescaped() -> None:
    """Substitutions in html_body are HTML-escaped, as KumoMTA's ``.html`` templates are."""
    body = request(
        content={"text_body": "{{ v }}", "html_body": "<p>{{ v }}</p>"},
        substitutions={"v": "<b>&</b>"},
    )
    msg = parse(build(body))
    assert msg.get_body(("plain",)).get_content().strip() == "<b>&</b>"
    assert msg.get_body(("html",)).get_content().strip() == "<p>&lt;b&gt;&amp;&lt;/b&gt;</p>"


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("Subject: {% if %}\n\nx", "content"),
        ({"subject": "{{ unclosed", "text_body": "x"}, "content.subject"),
        ({"text_body": "{% for x in y %}"}, "content.text_body"),
        ({"text_body": "x", "headers": {"X-A": "{{ 1 + }}"}}, "content.headers.X-A"),
        ({"text_body": "x", "from": {"email": "f@s.example", "name": "{{"}}, "content.from.name"),
    ],
)
def test_template_syntax_error_fails_compile(content: Any, field: str) -> None:
    """A syntax error raises TemplateFailed naming its field when the request is compiled."""
    req = parse_request(request(content=content))
    with pytest.raises(TemplateFailed) as info:
        Templates(req)
    assert info.value.field == field


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ email.__class__.__name__ }}",
    ],
)
def test_sandbox_blocks_unsafe_attributes(source: str) -> None:
    """The sandbox refuses dunder access, which surfaces as TemplateFailed at render."""
    req = parse_request(request(content={"text_body": source}))
    templates = Templates(req)
    with pytest.raises(TemplateFailed, match="SecurityError") as info:
        build_message(req, templates, req.recipients[0], message_id_domain="m", now=NOW)
    assert info.value.field == "content.text_body"


def test_sandbox_unsafe_attribute_alone_renders_empty() -> None:
    """A lone unsafe attribute is an undefined value: it renders as nothing, leaking nothing."""
    assert render_string(request(content="A: [{{ email.__class__ }}]\n\nx")).startswith("A: []")


def test_runtime_error_fails_render() -> None:
    """Using an undefined value (not just printing it) fails that recipient's render."""
    req = parse_request(request(content="A: {{ missing.attr }}\n\nx"))
    with pytest.raises(TemplateFailed):
        build_message(req, Templates(req), req.recipients[0], message_id_domain="m", now=NOW)


def test_rendered_header_newline_fails() -> None:
    """A substitution that puts a newline into a header cannot inject headers."""
    body = request(
        content={"subject": "{{ s }}", "text_body": "x"},
        substitutions={"s": "hi\r\nBcc: victim@example.com"},
    )
    with pytest.raises(TemplateFailed) as info:
        build(body)
    assert info.value.field == "content.subject"


def test_templates_compile_once_per_request() -> None:
    """One Templates object renders every recipient with that recipient's variables."""
    req = parse_request(
        request(
            content="A: {{ email }}\n\nx",
            trace_headers={"supplemental_header": False},
            recipients=[{"email": f"u{i}@example.com"} for i in range(3)],
        )
    )
    templates = Templates(req)
    firsts = [
        build_message(req, templates, r, message_id_domain="m", now=NOW).split(b"\r\n")[0]
        for r in req.recipients
    ]
    assert firsts == [b"A: u0@example.com", b"A: u1@example.com", b"A: u2@example.com"]


# --- MIME structure -----------------------------------------------------------


def test_text_only_is_single_text_plain_part() -> None:
    """A text_body alone makes a text/plain message."""
    msg = parse(build(request()))
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().strip() == "Hi there"


def test_text_and_html_make_multipart_alternative() -> None:
    """text_body and html_body become multipart/alternative, plain first."""
    msg = parse(build(request(content={"text_body": "plain", "html_body": "<p>html</p>"})))
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]


def test_amp_sits_between_text_and_html() -> None:
    """An AMP body goes before the HTML fallback in multipart/alternative."""
    content = {"text_body": "t", "html_body": "<p>h</p>", "amp_html_body": "<html amp4email>"}
    msg = parse(build(request(content=content)))
    assert [p.get_content_type() for p in msg.iter_parts()] == [
        "text/plain",
        "text/x-amp-html",
        "text/html",
    ]


def test_base64_attachment_decodes_to_original_bytes() -> None:
    """A base64 attachment lands in multipart/mixed with its bytes, file name and type."""
    attachment = {
        "data": base64.b64encode(PNG).decode(),
        "base64": True,
        "content_type": "image/png",
        "file_name": "logo.png",
    }
    msg = parse(build(request(content={"text_body": "x", "attachments": [attachment]})))
    assert msg.get_content_type() == "multipart/mixed"
    (part,) = list(msg.iter_attachments())
    assert part.get_content_type() == "image/png"
    assert part.get_filename() == "logo.png"
    assert part.get_content() == PNG


def test_text_attachment_is_utf8() -> None:
    """A non-base64 attachment is the JSON string's UTF-8, labelled so for text types."""
    attachment = {"data": "naïve,1\n", "content_type": "text/csv", "file_name": "a.csv"}
    msg = parse(build(request(content={"text_body": "x", "attachments": [attachment]})))
    (part,) = list(msg.iter_attachments())
    assert part.get_content_charset() == "utf-8"
    assert part.get_content() == "naïve,1\n"


def test_attachment_is_not_templated() -> None:
    """Attachment data is sent as given, template syntax and all."""
    attachment = {"data": "{{ email }}", "content_type": "text/plain", "file_name": "t.txt"}
    msg = parse(build(request(content={"text_body": "x", "attachments": [attachment]})))
    (part,) = list(msg.iter_attachments())
    assert part.get_content() == "{{ email }}"


def test_inline_attachment_is_related_to_html() -> None:
    """An attachment with content_id is inline in multipart/related next to the HTML."""
    inline = {
        "data": base64.b64encode(PNG).decode(),
        "base64": True,
        "content_type": "image/png",
        "content_id": "logo@x",
    }
    content = {"text_body": "t", "html_body": '<img src="cid:logo@x">', "attachments": [inline]}
    msg = parse(build(request(content=content)))
    assert msg.get_content_type() == "multipart/alternative"
    plain, related = msg.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html, image = related.iter_parts()
    assert html.get_content_type() == "text/html"
    assert image["Content-ID"] == "<logo@x>"
    assert image.get_content_disposition() == "inline"
    assert image.get_content() == PNG


def test_inline_and_regular_attachments_nest() -> None:
    """Regular attachments wrap the alternative-with-related body in multipart/mixed."""
    inline = {"data": "aW1n", "base64": True, "content_type": "image/gif", "content_id": "<c1>"}
    regular = {"data": "doc", "content_type": "application/pdf", "file_name": "d.pdf"}
    content = {"text_body": "t", "html_body": "<p>h</p>", "attachments": [inline, regular]}
    msg = parse(build(request(content=content)))
    assert msg.get_content_type() == "multipart/mixed"
    types = [p.get_content_type() for p in msg.walk()]
    assert types == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/gif",
        "application/pdf",
    ]
    assert list(msg.walk())[5]["Content-ID"] == "<c1>"


@pytest.mark.parametrize(
    ("rcpt", "expected"),
    [
        ({"email": "a@example.com", "name": "Ann User"}, "Ann User <a@example.com>"),
        ({"email": "b@example.com"}, "b@example.com"),
    ],
)
def test_builder_adds_to_per_recipient(rcpt: dict[str, Any], expected: str) -> None:
    """The builder adds a To header for each recipient."""
    assert parse(build(request(recipients=[rcpt])))["To"] == expected


def test_builder_keeps_to_from_headers() -> None:
    """No To is added when ``headers`` has one, whatever its case."""
    body = request(content={"text_body": "x", "headers": {"to": "list@example.com"}})
    msg = parse(build(body))
    assert msg.get_all("To") == ["list@example.com"]


def test_builder_standard_headers() -> None:
    """From, Reply-To, Date, Message-ID and MIME-Version are set from the request."""
    content = {
        "text_body": "x",
        "from": {"email": "news@s.example", "name": "News"},
        "reply_to": {"email": "help@s.example"},
        "headers": {"X-Campaign": "fall"},
    }
    msg = parse(build(request(content=content)))
    assert msg["From"] == "News <news@s.example>"
    assert msg["Reply-To"] == "help@s.example"
    assert msg["X-Campaign"] == "fall"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"].datetime.timestamp() == NOW
    assert msg["Message-ID"].endswith("@mta.example>")


def test_builder_output_is_crlf() -> None:
    """Every line of a built message ends with CRLF; no bare LF or CR."""
    content = {
        "text_body": "a\nb\n",
        "html_body": "<p>\n</p>",
        "attachments": [{"data": "x\ny", "content_type": "text/plain", "file_name": "f"}],
    }
    data = build(request(content=content))
    assert data.endswith(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")


# --- trace header -------------------------------------------------------------


def test_trace_header_matches_kumomta() -> None:
    """X-KumoRef is byte-identical to KumoMTA's apply_supplemental_trace_header test vector."""
    data = build(
        request(content="Subject: hello\r\n\r\nHi", recipients=[{"email": "recip@example.com"}])
    )
    expected = b"eyJfQF8iOiJcXF8vIiwicmVjaXBpZW50IjoicmVjaXBAZXhhbXBsZS5jb20ifQ=="
    assert data.startswith(b"X-KumoRef: " + expected + b"\r\nSubject: hello\r\n")


def test_trace_header_decodes_to_recipient() -> None:
    """The builder's X-KumoRef decodes to JSON naming this recipient."""
    data = build(request(recipients=[{"email": "x@example.com"}, {"email": "y@example.com"}]), 1)
    decoded = json.loads(base64.b64decode(parse(data)["X-KumoRef"]))
    assert decoded == {"_@_": "\\_/", "recipient": "y@example.com"}


def test_trace_header_name_and_meta() -> None:
    """header_name renames the header and include_meta_names copies meta values in."""
    req = parse_request(
        request(trace_headers={"header_name": "X-Ref", "include_meta_names": ["tenant"]})
    )
    data = build_message(
        req,
        Templates(req),
        req.recipients[0],
        message_id_domain="m",
        now=NOW,
        meta={"tenant": "acme", "other": 1},
    )
    decoded = json.loads(base64.b64decode(parse(data)["X-Ref"]))
    assert decoded == {"_@_": "\\_/", "recipient": "user@example.com", "tenant": "acme"}


def test_trace_header_can_be_disabled() -> None:
    """supplemental_header false leaves the header out."""
    data = build(request(trace_headers={"supplemental_header": False}))
    assert "X-KumoRef" not in parse(data)


# --- validation ---------------------------------------------------------------


def without(key: str) -> dict[str, Any]:
    body = request()
    del body[key]
    return body


def attachment(**fields: Any) -> dict[str, Any]:
    return request(
        content={
            "text_body": "x",
            "attachments": [
                {"data": "aGk=", "content_type": "text/plain", "file_name": "a"},
                {"data": "aGk=", "base64": True, "content_type": "image/png", **fields},
            ],
        }
    )


def rcpts(*entries: Any) -> dict[str, Any]:
    return request(recipients=list(entries))


INVALID = [
    ("body not an object", ["x"], ""),
    ("missing envelope_sender", without("envelope_sender"), "envelope_sender"),
    ("envelope_sender not a string", request(envelope_sender=5), "envelope_sender"),
    ("envelope_sender not an address", request(envelope_sender="nobody"), "envelope_sender"),
    ("missing recipients", without("recipients"), "recipients"),
    ("recipients not a list", request(recipients={"email": "a@b.c"}), "recipients"),
    ("empty recipients", request(recipients=[]), "recipients"),
    ("recipient not an object", rcpts("a@b.c"), "recipients[0]"),
    ("recipient without email", rcpts({"email": "a@b.c"}, {"name": "B"}), "recipients[1].email"),
    (
        "recipient email not a string",
        rcpts({"email": "a@b.c"}, {"email": 5}),
        "recipients[1].email",
    ),
    ("unknown recipient key", rcpts({"email": "a@b.c", "nmae": "x"}), "recipients[0].nmae"),
    (
        "recipient substitutions not an object",
        rcpts({"email": "a@b.c", "substitutions": ["x"]}),
        "recipients[0].substitutions",
    ),
    (
        "recipient metadata not an object",
        rcpts({"email": "a@b.c", "metadata": "x"}),
        "recipients[0].metadata",
    ),
    ("missing content", without("content"), "content"),
    ("content a number", request(content=3), "content"),
    ("builder without bodies", request(content={"subject": "x"}), "content"),
    ("unknown builder key", request(content={"text_body": "x", "body": "y"}), "content.body"),
    ("subject not a string", request(content={"text_body": "x", "subject": 1}), "content.subject"),
    (
        "from without email",
        request(content={"text_body": "x", "from": {"name": "N"}}),
        "content.from.email",
    ),
    (
        "headers value not a string",
        request(content={"text_body": "x", "headers": {"X-N": 1}}),
        "content.headers.X-N",
    ),
    (
        "header name invalid",
        request(content={"text_body": "x", "headers": {"Bad Name": "v"}}),
        "content.headers.Bad Name",
    ),
    (
        "header value with newline",
        request(content={"text_body": "x", "headers": {"X-A": "a\r\nBcc: x@y.z"}}),
        "content.headers.X-A",
    ),
    (
        "reserved header",
        request(content={"text_body": "x", "headers": {"Content-Type": "text/html"}}),
        "content.headers.Content-Type",
    ),
    (
        "subject given twice",
        request(content={"text_body": "x", "subject": "a", "headers": {"subject": "b"}}),
        "content.headers.Subject",
    ),
    (
        "attachments not a list",
        request(content={"text_body": "x", "attachments": {}}),
        "content.attachments",
    ),
    (
        "attachment missing content_type",
        attachment(content_type=None),
        "content.attachments[1].content_type",
    ),
    (
        "attachment bad content_type",
        attachment(content_type="png"),
        "content.attachments[1].content_type",
    ),
    ("attachment invalid base64", attachment(data="not base64!"), "content.attachments[1].data"),
    ("attachment base64 not a bool", attachment(base64="yes"), "content.attachments[1].base64"),
    ("attachment unknown key", attachment(inline=True), "content.attachments[1].inline"),
    ("substitutions not an object", request(substitutions=["a"]), "substitutions"),
    ("substitutions a string", request(substitutions="a=1"), "substitutions"),
    ("Handlebars dialect", request(template_dialect="Handlebars"), "template_dialect"),
    ("unknown dialect", request(template_dialect="jinja"), "template_dialect"),
    ("deferred_generation", request(deferred_generation=True), "deferred_generation"),
    ("deferred_spool not a bool", request(deferred_spool="no"), "deferred_spool"),
    ("trace_headers not an object", request(trace_headers=True), "trace_headers"),
    ("trace_headers unknown key", request(trace_headers={"name": "X"}), "trace_headers.name"),
    (
        "trace_headers bad meta name",
        request(trace_headers={"include_meta_names": [1]}),
        "trace_headers.include_meta_names[0]",
    ),
    ("unknown top-level key", request(recipient=[]), "recipient"),
]


@pytest.mark.parametrize(
    ("body", "field"), [(b, f) for _, b, f in INVALID], ids=[name for name, _, _ in INVALID]
)
def test_invalid_request_names_field(body: Any, field: str) -> None:
    """An invalid body raises RequestInvalid whose field is the offending JSON path."""
    with pytest.raises(RequestInvalid) as info:
        parse_request(copy.deepcopy(body))
    assert info.value.field == field
    assert info.value.reason


# An unusable address fails only its recipient (KumoMTA): parse_request accepts the shape,
# check_recipient refuses the address, naming it.
BAD_ADDRESSES = [
    ("not an address", request(recipients=[{"email": "a@b.c"}, {"email": "nope"}]), 1, "expected"),
    ("space in address", request(recipients=[{"email": "a b@c.d"}]), 0, "expected"),
    ("header-unsafe", request(recipients=[{"email": "a..b@c.d"}]), 0, "not usable in a header"),
    # The stdlib header parser raises AttributeError on an unclosed domain literal ending
    # in a backslash (found by bench.fuzz_http: it was an HTTP 500).
    (
        "parser crash: domain literal",
        request(recipients=[{"email": "ok@example.com"}, {"email": "a@[l\\f"}]),
        1,
        "not usable in a header",
    ),
    (
        "no domain, raw content",
        request(recipients=[{"email": "x@"}], content="S: x\r\n"),
        0,
        "expected",
    ),
]


@pytest.mark.parametrize(
    ("body", "index", "reason"),
    [(b, i, r) for _, b, i, r in BAD_ADDRESSES],
    ids=[name for name, _, _, _ in BAD_ADDRESSES],
)
def test_unusable_address_fails_only_its_recipient(body: Any, index: int, reason: str) -> None:
    """parse_request accepts the body; check_recipient raises RecipientInvalid naming the
    recipient's email field and why, and passes the other recipients."""
    req = parse_request(copy.deepcopy(body))
    for i in range(len(req.recipients)):
        if i != index:
            check_recipient(req, i)
    with pytest.raises(RecipientInvalid) as info:
        check_recipient(req, index)
    assert info.value.field == f"recipients[{index}].email"
    assert reason in info.value.reason


def test_raw_content_takes_an_address_a_header_could_not() -> None:
    """With a whole-message template the address is only the envelope's, so ``a..b@c.d``
    passes (a builder would write it into To: and refuses it)."""
    req = parse_request(request(recipients=[{"email": "a..b@c.d"}], content="S: x\r\n"))
    check_recipient(req, 0)


@pytest.mark.parametrize(
    ("count", "limit", "too_large"), [(3, 3, False), (4, 3, True), (1, 1, False)]
)
def test_recipient_limit(count: int, limit: int, too_large: bool) -> None:
    """Up to max_recipients is accepted; one more raises RequestTooLarge naming the limit."""
    body = request(recipients=[{"email": f"u{i}@example.com"} for i in range(count)])
    if not too_large:
        assert len(parse_request(body, max_recipients=limit).recipients) == count
        return
    with pytest.raises(RequestTooLarge) as info:
        parse_request(body, max_recipients=limit)
    assert info.value.field == "recipients"
    assert f"{count} recipients exceed the limit of {limit}" in info.value.reason


def test_handlebars_reason_says_not_supported() -> None:
    """The Handlebars dialect is refused as unsupported rather than as a typo."""
    with pytest.raises(RequestInvalid, match="not supported"):
        parse_request(request(template_dialect="Handlebars"))


@pytest.mark.parametrize(
    ("body", "check"),
    [
        (request(envelope_sender=""), lambda r: r.envelope_sender == ""),
        (request(deferred_spool=True), lambda r: r.template_dialect == "Jinja"),
        (request(deferred_generation=False), lambda r: len(r.recipients) == 1),
        (request(substitutions=None), lambda r: r.substitutions == {}),
        (request(template_dialect="Static"), lambda r: r.template_dialect == "Static"),
        (request(trace_headers={}), lambda r: r.trace_headers.supplemental_header),
        (
            rcpts({"email": "a@b.c", "metadata": {"k": [1]}}),
            lambda r: r.recipients[0].metadata == {"k": [1]},
        ),
        (attachment(data="aG\nk=\n"), lambda r: r.content.attachments[1].data == b"hi"),
        (attachment(content_id="<x@y>"), lambda r: r.content.attachments[1].content_id == "x@y"),
    ],
)
def test_valid_request_is_accepted(body: dict[str, Any], check: Any) -> None:
    """Valid variants parse into the expected records."""
    req = parse_request(body)
    assert isinstance(req, InjectRequest)
    assert check(req)
