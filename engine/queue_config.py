"""Scheduled-queue configuration and the retry/expiry decisions made from it.

Exports:
    QueueConfig                                    make_queue_config's fields we honour
    retry_delay(cfg, num_attempts, rand) -> float  backoff with jitter (pure)
    next_attempt(cfg, created, now, num_attempts, rand) -> float | None
        the next due time, or None when the message must expire (pure)

Backoff is KumoMTA's (crates/kumod/src/queue/queue.rs): ``retry_interval * 2^n``
with n the zero-based number of attempts so far, capped at ``max_retry_interval``,
with jitter uniform in +/- half of min(retry_interval/20, 60 s). A message
expires when its age plus the next delay passes ``max_age``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["QueueConfig", "retry_delay", "next_attempt"]


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    """Per scheduled queue.

    retry_interval: first retry delay (seconds).
    max_retry_interval: cap on the delay, or None for no cap.
    max_age: a message older than this expires (551 5.4.7).
    egress_pool: pool name, or None for ``unspecified``.
    mx_list: explicit smarthosts ``host[:port]`` instead of MX lookup, or None.
    """

    retry_interval: float = 20 * 60.0
    max_retry_interval: float | None = None
    max_age: float = 7 * 86400.0
    egress_pool: str | None = None
    mx_list: tuple[str, ...] | None = None


def retry_delay(cfg: QueueConfig, num_attempts: int, rand: float) -> float:
    """Delay before the next attempt.

    num_attempts: attempts made so far (>= 1 after a failure); n = num_attempts - 1.
    rand: a uniform sample in [0, 1) supplying the jitter.
    """
    n = max(0, num_attempts - 1)
    delay = cfg.retry_interval * (2 ** min(n, 62))
    if cfg.max_retry_interval is not None:
        delay = min(delay, cfg.max_retry_interval)
    jitter_span = min(cfg.retry_interval / 20.0, 60.0)
    return max(0.0, delay + (rand - 0.5) * jitter_span)


def next_attempt(cfg: QueueConfig, created: float, now: float, num_attempts: int,
                 rand: float) -> float | None:
    """The next due time after a transient failure, or None if the message expires first."""
    due = now + retry_delay(cfg, num_attempts, rand)
    if due - created > cfg.max_age:
        return None
    return due
