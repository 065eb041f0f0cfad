"""PolicyMessage's KumoMTA-style API: headers, X-header import/removal, conformance and scheduling."""

from __future__ import annotations

import email
import email.utils
import json
from typing import Any

import pytest

from engine.policy.message import PolicyMessage
from engine.policy.scheduling import Scheduling

BODY = b"\r\nHello,\r\nX-Not: a header\r\n"
RAW = (
    b"From: Ann Example <ann@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: =?utf-8?q?h=C3=A9llo?= world\r\n"
    b"X-Campaign: spring\r\n"
    b"X-Name: J\xc3\xb6rg\r\n"
    b"x-tag: one\r\n"
    b"X-Long: first\r\n second\r\n"
    b"Date: Fri, 01 Mar 2024 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n" + BODY
)


def message(data: bytes = RAW, meta: dict | None = None) -> PolicyMessage:
    return PolicyMessage("id1", "ann@example.com", "bob@example.net", data, meta)


def header_names(msg: PolicyMessage) -> list[str]:
    return [name for name, _ in msg.get_all_headers()]


def body_of(data: bytes) -> bytes:
    return data[data.index(b"\r\n\r\n") :]


# -- get_all_headers / from_header / to_header --------------------------------------


def test_get_all_headers_in_order_decoded():
    """get_all_headers returns every header in order with RFC 2047, UTF-8 and folding decoded."""
    assert message().get_all_headers() == [
        ("From", "Ann Example <ann@example.com>"),
        ("To", "bob@example.net"),
        ("Subject", "héllo world"),
        ("X-Campaign", "spring"),
        ("X-Name", "Jörg"),
        ("x-tag", "one"),
        ("X-Long", "first second"),
        ("Date", "Fri, 01 Mar 2024 10:00:00 +0000"),
        ("Message-ID", "<1@example.com>"),
    ]


def test_get_all_headers_skips_colonless_lines():
    """get_all_headers leaves out header lines without a colon."""
    assert message(b"Subject: hi\r\nBogus\r\n\r\nbody").get_all_headers() == [("Subject", "hi")]


def test_get_all_headers_of_message_without_headers():
    """get_all_headers of a message whose header block is empty is an empty list."""
    assert message(b"\r\nbody only\r\n").get_all_headers() == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Ann Example <ann@example.com>", ("Ann Example", "ann@example.com")),
        ('"Doe, John" <john@example.com>', ("Doe, John", "john@example.com")),
        ("ann@example.com", ("", "ann@example.com")),
        ("ann@example.com (Ann)", ("Ann", "ann@example.com")),
        ("=?utf-8?q?J=C3=B6rg?= <j@example.com>", ("Jörg", "j@example.com")),
        ("=?utf-8?q?M=C3=BCller=2C_Hans?= <h@example.com>", ("Müller, Hans", "h@example.com")),
    ],
)
def test_from_header_parses_mailbox(value, expected):
    """from_header returns (display name, address) with the display name decoded."""
    assert message(f"From: {value}\r\n\r\nbody".encode()).from_header() == expected


def test_to_header_parses_mailbox():
    """to_header returns the To header as (display name, address)."""
    assert message(b"To: Bob <bob@example.net>\r\n\r\nbody").to_header() == (
        "Bob",
        "bob@example.net",
    )


@pytest.mark.parametrize("method", ["from_header", "to_header"])
def test_address_header_missing_is_none(method):
    """from_header and to_header return None when the header is absent."""
    assert getattr(message(b"Subject: hi\r\n\r\nbody"), method)() is None


# -- remove_x_headers ------------------------------------------------------------


def test_remove_x_headers_all():
    """remove_x_headers() drops every X-* header, including folded ones, and nothing else."""
    msg = message()
    msg.remove_x_headers()
    assert header_names(msg) == ["From", "To", "Subject", "Date", "Message-ID"]


def test_remove_x_headers_keeps_body():
    """remove_x_headers() leaves the body, including X-like body lines, intact."""
    msg = message()
    msg.remove_x_headers()
    assert body_of(msg.get_data()) == body_of(RAW)


def test_remove_x_headers_named_case_insensitive():
    """remove_x_headers(names) drops only the named X-* headers, matching names case-insensitively."""
    msg = message()
    msg.remove_x_headers(["X-TAG", "x-long"])
    assert header_names(msg) == [
        "From",
        "To",
        "Subject",
        "X-Campaign",
        "X-Name",
        "Date",
        "Message-ID",
    ]


def test_remove_x_headers_named_ignores_other_headers():
    """remove_x_headers(names) does not remove a named header that is not an X-* header."""
    msg = message()
    msg.remove_x_headers(["Subject"])
    assert msg.get_data() == RAW


def test_remove_x_headers_empty_list_removes_nothing():
    """remove_x_headers([]) removes no header."""
    msg = message()
    msg.remove_x_headers([])
    assert header_names(msg) == header_names(message())


# -- import_x_headers ------------------------------------------------------------


def test_import_x_headers_all():
    """import_x_headers() copies every X-* header into meta under lowercase '_' keys."""
    msg = message(meta={"tenant": "t"})
    msg.import_x_headers()
    assert msg.meta == {
        "tenant": "t",
        "x_campaign": "spring",
        "x_name": "Jörg",
        "x_tag": "one",
        "x_long": "first second",
    }


def test_import_x_headers_named_case_insensitive():
    """import_x_headers(names) copies only the named X-* headers, matching case-insensitively."""
    msg = message()
    msg.import_x_headers(["x-CAMPAIGN", "X-Tag"])
    assert msg.meta == {"x_campaign": "spring", "x_tag": "one"}


def test_import_x_headers_leaves_data_unchanged():
    """import_x_headers() does not change the message bytes."""
    msg = message()
    msg.import_x_headers()
    assert msg.get_data() == RAW


# -- check_fix_conformance ---------------------------------------------------------

ALL = (
    "MISSING_COLON_VALUE|NON_CANONICAL_LINE_ENDINGS|NAME_ENDS_WITH_SPACE|LINE_TOO_LONG|"
    "NEEDS_TRANSFER_ENCODING|MISSING_DATE_HEADER|MISSING_MESSAGE_ID_HEADER|MISSING_MIME_VERSION"
)
CLEAN = (
    b"From: ann@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\n"
    b"Date: Fri, 01 Mar 2024 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nbody\r\n"
)
BARE = b"From: ann@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nbody\r\n"


def test_check_fix_conformance_clean_is_none():
    """check_fix_conformance returns None for a message with none of the checked problems."""
    assert message(CLEAN).check_fix_conformance(ALL, "") is None


def test_check_fix_conformance_reports_remaining_problems():
    """check_fix_conformance returns an error string naming each checked problem found."""
    error = message(BARE).check_fix_conformance("MISSING_DATE_HEADER|MISSING_MESSAGE_ID_HEADER")
    assert "MISSING_DATE_HEADER" in error and "MISSING_MESSAGE_ID_HEADER" in error


def test_check_fix_conformance_check_only_keeps_data():
    """check_fix_conformance without fixes does not change the message."""
    msg = message(BARE)
    msg.check_fix_conformance(ALL, "")
    assert msg.get_data() == BARE


def test_check_fix_conformance_ignores_unchecked_problems():
    """check_fix_conformance returns None when the only problems found are not checked."""
    assert message(BARE).check_fix_conformance("LINE_TOO_LONG|MISSING_COLON_VALUE") is None


def test_check_fix_conformance_applies_fixes():
    """check_fix_conformance adds the headers the fixes ask for and then passes the same checks."""
    msg = message(BARE, meta={"hostname": "mx.example.com"})
    labels = "MISSING_DATE_HEADER|MISSING_MESSAGE_ID_HEADER"
    assert msg.check_fix_conformance(labels, labels) is None
    parsed = email.message_from_bytes(msg.get_data())
    assert parsed["Date"] and parsed["Message-ID"].endswith("@mx.example.com>")


def test_check_fix_conformance_reports_what_fixes_leave():
    """check_fix_conformance names only the checked problems that the fixes did not cover."""
    msg = message(BARE)
    error = msg.check_fix_conformance(
        "MISSING_DATE_HEADER|MISSING_MESSAGE_ID_HEADER", "MISSING_DATE_HEADER"
    )
    assert "MISSING_MESSAGE_ID_HEADER" in error and "MISSING_DATE_HEADER" not in error


def test_check_fix_conformance_fix_keeps_body():
    """check_fix_conformance fixes header problems without changing the body."""
    msg = message(BARE)
    msg.check_fix_conformance("", ALL)
    assert body_of(msg.get_data()) == body_of(BARE)


def test_check_fix_conformance_transfer_encoding_with_mime_version():
    """Fixing NEEDS_TRANSFER_ENCODING and MISSING_MIME_VERSION passes both checks for a plain 8-bit body."""
    labels = "NEEDS_TRANSFER_ENCODING|MISSING_MIME_VERSION"
    msg = message(CLEAN.replace(b"body", b"h\xc3\xa9llo"))
    assert msg.check_fix_conformance(labels, labels) is None


@pytest.mark.parametrize(("checks", "fixes"), [("BOGUS", ""), ("", "LINE_TOO_LONG|BOGUS")])
def test_check_fix_conformance_unknown_label(checks, fixes):
    """check_fix_conformance rejects an unknown label with ValueError."""
    with pytest.raises(ValueError, match="BOGUS"):
        message(CLEAN).check_fix_conformance(checks, fixes)


# -- set_scheduling / get_scheduling -------------------------------------------------

OPTIONS = {
    "first_attempt": "2024-03-01T10:00:00Z",
    "expires": "2024-03-04T10:00:00+01:00",
    "dow": "Mon-Fri",
    "tz": "Europe/Berlin",
    "start": "09:00",
    "end": "17:00",
}


def test_set_scheduling_stores_json_meta():
    """set_scheduling stores a JSON-serialisable dict in meta 'scheduling'."""
    msg = message()
    msg.set_scheduling(OPTIONS)
    stored = msg.get_meta("scheduling")
    assert isinstance(stored, dict) and json.loads(json.dumps(stored)) == stored


def test_get_scheduling_round_trips():
    """get_scheduling returns what set_scheduling was given, parsed."""
    msg = message()
    msg.set_scheduling(OPTIONS)
    assert msg.get_scheduling() == Scheduling.from_options(OPTIONS)


def test_get_scheduling_unset_is_none():
    """get_scheduling returns None when no scheduling was set."""
    assert message().get_scheduling() is None


def test_set_scheduling_none_clears():
    """set_scheduling(None) removes the stored scheduling."""
    msg = message()
    msg.set_scheduling(OPTIONS)
    msg.set_scheduling(None)
    assert msg.get_scheduling() is None and "scheduling" not in msg.meta


@pytest.mark.parametrize(
    "options",
    [
        {"dow": "Mon-Fri", "tz": "UTC"},
        {**OPTIONS, "tz": "Nowhere/Special"},
        {"first_attempt": "2024-03-01T10:00:00"},
        {"when": "soon"},
    ],
)
def test_set_scheduling_invalid_raises(options):
    """set_scheduling rejects invalid options with ValueError."""
    with pytest.raises(ValueError):
        message().set_scheduling(options)


def test_set_scheduling_invalid_keeps_previous():
    """A rejected set_scheduling leaves the previously stored scheduling in place."""
    msg = message()
    msg.set_scheduling(OPTIONS)
    with pytest.raises(ValueError):
        msg.set_scheduling({"when": "soon"})
    assert msg.get_scheduling() == Scheduling.from_options(OPTIONS)


@pytest.mark.parametrize(
    ("value", "error", "named"),
    [
        ({1, 2}, TypeError, "meta 'x_k' is a set"),
        (b"raw", TypeError, "meta 'x_k' is a bytes"),
        (object(), TypeError, "meta 'x_k' is a object"),
        ([1, {2}], TypeError, "meta 'x_k'[1] is a set"),
        ({"a": {"b": b"x"}}, TypeError, "meta 'x_k'['a']['b'] is a bytes"),
        ({1: "one"}, TypeError, "meta 'x_k' has a int key 1"),
        (float("nan"), ValueError, "meta 'x_k' is nan"),
        ([float("inf")], ValueError, "meta 'x_k'[0] is inf"),
    ],
)
def test_set_meta_refuses_what_is_not_json_naming_the_key(value, error, named):
    """set_meta raises at once, naming the key and the bad part, and leaves meta unchanged."""
    msg = message(meta={"tenant": "t"})
    with pytest.raises(error) as info:
        msg.set_meta("x_k", value)
    assert named in str(info.value)
    assert msg.meta == {"tenant": "t"}


@pytest.mark.parametrize(
    "value", [None, True, 3, 2.5, "s", [1, "a", None], (1, 2), {"a": [{"b": 1.0}]}]
)
def test_set_meta_keeps_json_values(value):
    """Every JSON value (tuples too: they are JSON arrays) is stored as given."""
    msg = message()
    msg.set_meta("x_k", value)
    assert msg.get_meta("x_k") == value


def test_set_meta_refuses_a_key_that_is_not_a_str():
    """Meta is a JSON object: its keys are strings."""
    key: Any = 1
    with pytest.raises(TypeError, match="key must be a str, not int"):
        message().set_meta(key, "v")
