"""The basic-auth brake: token-bucket decisions per peer, and the bounded peer table."""

from __future__ import annotations

import pytest

from engine.config.settings import ConfigError, load_settings
from engine.reception.auth import (
    Bucket,
    FailureBudget,
    FailureLimiter,
    after_failure,
    peer_key,
    retry_after,
)

BUDGET = FailureBudget(burst=10, refill=1.0)


@pytest.mark.parametrize(
    ("bucket", "now", "budget", "expected"),
    [
        (None, 0.0, BUDGET, 0),  # a new peer may try
        (Bucket(tokens=1.0, at=0.0), 0.0, BUDGET, 0),  # one try left
        (Bucket(tokens=0.0, at=0.0), 0.0, BUDGET, 1),  # empty: one refill away
        (Bucket(tokens=0.0, at=0.0), 0.5, BUDGET, 1),  # half-way: still 1 s (ceil)
        (Bucket(tokens=0.0, at=0.0), 1.0, BUDGET, 0),  # refilled one token
        (Bucket(tokens=0.0, at=0.0), 0.0, FailureBudget(burst=10, refill=30.0), 30),
        (Bucket(tokens=0.25, at=0.0), 0.0, FailureBudget(burst=3, refill=4.0), 3),
        (Bucket(tokens=0.0, at=0.0), 0.0, FailureBudget(burst=3, refill=0.01), 1),  # >= 1 s
        (Bucket(tokens=0.0, at=5.0), 4.0, BUDGET, 1),  # a clock going back gains nothing
    ],
)
def test_retry_after(bucket, now, budget, expected):
    """0 while at least one token is left, else the whole seconds until one is back."""
    assert retry_after(bucket, now, budget) == expected


@pytest.mark.parametrize(
    ("bucket", "now", "expected"),
    [
        (None, 7.0, Bucket(tokens=9.0, at=7.0)),  # a new peer starts full
        (Bucket(tokens=3.0, at=0.0), 0.0, Bucket(tokens=2.0, at=0.0)),
        (Bucket(tokens=3.0, at=0.0), 2.0, Bucket(tokens=4.0, at=2.0)),  # refill, then pay
        (Bucket(tokens=9.0, at=0.0), 100.0, Bucket(tokens=9.0, at=100.0)),  # capped at burst
        (Bucket(tokens=0.5, at=0.0), 0.0, Bucket(tokens=0.0, at=0.0)),  # never negative
    ],
)
def test_after_failure(bucket, now, expected):
    """A failure refills the bucket up to now (capped at burst) and takes one token."""
    assert after_failure(bucket, now, BUDGET) == expected


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # same /64, same bucket
        ("not-an-ip", "not-an-ip"),
        (None, ""),
    ],
)
def test_peer_key(address, key):
    """IPv4 peers are themselves; IPv6 peers share their /64."""
    assert peer_key(address) == key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_eleventh_failure_is_refused_until_refill():
    """Ten failures pass, then the peer waits; one refill period gives it one more try."""
    clock = Clock()
    limiter = FailureLimiter(BUDGET, max_peers=100, clock=clock)
    for _ in range(10):
        assert limiter.retry_after("192.0.2.1") == 0
        limiter.failed("192.0.2.1")
    assert limiter.retry_after("192.0.2.1") == 1
    assert limiter.retry_after("192.0.2.2") == 0  # other peers unaffected
    clock.now += 1.0
    assert limiter.retry_after("192.0.2.1") == 0
    limiter.failed("192.0.2.1")
    assert limiter.retry_after("192.0.2.1") == 1


def test_table_is_bounded_and_forgets_full_buckets():
    """At most max_peers are tracked; an entry expires once its bucket would be full."""
    clock = Clock()
    limiter = FailureLimiter(BUDGET, max_peers=50, clock=clock)
    for i in range(1000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert limiter.tracked == 50
    clock.now += BUDGET.burst * BUDGET.refill + 0.001
    limiter.failed("10.9.9.9")
    assert limiter.tracked == 1


def test_zero_burst_turns_the_brake_off():
    """burst = 0: no peer is ever refused and nothing is tracked."""
    limiter = FailureLimiter(FailureBudget(burst=0, refill=1.0), max_peers=10, clock=Clock())
    for _ in range(100):
        limiter.failed("192.0.2.1")
    assert (limiter.retry_after("192.0.2.1"), limiter.tracked) == (0, 0)


@pytest.mark.parametrize(
    "env",
    [
        {"NIMBUS_HTTP_AUTH_FAILURE_REFILL": "0"},
        {"NIMBUS_HTTP_AUTH_FAILURE_PEERS": "0"},
    ],
)
def test_settings_refuse_a_limit_that_cannot_refill(env):
    """A burst with no refill or no table is a configuration error naming the keys."""
    with pytest.raises(ConfigError, match=r"\[http\] auth_failure_refill"):
        load_settings(env=env)


def test_settings_from_environment():
    """The three NIMBUS_HTTP_AUTH_FAILURE_* names set the limiter."""
    settings = load_settings(
        env={
            "NIMBUS_HTTP_AUTH_FAILURE_BURST": "5",
            "NIMBUS_HTTP_AUTH_FAILURE_REFILL": "250ms",
            "NIMBUS_HTTP_AUTH_FAILURE_PEERS": "64",
        }
    )
    limiter = FailureLimiter.from_settings(settings.http)
    assert limiter.budget == FailureBudget(burst=5, refill=0.25)
