"""Property tests of the inject request parser: any JSON value either parses or raises
RequestInvalid, never anything else; each recipient of a parsed request that passes
check_recipient builds a message or fails with an InjectError (issue 9: a request must never become a 500)."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from engine.reception.inject.build import Templates, build_message
from engine.reception.inject.request import (
    InjectError,
    RequestInvalid,
    check_recipient,
    parse_request,
)

# Any JSON value, lone surrogates and deep nesting included (json.loads gives both).
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(
    ["envelope_sender", "recipients", "content", "substitutions", "template_dialect",
     "deferred_generation", "deferred_spool", "trace_headers", "email", "name", "metadata",
     "subject", "from", "reply_to", "headers", "text_body", "html_body", "attachments",
     "data", "content_type", "base64", "file_name", "content_id", "header_name",
     "include_meta_names", "supplemental_header", "received_header"]
)  # fmt: skip
# Values with the request's own field names, so the parser gets past the first check.
TEXT = st.text() | st.sampled_from(["a@b.test", "", "text/plain", "x\r\ny", "\ud800", "{{x}}"])
SHAPED = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=12,
)
ADDRESS = st.builds(
    "{}@{}.test".format,
    st.text(string.ascii_letters + string.digits + ".+-é\U0001f600", min_size=1, max_size=8),
    st.text(string.ascii_lowercase, min_size=1, max_size=8),
)
BUILDER = st.fixed_dictionaries(
    {"text_body": TEXT},
    optional={
        "subject": TEXT,
        "html_body": TEXT,
        "headers": st.dictionaries(st.text(min_size=1, max_size=10), TEXT, max_size=3),
        "from": st.fixed_dictionaries({"email": ADDRESS}, optional={"name": TEXT}),
    },
)
VALID_ISH = st.fixed_dictionaries(
    {
        "envelope_sender": ADDRESS | st.just(""),
        "recipients": st.lists(
            st.fixed_dictionaries(
                {"email": ADDRESS},
                optional={"name": TEXT, "substitutions": st.dictionaries(st.text(), JSON)},
            ),
            min_size=1,
            max_size=3,
        ),
        "content": TEXT | BUILDER,
    },
    optional={"substitutions": st.dictionaries(st.text(max_size=5), JSON, max_size=3)},
)


@given(JSON | SHAPED | st.dictionaries(KEYS, SHAPED))
def test_any_json_value_parses_or_raises_request_invalid(body) -> None:
    try:
        parse_request(body)
    except RequestInvalid as exc:
        assert isinstance(exc.field, str) and exc.reason


@given(VALID_ISH)
def test_a_parsed_request_builds_or_raises_an_inject_error(body) -> None:
    try:
        req = parse_request(body)
        templates = Templates(req)
        for index, rcpt in enumerate(req.recipients):
            try:
                check_recipient(req, index)  # as inject_v1: an unusable address fails alone
            except InjectError:
                continue
            data = build_message(
                req, templates, rcpt, message_id_domain="mta.test", now=1.8e9, meta={}
            )
            assert isinstance(data, bytes)
    except InjectError:
        pass


def test_utf8_address_with_a_non_ascii_name_builds() -> None:
    """Found by bench/fuzz_http.py: formataddr raised UnicodeEncodeError (a 500) for an
    SMTPUTF8 recipient with a non-ASCII name."""
    body = {
        "envelope_sender": "",
        "content": "To: {{ to_header }}\r\n\r\nx",
        "recipients": [{"email": "j\u00f6rg@b\u00fccher.test", "name": "J\u00f6rg \U0001f600"}],
    }
    req = parse_request(body)
    data = build_message(
        req, Templates(req), req.recipients[0], message_id_domain="m.test", now=1.8e9, meta={}
    )
    assert '"J\u00f6rg \U0001f600" <j\u00f6rg@b\u00fccher.test>'.encode() in data
