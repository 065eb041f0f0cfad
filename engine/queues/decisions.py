"""The ready queue's decisions, as pure functions (values in, values out; no clock, no I/O).

Exports:
    Fate                        what happens to a message: delivered / transient / bounce /
                                give back to its scheduled queue / keep waiting / retry now
    SlotStep                    what a connection task does when its lease was refused
    connections_to_open(...)    how many connection tasks to start now
    after_lease_refused(...)    hold off, and wait or leave, when the connection limit is full
    after_no_target(...)        the waiting messages' fate when no host could be reached
    no_target_is_permanent(...) whether that failure is final (bounce) or worth a retry
    reply_fate(...)             a transaction's reply -> the message's fate
    lost_session_fate(...)      a lost session: a stale pooled connection (send again now
                                on a fresh one, no attempt counted) or a TransientFailure
    retires_connection(...)     whether the connection closes after a transaction
    rate_wait_fate(...)         wait for a message-rate token, or give the message back
    hold_delay(...)             how long a suspended queue's messages go back for
    connect_backoff(...)        how long to open no extra connections after no host answered

The loop that calls them is written down in ``queues/ready.py``'s docstring.
Like KumoMTA's ``ideal_connection_count`` (``crates/kumod/src/ready_queue.rs``),
each is tested by a table in ``tests/unit/test_ready_decisions.py``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from engine.config.backoff import backoff_delay
from engine.delivery.errors import LossCause, SessionLoss
from engine.records import Response

__all__ = [
    "CONNECT_BACKOFF_BASE",
    "CONNECT_BACKOFF_CAP",
    "MAX_SLOT_WAIT",
    "Fate",
    "SlotStep",
    "connections_to_open",
    "after_lease_refused",
    "after_no_target",
    "no_target_is_permanent",
    "reply_fate",
    "lost_session_fate",
    "retires_connection",
    "rate_wait_fate",
    "hold_delay",
    "connect_backoff",
    "worker_share",
]

CONNECT_BACKOFF_BASE = 0.5
"""After the first time no host could be reached, no extra connections for about this long
(doubling with each further consecutive failure) while others deliver."""
CONNECT_BACKOFF_CAP = 5.0
"""The longest such hold-off, so a receiver that comes back is used again promptly."""
MAX_SLOT_WAIT = 3.0
"""Longest single wait for a connection slot before asking the gate again."""
MIN_HOLD_DELAY = 1.0
"""A suspension that is about to end still puts messages back for at least this long."""


class Fate(enum.Enum):
    DELIVERED = "delivered"  # 2xx: log Delivery, remove from the spool
    TRANSIENT = "transient"  # 4xx or lost connection: TransientFailure, retry with backoff
    BOUNCE = "bounce"  # 5xx or a permanent routing failure: Bounce, remove
    GIVE_BACK = "give_back"  # back to the scheduled queue without counting an attempt
    KEEP_WAITING = "keep_waiting"  # stay in the ready queue for a connection that works
    RETRY_NOW = "retry_now"  # a stale pooled connection: send again at once on a fresh one


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotStep:
    """hold_off: seconds during which the queue opens no extra connections.
    sleep: seconds this task waits before asking again, or None: the task ends (the
    connections already established drain the queue)."""

    hold_off: float
    sleep: float | None


def connections_to_open(
    *,
    waiting: int,
    connecting: int,
    established: int,
    connection_limit: int,
    holding_off: bool,
    stopping: bool,
) -> int:
    """How many connection tasks to start now.

    waiting: messages in the ready queue; connecting: tasks not yet established (they
    will each take a message); established: open sessions; holding_off: a host refused
    us or the shared connection limit was full a moment ago.
    Never more than ``connection_limit`` in all, never more connecting than waiting.
    While holding off with a session open, that session drains the queue: asking
    again at once would spin. With none open, one task must still try (or nothing would).
    """
    if stopping or (holding_off and established > 0):
        return 0
    room = connection_limit - connecting - established
    return max(0, min(room, waiting - connecting))


def worker_share(connection_limit: int, workers: int) -> int:
    """How many connections one worker's ready queue may open: ``ceil(limit / workers)``.
    The node's limit itself holds through the shared lease set; the share keeps one worker
    from taking every slot while another worker's mail for the same destination waits
    (the kernel spreads sessions evenly, so each usually has its half of the work)."""
    if workers <= 1:
        return connection_limit
    return max(1, -(-connection_limit // workers))


def after_lease_refused(*, wait: float, established: int) -> SlotStep:
    """The gate refused a connection lease; ``wait``: seconds until a slot may free up."""
    pause = min(wait, MAX_SLOT_WAIT)
    return SlotStep(hold_off=pause, sleep=None if established > 0 else pause)


def no_target_is_permanent(*, tried_address: bool, resolution_transient: bool) -> bool:
    """Every target failed. Final only when no address could even be tried and no DNS
    failure may heal: hosts without addresses (550 5.4.4) or only prohibited ones."""
    return not tried_address and not resolution_transient


def after_no_target(*, established: int, permanent: bool) -> Fate:
    """The waiting messages' fate after every target failed on this connection attempt.

    While another connection is delivering, the messages stay for it; otherwise they
    all get this failure: a Bounce if it is permanent, else a TransientFailure.
    """
    if established > 0:
        return Fate.KEEP_WAITING
    return Fate.BOUNCE if permanent else Fate.TRANSIENT


def reply_fate(response: Response, *, lost: bool) -> Fate:
    """A transaction's reply -> the message's fate.

    lost: the session broke during it (timeout, disconnect, 421); ``response`` is then
    the synthetic 4xx naming the phase, and the message is retried later.
    2xx (and a 3xx that ended the transaction) delivered, 4xx transient, 5xx bounce,
    whether MAIL, RCPT or the end of DATA answered (RFC 5321 §4.2.1).
    """
    if lost or response.is_transient:
        return Fate.TRANSIENT
    if response.is_success:
        return Fate.DELIVERED
    return Fate.BOUNCE


def lost_session_fate(loss: SessionLoss, *, retried: bool) -> Fate:
    """A session was lost during a transaction: was it a delivery attempt?

    A pooled session (``loss.reused``) that the peer closed before answering the
    command in flight (``DISCONNECTED``: a restart, or its idle timeout shorter than
    ours) was found dead, not refused: RETRY_NOW, on a fresh connection, counting no
    attempt. That holds in every phase (idle, MAIL, RCPT, DATA); after the final dot the
    message may already have been delivered, and it is still sent again at once (a
    possible duplicate, as Postfix accepts, rather than a retry interval's delay).
    retried: the message already had its one immediate retry; a fresh session failing
    the same way, a timeout, a ``421`` or a garbled reply is an ordinary TRANSIENT.
    """
    if loss.cause is LossCause.DISCONNECTED and loss.reused and not retried:
        return Fate.RETRY_NOW
    return Fate.TRANSIENT


def retires_connection(
    *,
    response: Response | None,
    lost: bool,
    usable: bool,
    deliveries: int,
    max_deliveries: int,
    lease_kept: bool,
) -> bool:
    """Whether the connection closes after this transaction instead of taking the next.

    response: the reply (None when nothing was sent, e.g. the message was removed).
    usable: the session's own view; False after a refused RSET (the client sends RSET
    after a MAIL or RCPT refusal, RFC 5321 §4.1.1.5, so the session stays in step).
    A 4xx/5xx to MAIL or RCPT, or after DATA, ends only that transaction; a 421 means
    the peer is closing the channel (RFC 5321 §3.8). max_deliveries: the path's
    ``max_deliveries_per_connection``; lease_kept: the shared connection lease renewed.
    """
    if lost or not usable or not lease_kept:
        return True
    if response is not None and response.code == 421:
        return True
    return deliveries >= max_deliveries


def rate_wait_fate(*, wait: float, idle_timeout: float, stopping: bool) -> Fate:
    """A message-rate token is ``wait`` seconds away: wait on this connection
    (KEEP_WAITING), or, if longer than ``idle_timeout`` or draining, give the message
    back to its scheduled queue for that long (KumoMTA does the same)."""
    if stopping or wait > idle_timeout:
        return Fate.GIVE_BACK
    return Fate.KEEP_WAITING


def hold_delay(*, expires: float, now: float) -> float:
    """Seconds a suspended queue's messages go back to their scheduled queue for."""
    return max(MIN_HOLD_DELAY, expires - now)


def connect_backoff(*, failures: int, rand: float) -> float:
    """Seconds to open no extra connections after the ``failures``-th consecutive time no
    host could be reached (``config.backoff``: from CONNECT_BACKOFF_BASE, doubling,
    capped at CONNECT_BACKOFF_CAP, equal jitter from ``rand`` in [0, 1)). A session that
    opens resets the count and ends the hold-off."""
    return backoff_delay(failures, base=CONNECT_BACKOFF_BASE, cap=CONNECT_BACKOFF_CAP, rand=rand)
