"""Retry backoff and expiry: retry_delay and next_attempt."""

from __future__ import annotations

import pytest

from engine.policy.queue_config import QueueConfig, next_attempt, retry_delay

MIN = 60.0
DEFAULT = QueueConfig()


@pytest.mark.parametrize(
    ("num_attempts", "delay"),
    [
        (0, 20 * MIN),
        (1, 20 * MIN),
        (2, 40 * MIN),
        (3, 80 * MIN),
        (4, 160 * MIN),
    ],
)
def test_retry_delay_doubles_without_jitter(num_attempts, delay):
    """With rand=0.5 (zero jitter) the delay is retry_interval * 2^(attempts-1)."""
    assert retry_delay(DEFAULT, num_attempts, 0.5) == pytest.approx(delay)


@pytest.mark.parametrize(
    ("num_attempts", "delay"),
    [
        (1, 20 * MIN),
        (2, 40 * MIN),
        (3, 60 * MIN),
        (10, 60 * MIN),
        (200, 60 * MIN),
    ],
)
def test_retry_delay_capped_by_max_retry_interval(num_attempts, delay):
    """The delay never exceeds max_retry_interval."""
    cfg = QueueConfig(max_retry_interval=60 * MIN)
    assert retry_delay(cfg, num_attempts, 0.5) == pytest.approx(delay)


@pytest.mark.parametrize(
    ("retry_interval", "rand", "offset"),
    [
        (20 * MIN, 0.0, -30.0),  # span min(1200/20, 60) = 60 -> +/-30
        (20 * MIN, 0.999999, 30.0),
        (60 * MIN, 0.0, -30.0),  # span capped at 60 s
        (60 * MIN, 0.999999, 30.0),
        (100.0, 0.0, -2.5),  # span 100/20 = 5 -> +/-2.5
        (100.0, 0.999999, 2.5),
        (100.0, 0.25, -1.25),
    ],
)
def test_retry_delay_jitter_bounds(retry_interval, rand, offset):
    """Jitter spans +/- half of min(retry_interval/20, 60 s) as rand goes from 0 to 1."""
    cfg = QueueConfig(retry_interval=retry_interval)
    assert retry_delay(cfg, 1, rand) == pytest.approx(retry_interval + offset, abs=1e-3)


def test_retry_delay_never_negative():
    """A tiny retry interval with minimum jitter still gives a non-negative delay."""
    assert retry_delay(QueueConfig(retry_interval=0.0), 1, 0.0) == 0.0


@pytest.mark.parametrize(
    ("created", "now", "num_attempts", "expected"),
    [
        (0.0, 0.0, 1, 20 * MIN),  # young message: now + delay
        (0.0, 1000.0, 2, 1000.0 + 40 * MIN),
        (0.0, 7 * 86400 - 20 * MIN, 1, 7 * 86400.0),  # lands exactly on max_age: still due
        (0.0, 7 * 86400 - 19 * MIN, 1, None),  # would pass max_age: expires
        (0.0, 8 * 86400, 1, None),  # already older than max_age
    ],
)
def test_next_attempt(created, now, num_attempts, expected):
    """next_attempt is now + retry delay, or None when that passes max_age."""
    result = next_attempt(DEFAULT, created, now, num_attempts, 0.5)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_next_attempt_honours_custom_max_age():
    """A short max_age expires a message whose next retry would be later."""
    cfg = QueueConfig(retry_interval=60.0, max_age=100.0)
    assert next_attempt(cfg, 0.0, 50.0, 1, 0.5) is None
