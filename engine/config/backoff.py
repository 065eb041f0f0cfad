"""Retry backoff: how long to wait after the n-th consecutive failure (pure).

Exports:
    backoff_delay(failures, *, base, cap, rand=None) -> float
        ``base * 2^(failures-1)`` capped at ``cap``; with ``rand``, "equal jitter"

One schedule for every retry loop of the engine: log-hook POSTs and their SQLite
writes, the TSA subscriber's Redis reconnects, the Redis throttle store's outage
probes, and the exponential part of KumoMTA's queue retry delay
(``engine.policy.queue_config.retry_delay``, which adds its own jitter).

Equal jitter (half fixed, half random, as in the AWS Architecture Blog's
"Exponential Backoff And Jitter") keeps the delay at least half the schedule while
spreading nodes that failed together, so they do not retry one endpoint in step.
Callers pass ``rand`` (a uniform sample in [0, 1)) so the function stays pure.
"""

from __future__ import annotations

__all__ = ["backoff_delay"]

# 2^64 times any sane base is far past any cap; stops float overflow for huge counts.
_MAX_DOUBLINGS = 64


def backoff_delay(failures: int, *, base: float, cap: float, rand: float | None = None) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure.

    failures: consecutive failures so far, 1-based (0 or less counts as the first).
    base: the delay after the first failure; it doubles with each further one.
    cap: the most the schedule may reach (``math.inf`` for no cap).
    rand: None for the bare schedule ``d``; else a sample in [0, 1) that places the
        delay in [d/2, d).
    """
    d = min(cap, base * 2.0 ** min(max(failures, 1) - 1, _MAX_DOUBLINGS))
    if rand is None:
        return d
    return d / 2 + d / 2 * rand
