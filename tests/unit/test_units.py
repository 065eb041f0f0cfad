"""Unit-bearing strings: parse_duration, parse_size, parse_hostport, format_duration."""

from __future__ import annotations

import pytest

from engine.config.units import format_duration, parse_duration, parse_hostport, parse_size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("1h 30m", 5400.0),
        ("1h30m", 5400.0),
        ("2 hours", 7200.0),
        ("200ms", 0.2),
        ("7 days", 604800.0),
        ("1w", 604800.0),
        ("1.5h", 5400.0),
        ("  5 MIN ", 300.0),
        (90, 90.0),
        (0, 0.0),
        (2.5, 2.5),
        ("30", 30.0),
        ("0.5", 0.5),
    ],
)
def test_parse_duration_accepts(value, seconds):
    """Each accepted duration form gives its total in seconds."""
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["", "   ", "5 parsecs", "-5s", "s", "1h garbage", -1, -0.5, True, False]
)
def test_parse_duration_rejects(value):
    """An empty, unitless, unknown-unit, negative or boolean duration raises ValueError."""
    with pytest.raises(ValueError):
        parse_duration(value)


def test_parse_duration_error_names_unknown_unit():
    """The error for an unknown unit quotes the unit."""
    with pytest.raises(ValueError, match="parsecs"):
        parse_duration("5 parsecs")


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1234, 1234),
        ("1234", 1234),
        ("20MB", 20_000_000),
        ("20 mb", 20_000_000),
        ("512KiB", 524_288),
        ("1k", 1000),
        ("1_000_000", 1_000_000),
        ("1,000", 1000),
        ("1.5KB", 1500),
        ("2GiB", 2 * 1024**3),
        ("10b", 10),
    ],
)
def test_parse_size_accepts(value, size):
    """Each accepted size form gives whole bytes."""
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["", "lots", "20 parsecs", "-1", -1, True, "1 2"])
def test_parse_size_rejects(value):
    """A negative, boolean, empty or unparseable size raises ValueError."""
    with pytest.raises(ValueError):
        parse_size(value)


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        ("0.0.0.0:2525", {}, ("0.0.0.0", 2525)),
        ("127.0.0.1:0", {}, ("127.0.0.1", 0)),
        ("mail.example.com:25", {}, ("mail.example.com", 25)),
        ("[::1]:2525", {}, ("::1", 2525)),
        ("[::]:0", {}, ("::", 0)),
        (" 10.0.0.1:65535 ", {}, ("10.0.0.1", 65535)),
        ("mail.example.com", {"default_port": 25}, ("mail.example.com", 25)),
        ("[2001:db8::1]", {"default_port": 587}, ("2001:db8::1", 587)),
    ],
)
def test_parse_hostport_accepts(value, kwargs, expected):
    """host:port, [v6]:port and (with a default) bare hosts parse to (host, port)."""
    assert parse_hostport(value, **kwargs) == expected


@pytest.mark.parametrize(
    "value",
    [
        "mail.example.com",  # missing port
        "[::1]",  # missing port after v6 literal
        "::1",  # bare v6 without brackets: no port
        "host:",  # empty port
        "host:abc",  # non-numeric port
        "host:65536",  # out of range
        "host:-1",  # negative
        ":25",  # missing host
        "[::1",  # unclosed bracket
        "[::1]x25",  # junk after bracket
    ],
)
def test_parse_hostport_rejects(value):
    """A missing or bad port, missing host or malformed literal raises ValueError."""
    with pytest.raises(ValueError):
        parse_hostport(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0ms"),
        (0.2, "200ms"),
        (1, "1s"),
        (59, "59s"),
        (60, "1m"),
        (90, "1m30s"),
        (3600, "1h"),
        (5400, "1h30m"),
        (86400 + 3661, "1d1h1m1s"),
        (7 * 86400, "7d"),
    ],
)
def test_format_duration(seconds, text):
    """Seconds render compactly as d/h/m/s parts, or milliseconds below one second."""
    assert format_duration(seconds) == text


def test_format_duration_just_below_one_second():
    """A value that rounds up to a whole second renders as '1s', not '1000ms'."""
    assert format_duration(0.9996) == "1s"


@pytest.mark.parametrize("text", ["30s", "1h30m", "1d1h1m1s", "7d"])
def test_format_duration_round_trips_through_parse(text):
    """format_duration output parses back to the same number of seconds."""
    assert format_duration(parse_duration(text)) == text
