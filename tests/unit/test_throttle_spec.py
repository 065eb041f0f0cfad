"""ThrottleSpec and LimitSpec: parsing, canonical text and GCRA figures."""

from __future__ import annotations

import pytest

from engine.config.throttle_spec import LimitSpec, ThrottleSpec


@pytest.mark.parametrize(
    ("text", "limit", "period", "max_burst", "local"),
    [
        ("100/s", 100, 1, None, False),
        ("100/sec", 100, 1, None, False),
        ("100/second", 100, 1, None, False),
        ("100/m", 100, 60, None, False),
        ("100/min", 100, 60, None, False),
        ("1/minute", 1, 60, None, False),
        ("10/h", 10, 3600, None, False),
        ("10/hr", 10, 3600, None, False),
        ("10/hour", 10, 3600, None, False),
        ("500/d", 500, 86400, None, False),
        ("500/day", 500, 86400, None, False),
        ("20/30minute", 20, 1800, None, False),
        ("5/2h", 5, 7200, None, False),
        ("1,000/h", 1000, 3600, None, False),
        ("1_000/h", 1000, 3600, None, False),
        ("1_0,0/hour", 100, 3600, None, False),
        ("local:100/hr", 100, 3600, None, True),
        ("500/d,max_burst=1", 500, 86400, 1, False),
        ("local:1,000/30minute,max_burst=1_0", 1000, 1800, 10, True),
        (" 100/min ", 100, 60, None, False),
    ],
)
def test_throttle_parse_accepts(text, limit, period, max_burst, local):
    """Each accepted throttle form gives its limit, period in seconds, burst and locality."""
    assert ThrottleSpec.parse(text) == ThrottleSpec(
        limit=limit, period=period, max_burst=max_burst, local=local
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("100", "limit/period"),
        ("100/our", "unknown period"),
        ("100/H", "unknown period"),
        ("100/", "unknown period"),
        ("100/30", "unknown period"),
        ("100/0m", "multiplier"),
        ("0/s", "greater than 0"),
        ("three/hour", "invalid limit"),
        ("-5/s", "invalid limit"),
        ("/s", "invalid limit"),
        ("1.5/s", "invalid limit"),
        ("10/s,max_burst=0", "max_burst"),
        ("10/s,max_burst=x", "invalid max_burst"),
        ("remote:10/s", "invalid limit"),
        ("", "limit/period"),
    ],
)
def test_throttle_parse_rejects(text, reason):
    """A malformed throttle raises ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=reason):
        ThrottleSpec.parse(text)


@pytest.mark.parametrize("value", [100, None, 1.5, ["100/s"]])
def test_throttle_parse_rejects_non_strings(value):
    """Only strings are throttle specs."""
    with pytest.raises(ValueError, match="100/min"):
        ThrottleSpec.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("100/hr", "100/h"),
        ("local:100/hour", "local:100/h"),
        ("100/minute", "100/m"),
        ("5/second", "5/s"),
        ("500/day", "500/d"),
        ("20/30minute", "20/1800s"),
        ("500/d,max_burst=1", "500/d,max_burst=1"),
        ("1,000/min", "1000/m"),
    ],
)
def test_throttle_canonical_text(text, canonical):
    """str() is KumoMTA's canonical form, which parses back to the same spec."""
    spec = ThrottleSpec.parse(text)
    assert str(spec) == canonical
    assert ThrottleSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "rate", "interval", "burst"),
    [
        ("100/s", 100.0, 0.01, 100),
        ("60/min", 1.0, 1.0, 60),
        ("1/minute", 1 / 60, 60.0, 1),
        ("3600/h,max_burst=1", 1.0, 1.0, 1),
        ("20/30minute", 20 / 1800, 90.0, 20),
    ],
)
def test_throttle_gcra_figures(text, rate, interval, burst):
    """rate_per_second, emission_interval (period/limit) and burst (max_burst or limit)."""
    spec = ThrottleSpec.parse(text)
    assert spec.rate_per_second == pytest.approx(rate)
    assert spec.emission_interval == pytest.approx(interval)
    assert spec.burst == burst


@pytest.mark.parametrize(
    ("value", "limit", "local"),
    [
        (10, 10, False),
        (1, 1, False),
        ("10", 10, False),
        ("1,000", 1000, False),
        ("1_000", 1000, False),
        ("local:5", 5, True),
        ("local:1,000", 1000, True),
    ],
)
def test_limit_parse_accepts(value, limit, local):
    """A limit is an integer, a digit string with separators, or ``local:N``."""
    assert LimitSpec.parse(value) == LimitSpec(limit=limit, local=local)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0, "1 or larger"),
        (-3, "1 or larger"),
        ("0", "1 or larger"),
        ("local:0", "1 or larger"),
        (True, "expected a limit"),
        (2.5, "expected a limit"),
        ("ten", "invalid limit"),
        ("local:", "invalid limit"),
        ("5/s", "invalid limit"),
    ],
)
def test_limit_parse_rejects(value, reason):
    """Zero, negative, boolean, float and malformed limits raise ValueError."""
    with pytest.raises(ValueError, match=reason):
        LimitSpec.parse(value)


@pytest.mark.parametrize(("value", "text"), [(10, "10"), ("local:5", "local:5"), ("1,000", "1000")])
def test_limit_canonical_text(value, text):
    """str() of a limit is ``N`` or ``local:N``."""
    assert str(LimitSpec.parse(value)) == text
