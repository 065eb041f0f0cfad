"""Records: Response parsing, LogRecord JSON shape and message ids."""

from __future__ import annotations

import re

import pytest

from engine.records import (
    EnhancedCode,
    LogRecord,
    PeerAddress,
    RecordType,
    Response,
    new_message_id,
    rfc3339,
)

KUMO_KEYS = {
    "type",
    "id",
    "sender",
    "recipient",
    "queue",
    "site",
    "size",
    "response",
    "peer_address",
    "timestamp",
    "event_time",
    "created",
    "created_time",
    "num_attempts",
    "bounce_classification",
    "egress_pool",
    "egress_source",
    "source_address",
    "feedback_report",
    "meta",
    "headers",
    "delivery_protocol",
    "reception_protocol",
    "nodeid",
}
OPTIONAL = {
    "tls_cipher": "TLS_AES_256_GCM_SHA384",
    "tls_protocol_version": "TLSv1.3",
    "provider_name": "Example",
    "session_id": "sess-1",
}


@pytest.mark.parametrize(
    ("code", "text", "enhanced", "content"),
    [
        (250, "2.0.0 OK", EnhancedCode(2, 0, 0), "OK"),
        (550, "5.1.1 user unknown", EnhancedCode(5, 1, 1), "user unknown"),
        (451, "4.3.0", EnhancedCode(4, 3, 0), ""),
        (250, "OK queued", None, "OK queued"),
        (220, "mx.example.com ESMTP", None, "mx.example.com ESMTP"),
        (550, "5.7.1\tblocked", EnhancedCode(5, 7, 1), "blocked"),
        (550, "5.7.1blocked", None, "5.7.1blocked"),
        (550, "line one\r\nline two\n  line three  ", None, "line one line two line three"),
        (452, "4.5.3 too many\r\nrecipients", EnhancedCode(4, 5, 3), "too many recipients"),
        (421, "", None, ""),
    ],
)
def test_response_parse(code, text, enhanced, content):
    """parse lifts a leading enhanced code and joins multi-line text into one line."""
    r = Response.parse(code, text)
    assert (r.code, r.enhanced_code, r.content) == (code, enhanced, content)


def test_response_parse_keeps_command():
    """parse keeps the command the reply answers."""
    assert Response.parse(250, "OK", "RCPT TO:<a@b>\r\n").command == "RCPT TO:<a@b>\r\n"


@pytest.mark.parametrize(
    ("code", "text", "line"),
    [
        (250, "2.0.0 OK", "250 2.0.0 OK"),
        (250, "OK", "250 OK"),
        (451, "4.3.0", "451 4.3.0"),
        (421, "", "421"),
        (550, "5.1.1 no such\r\nuser", "550 5.1.1 no such user"),
    ],
)
def test_response_single_line(code, text, line):
    """single_line renders code, enhanced code and content on one line."""
    assert Response.parse(code, text).single_line() == line


@pytest.mark.parametrize(
    ("code", "success", "transient", "permanent"),
    [
        (250, True, False, False),
        (354, True, False, False),
        (421, False, True, False),
        (550, False, False, True),
    ],
)
def test_response_classification(code, success, transient, permanent):
    """is_success/is_transient/is_permanent follow the reply code class."""
    r = Response(code=code)
    assert (r.is_success, r.is_transient, r.is_permanent) == (success, transient, permanent)


def test_response_to_json():
    """to_json nests the enhanced code as class/subject/detail."""
    assert Response.parse(550, "5.7.1 no", "DATA\r\n").to_json() == {
        "code": 550,
        "enhanced_code": {"class": 5, "subject": 7, "detail": 1},
        "content": "no",
        "command": "DATA\r\n",
    }


def record(**overrides) -> LogRecord:
    """A Delivery record with every required field set, fields replaced by ``overrides``."""
    fields = dict(
        type=RecordType.DELIVERY,
        id="a" * 32,
        sender="s@example.com",
        recipient="r@example.net",
        queue="example.net",
        site="(mx1|mx2).example.net",
        size=1234,
        response=Response.parse(250, "2.0.0 OK", "."),
        timestamp=1_700_000_000.25,
        created=1_699_999_999.75,
        nodeid="node-1",
    )
    fields.update(overrides)
    return LogRecord(**fields)


def test_log_record_has_exactly_kumomta_keys():
    """to_json has exactly KumoMTA's JsonLogRecord keys when optional fields are None."""
    assert set(record().to_json()) == KUMO_KEYS


def test_log_record_response_shape():
    """The response nests code, enhanced_code{class,subject,detail}, content and command."""
    out = record().to_json()["response"]
    assert out == {
        "code": 250,
        "enhanced_code": {"class": 2, "subject": 0, "detail": 0},
        "content": "OK",
        "command": ".",
    }


def test_log_record_values():
    """Times are integer seconds plus RFC 3339 strings; type is KumoMTA's name."""
    out = record(
        peer_address=PeerAddress("mx1.example.net", "192.0.2.1"), meta={"tenant": "t"}
    ).to_json()
    assert (
        out["type"],
        out["timestamp"],
        out["event_time"],
        out["created"],
        out["created_time"],
        out["peer_address"],
        out["meta"],
        out["nodeid"],
    ) == (
        "Delivery",
        1_700_000_000,
        "2023-11-14T22:13:20.250000Z",
        1_699_999_999,
        "2023-11-14T22:13:19.750000Z",
        {"name": "mx1.example.net", "addr": "192.0.2.1"},
        {"tenant": "t"},
        "node-1",
    )


@pytest.mark.parametrize("name", sorted(OPTIONAL))
def test_log_record_optional_field_present_when_set(name):
    """An optional field (tls_cipher, ...) appears only when it has a value."""
    out = record(**{name: OPTIONAL[name]}).to_json()
    assert out[name] == OPTIONAL[name] and set(out) == KUMO_KEYS | {name}


@pytest.mark.parametrize(
    ("rtype", "name"),
    [
        (RecordType.RECEPTION, "Reception"),
        (RecordType.DELIVERY, "Delivery"),
        (RecordType.TRANSIENT_FAILURE, "TransientFailure"),
        (RecordType.BOUNCE, "Bounce"),
        (RecordType.EXPIRATION, "Expiration"),
        (RecordType.ADMIN_BOUNCE, "AdminBounce"),
        (RecordType.REJECTION, "Rejection"),
    ],
)
def test_record_type_names(rtype, name):
    """Record types serialise with KumoMTA's names."""
    assert record(type=rtype).to_json()["type"] == name


def test_new_message_id_is_32_hex():
    """new_message_id gives 32 lowercase hex digits."""
    assert re.fullmatch(r"[0-9a-f]{32}", new_message_id())


def test_new_message_ids_are_unique():
    """Successive ids differ."""
    assert len({new_message_id() for _ in range(1000)}) == 1000


def test_rfc3339_is_utc_with_microseconds():
    """rfc3339 renders UTC with microseconds and a Z suffix."""
    assert rfc3339(0.5) == "1970-01-01T00:00:00.500000Z"
