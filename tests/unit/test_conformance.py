"""Conformance: problems() labels, fix() per label, and parse_labels (KumoMTA's check_fix_conformance)."""

from __future__ import annotations

import email
import email.policy
import email.utils

import pytest

from engine.policy.conformance import CHECKS, fix, parse_labels, problems

NOW = 1709287200.0  # 2024-03-01T10:00:00Z

HEAD = (
    b"From: Ann <ann@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Date: Fri, 01 Mar 2024 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
)
CLEAN = HEAD + b"Subject: hello\r\n\r\nHello Bob,\r\nbye\r\n"
MIME = b"MIME-Version: 1.0\r\n"
TEXT_8BIT = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"

# One message per label, each with exactly that one problem, and its body text.
CASES: dict[str, tuple[bytes, str]] = {
    "MISSING_COLON_VALUE": (HEAD + b"Subject: hi\r\nBogus\r\n\r\nbody text\r\n", "body text\n"),
    "NON_CANONICAL_LINE_ENDINGS (bare LF)": (
        HEAD.replace(b"\r\n", b"\n") + b"Subject: hi\n\nline one\nline two\n",
        "line one\nline two\n",
    ),
    "NON_CANONICAL_LINE_ENDINGS (bare CR)": (
        HEAD + b"Subject: hi\r\n\r\nline one\rline two\r\n",
        "line one\nline two\n",
    ),
    "NAME_ENDS_WITH_SPACE": (HEAD + b"Subject : hi\r\n\r\nbody text\r\n", "body text\n"),
    "LINE_TOO_LONG": (
        HEAD + b"Subject: hi\r\n\r\n" + b"a" * 999 + b"\r\nend\r\n",
        "a" * 999 + "\nend\n",
    ),
    "NEEDS_TRANSFER_ENCODING (8-bit body)": (
        HEAD + b"Subject: hi\r\n\r\nh\xc3\xa9llo w\xc3\xb6rld\r\n",
        "héllo wörld\n",
    ),
    "NEEDS_TRANSFER_ENCODING (8-bit header)": (
        HEAD + b"Subject: h\xc3\xa9llo\r\n\r\nbody text\r\n",
        "body text\n",
    ),
    "MISSING_DATE_HEADER": (
        CLEAN.replace(b"Date: Fri, 01 Mar 2024 10:00:00 +0000\r\n", b""),
        "Hello Bob,\nbye\n",
    ),
    "MISSING_MESSAGE_ID_HEADER": (
        CLEAN.replace(b"Message-ID: <1@example.com>\r\n", b""),
        "Hello Bob,\nbye\n",
    ),
    "MISSING_MIME_VERSION": (
        HEAD + b"Subject: hi\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nbody text\r\n",
        "body text\n",
    ),
}


def label_of(case: str) -> str:
    return case.split(" ")[0]


def body_text(data: bytes) -> str:
    """The decoded text of the first leaf part, with line endings normalized to LF."""
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    part = next(p for p in msg.walk() if not p.is_multipart())
    raw = part.get_payload(decode=True)
    return (
        raw.decode(part.get_content_charset() or "utf-8").replace("\r\n", "\n").replace("\r", "\n")
    )


def fixed(data: bytes, labels: set[str]) -> bytes:
    return fix(data, labels, hostname="mx.example.com", now=NOW)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(CLEAN, set(), id="clean"),
        *(pytest.param(data, {label_of(case)}, id=case) for case, (data, _) in CASES.items()),
        pytest.param(
            HEAD + b"Subject: hi\r\n\r\n" + b"a" * 998 + b"\r\n", set(), id="998 octets is fine"
        ),
        pytest.param(
            HEAD + b"Subject: " + b"x" * 990 + b"\r\n\r\nbody\r\n",
            {"LINE_TOO_LONG"},
            id="LINE_TOO_LONG (header)",
        ),
        pytest.param(
            HEAD + MIME + b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 7bit\r\nSubject: hi\r\n\r\nh\xc3\xa9\r\n",
            {"NEEDS_TRANSFER_ENCODING"},
            id="NEEDS_TRANSFER_ENCODING (declared 7bit)",
        ),
        pytest.param(
            HEAD + MIME + TEXT_8BIT + b"Subject: hi\r\n\r\nh\xc3\xa9\r\n",
            set(),
            id="8-bit body declared 8bit is fine",
        ),
        pytest.param(
            HEAD + MIME + b"Content-Type: text/plain\r\nSubject: hi\r\n\r\nbody\r\n",
            set(),
            id="Content-Type with MIME-Version is fine",
        ),
        pytest.param(
            CLEAN.replace(b"Date:", b"date:").replace(b"Message-ID:", b"message-id:"),
            set(),
            id="header names are case-insensitive",
        ),
        pytest.param(
            HEAD + b"Subject: a\r\n folded\r\n\tvalue\r\n\r\nbody\r\n",
            set(),
            id="continuation lines are not colon-less headers",
        ),
        pytest.param(
            HEAD + b"Subject: hi\r\n\r\nno colon here\r\n", set(), id="body lines are not headers"
        ),
    ],
)
def test_problems(data, expected):
    """problems() reports exactly the labels that apply to the message."""
    assert problems(data) == expected


@pytest.mark.parametrize("case", list(CASES))
def test_fix_removes_the_problem(case):
    """fix() with a message's one label makes that label disappear from problems()."""
    data, _ = CASES[case]
    assert label_of(case) not in problems(fixed(data, {label_of(case)}))


@pytest.mark.parametrize("case", list(CASES))
def test_fix_keeps_body_text(case):
    """fix() with a message's one label keeps the decoded body text."""
    data, body = CASES[case]
    assert body_text(fixed(data, {label_of(case)})) == body


@pytest.mark.parametrize("case", list(CASES))
def test_fix_introduces_no_new_problem(case):
    """fix() with a message's one label leaves no problem the message did not already have."""
    data, _ = CASES[case]
    assert problems(fixed(data, {label_of(case)})) <= problems(data) - {label_of(case)}


def test_fix_long_header_is_folded_keeping_its_value():
    """Fixing LINE_TOO_LONG in a foldable header keeps the unfolded value."""
    subject = " ".join(["word"] * 300)
    data = HEAD + b"Subject: " + subject.encode() + b"\r\n\r\nbody\r\n"
    msg = email.message_from_bytes(fixed(data, {"LINE_TOO_LONG"}), policy=email.policy.compat32)
    assert str(msg["Subject"]).replace("\r\n", "") == subject


def test_fix_bare_lf_message_is_all_crlf():
    """Fixing NON_CANONICAL_LINE_ENDINGS leaves only CRLF line endings."""
    data, _ = CASES["NON_CANONICAL_LINE_ENDINGS (bare LF)"]
    out = fixed(data, {"NON_CANONICAL_LINE_ENDINGS"})
    assert out.count(b"\n") == out.count(b"\r\n") == out.count(b"\r")


def test_fix_name_ends_with_space_keeps_header_value():
    """Fixing NAME_ENDS_WITH_SPACE renames ``Subject :`` to ``Subject:`` with the same value."""
    data, _ = CASES["NAME_ENDS_WITH_SPACE"]
    assert b"\r\nSubject: hi\r\n" in fixed(data, {"NAME_ENDS_WITH_SPACE"})


def test_fix_missing_date_uses_now():
    """Fixing MISSING_DATE_HEADER adds a Date header for ``now``."""
    data, _ = CASES["MISSING_DATE_HEADER"]
    msg = email.message_from_bytes(fixed(data, {"MISSING_DATE_HEADER"}))
    assert email.utils.parsedate_to_datetime(msg["Date"]).timestamp() == NOW


def test_fix_missing_message_id_uses_hostname():
    """Fixing MISSING_MESSAGE_ID_HEADER adds a Message-ID in the hostname's domain."""
    data, _ = CASES["MISSING_MESSAGE_ID_HEADER"]
    msg = email.message_from_bytes(fixed(data, {"MISSING_MESSAGE_ID_HEADER"}))
    assert msg["Message-ID"].endswith("@mx.example.com>")


def test_fix_only_applies_requested_labels():
    """fix() leaves problems whose labels were not requested."""
    data = CLEAN.replace(b"Date: Fri, 01 Mar 2024 10:00:00 +0000\r\n", b"").replace(
        b"Message-ID: <1@example.com>\r\n", b""
    )
    assert problems(fixed(data, {"MISSING_DATE_HEADER"})) == {"MISSING_MESSAGE_ID_HEADER"}


def test_fix_of_clean_message_changes_nothing():
    """fix() with every label returns a clean CRLF message unchanged."""
    assert fixed(CLEAN, set(CHECKS)) == CLEAN


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", set()),
        ("MISSING_DATE_HEADER", {"MISSING_DATE_HEADER"}),
        ("LINE_TOO_LONG|MISSING_DATE_HEADER", {"LINE_TOO_LONG", "MISSING_DATE_HEADER"}),
        (" LINE_TOO_LONG | MISSING_DATE_HEADER |", {"LINE_TOO_LONG", "MISSING_DATE_HEADER"}),
        ("|".join(sorted(CHECKS)), set(CHECKS)),
    ],
)
def test_parse_labels(text, expected):
    """parse_labels splits on '|' and ignores blanks and surrounding spaces."""
    assert parse_labels(text) == expected


@pytest.mark.parametrize("text", ["NOT_A_LABEL", "LINE_TOO_LONG|BOGUS", "line_too_long"])
def test_parse_labels_unknown_raises(text):
    """parse_labels rejects an unknown label with ValueError."""
    with pytest.raises(ValueError, match="unknown conformance label"):
        parse_labels(text)
