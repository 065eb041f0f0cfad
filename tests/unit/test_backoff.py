"""The one retry schedule: capped exponential backoff with equal jitter."""

from __future__ import annotations

import math

import pytest

from engine.config.backoff import backoff_delay


@pytest.mark.parametrize(
    ("failures", "rand", "delay"),
    [
        (1, 0.0, 0.5),
        (1, 0.5, 0.75),
        (2, 0.0, 1.0),
        (3, 0.0, 2.0),
        (6, 0.0, 16.0),
        (6, 0.999, 31.984),
        (7, 0.0, 30.0),  # 64 s capped at 60, then jittered into [30, 60)
        (7, 0.5, 45.0),
        (50, 0.0, 30.0),
        (10_000, 0.0, 30.0),
        (0, 0.0, 0.5),  # treated as the first failure
        (-3, 0.0, 0.5),
    ],
)
def test_jittered_delay_table(failures, rand, delay):
    """The delay doubles from base to cap, jittered into [d/2, d)."""
    assert backoff_delay(failures, base=1.0, cap=60.0, rand=rand) == pytest.approx(delay)


@pytest.mark.parametrize(
    ("failures", "base", "cap", "delay"),
    [
        (1, 0.5, 30.0, 0.5),
        (2, 0.5, 30.0, 1.0),
        (7, 0.5, 30.0, 30.0),  # 32 s capped
        (1, 1200.0, math.inf, 1200.0),
        (4, 1200.0, math.inf, 9600.0),
        (100, 1.0, math.inf, 2.0**64),  # no overflow for a huge count
        (3, 1.0, 1.0, 1.0),  # cap == base: a fixed interval
    ],
)
def test_unjittered_schedule_table(failures, base, cap, delay):
    """Without rand the bare schedule: base * 2^(failures-1), capped."""
    assert backoff_delay(failures, base=base, cap=cap) == delay
