"""PolicyMessage: header access and edits on raw bytes, and meta."""

from __future__ import annotations

import re

import pytest

from engine.policy.message import PolicyMessage

BODY = b"\r\nHello,\r\n\r\nSubject: not a header\r\n"
RAW = (
    b"From: Ann <ann@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: a long\r\n subject line\r\n"
    b"X-Tag: one\r\n"
    b"x-tag: two\r\n" + BODY
)


def message(data: bytes = RAW) -> PolicyMessage:
    return PolicyMessage("id1", "ann@example.com", "bob@example.net", data, {"tenant": "t"})


def body_of(data: bytes) -> bytes:
    """Everything after the blank line that ends the header block."""
    return data[data.index(b"\r\n\r\n") + 4 :]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("From", "Ann <ann@example.com>"),
        ("from", "Ann <ann@example.com>"),
        ("TO", "bob@example.net"),
        ("x-tag", "one"),
        ("X-Missing", None),
    ],
)
def test_get_first_named_header_value_case_insensitive(name, value):
    """Header lookup ignores case and returns the first value, or None."""
    assert message().get_first_named_header_value(name) == value


def test_folded_header_is_unfolded():
    """A folded header value comes back on one line."""
    assert message().get_first_named_header_value("subject") == "a long subject line"


def test_get_all_named_header_values_in_order():
    """All values of a repeated header come back in message order."""
    assert message().get_all_named_header_values("X-TAG") == ["one", "two"]


def test_body_lines_are_not_headers():
    """A header-like line in the body is not returned as a header."""
    assert message().get_all_named_header_values("Subject") == ["a long subject line"]


def test_append_header_goes_last_and_keeps_body():
    """append_header adds the header after the others and leaves the body intact."""
    msg = message()
    msg.append_header("X-Added", "yes")
    data = msg.get_data()
    assert data == RAW[: -len(BODY)] + b"X-Added: yes\r\n" + BODY


def test_prepend_header_goes_first_and_keeps_body():
    """prepend_header adds the header before the others and leaves the body intact."""
    msg = message()
    msg.prepend_header("Received", "from here")
    data = msg.get_data()
    assert data.startswith(b"Received: from here\r\nFrom: Ann") and body_of(data) == BODY[2:]


def test_remove_all_named_headers_keeps_body():
    """remove_all_named_headers drops every matching header, any case, and keeps the body."""
    msg = message()
    msg.remove_all_named_headers("X-TAG")
    data = msg.get_data()
    assert msg.get_all_named_header_values("x-tag") == []
    assert body_of(data) == BODY[2:]
    assert msg.get_first_named_header_value("From") == "Ann <ann@example.com>"


def test_remove_folded_header_removes_continuation():
    """Removing a folded header removes its continuation lines too."""
    msg = message()
    msg.remove_all_named_headers("Subject")
    assert b"subject line" not in msg.get_data().split(b"\r\n\r\n", 1)[0]


def test_header_edits_on_message_without_body():
    """Editing headers of a message without a blank line adds the header/body separator."""
    msg = message(b"From: a@example.com")
    msg.append_header("X-A", "1")
    assert msg.get_data() == b"From: a@example.com\r\nX-A: 1\r\n\r\n"


@pytest.mark.parametrize("value", ["Grüße aus Köln", "日本語の件名", "ü" * 10])
def test_non_ascii_value_encoded_and_decoded(value):
    """A non-ASCII header value is stored as an RFC 2047 ASCII word and reads back unchanged."""
    msg = message()
    msg.append_header("Subject-2", value)
    head = msg.get_data().split(b"\r\n\r\n", 1)[0]
    assert head.isascii() and b"=?utf-8?" in head.lower()
    assert msg.get_first_named_header_value("subject-2") == value


def test_long_non_ascii_value_folds_with_crlf():
    """A long non-ASCII header value is folded with CRLF, never a bare LF."""
    msg = message()
    msg.append_header("Subject", "ü" * 60)
    assert re.search(rb"(?<!\r)\n", msg.get_data()) is None


def test_meta_get_set():
    """set_meta stores a value get_meta and meta then return."""
    msg = message()
    msg.set_meta("queue", "custom")
    assert (msg.get_meta("queue"), msg.get_meta("tenant"), msg.get_meta("nope", 5), msg.meta) == (
        "custom",
        "t",
        5,
        {"tenant": "t", "queue": "custom"},
    )


def test_meta_is_copied_from_constructor_argument():
    """Changing meta does not change the dict the message was built from."""
    original = {"tenant": "t"}
    msg = PolicyMessage("i", "s", "r", RAW, original)
    msg.set_meta("tenant", "u")
    assert original == {"tenant": "t"}


def test_envelope_accessors():
    """id, sender and recipient are readable and sender/recipient settable."""
    msg = message()
    msg.set_sender("new@example.com")
    msg.set_recipient("other@example.org")
    assert (msg.id(), msg.sender(), msg.recipient()) == (
        "id1",
        "new@example.com",
        "other@example.org",
    )
