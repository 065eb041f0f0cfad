"""Table tests of the ready queue's pure decisions (engine/queues/decisions.py)."""

import pytest

from engine.delivery.errors import ConnectionLost, LossCause, SessionLoss
from engine.queues.decisions import (
    CONNECT_BACKOFF_BASE,
    CONNECT_BACKOFF_CAP,
    MAX_SLOT_WAIT,
    Fate,
    SlotStep,
    after_lease_refused,
    after_no_target,
    connect_backoff,
    connections_to_open,
    hold_delay,
    lost_session_fate,
    no_target_is_permanent,
    rate_wait_fate,
    reply_fate,
    retires_connection,
    worker_share,
)
from engine.records import Response


@pytest.mark.parametrize(
    ("waiting", "connecting", "established", "limit", "holding_off", "stopping", "expected"),
    [
        (0, 0, 0, 32, False, False, 0),  # nothing waits: nothing opens
        (1, 0, 0, 32, False, False, 1),  # one message, one connection
        (5, 0, 0, 32, False, False, 5),  # never more than there are messages
        (5, 2, 0, 32, False, False, 3),  # the connecting ones each take one
        (5, 5, 0, 32, False, False, 0),
        (100, 0, 0, 4, False, False, 4),  # connection_limit caps it
        (100, 1, 2, 4, False, False, 1),  # limit counts connecting and established
        (100, 0, 4, 4, False, False, 0),
        (100, 0, 6, 4, False, False, 0),  # over the limit (path shrank): never negative
        (3, 0, 1, 32, False, False, 3),  # established ones are busy or will pick up
        (3, 0, 1, 32, True, False, 0),  # holding off with a session open: it drains
        (3, 0, 0, 32, True, False, 3),  # holding off with none open: someone must try
        (3, 0, 0, 32, False, True, 0),  # stopping: nothing new
        (3, 0, 0, 0, False, False, 0),  # limit 0: nothing
    ],
)
def test_connections_to_open(
    waiting: int,
    connecting: int,
    established: int,
    limit: int,
    holding_off: bool,
    stopping: bool,
    expected: int,
) -> None:
    """Connections opened: min(room under the limit, messages not yet claimed)."""
    assert (
        connections_to_open(
            waiting=waiting,
            connecting=connecting,
            established=established,
            connection_limit=limit,
            holding_off=holding_off,
            stopping=stopping,
        )
        == expected
    )


@pytest.mark.parametrize(
    ("wait", "established", "expected"),
    [
        (0.5, 0, SlotStep(hold_off=0.5, sleep=0.5)),  # nobody else: wait and ask again
        (0.5, 2, SlotStep(hold_off=0.5, sleep=None)),  # others drain the queue: leave
        (60.0, 0, SlotStep(hold_off=MAX_SLOT_WAIT, sleep=MAX_SLOT_WAIT)),  # capped
        (60.0, 1, SlotStep(hold_off=MAX_SLOT_WAIT, sleep=None)),
    ],
)
def test_after_lease_refused(wait: float, established: int, expected: SlotStep) -> None:
    """A refused lease holds new connections off, and this task waits only if alone."""
    assert after_lease_refused(wait=wait, established=established) == expected


@pytest.mark.parametrize(
    ("tried_address", "resolution_transient", "permanent"),
    [
        (False, False, True),  # no address anywhere, or only prohibited ones: 5xx
        (False, True, False),  # a DNS failure that may heal: retry
        (True, False, False),  # a host refused: retry
        (True, True, False),
    ],
)
def test_no_target_is_permanent(
    tried_address: bool, resolution_transient: bool, permanent: bool
) -> None:
    """Only a failure no retry can heal bounces the waiting messages."""
    assert (
        no_target_is_permanent(
            tried_address=tried_address, resolution_transient=resolution_transient
        )
        is permanent
    )


@pytest.mark.parametrize(
    ("established", "permanent", "fate"),
    [
        (0, False, Fate.TRANSIENT),
        (0, True, Fate.BOUNCE),
        (1, False, Fate.KEEP_WAITING),  # another session delivers them
        (3, True, Fate.KEEP_WAITING),
    ],
)
def test_after_no_target(established: int, permanent: bool, fate: Fate) -> None:
    """No host reachable: fail the queue unless another connection is delivering."""
    assert after_no_target(established=established, permanent=permanent) is fate


def _reply(code: int, command: str) -> Response:
    return Response.parse(code, "x", command)


@pytest.mark.parametrize(
    ("response", "lost", "fate"),
    [
        (_reply(250, "DATA"), False, Fate.DELIVERED),
        (_reply(251, "DATA"), False, Fate.DELIVERED),
        (_reply(450, "MAIL FROM"), False, Fate.TRANSIENT),
        (_reply(451, "RCPT TO"), False, Fate.TRANSIENT),
        (_reply(452, "DATA"), False, Fate.TRANSIENT),
        (_reply(550, "MAIL FROM"), False, Fate.BOUNCE),
        (_reply(550, "RCPT TO"), False, Fate.BOUNCE),
        (_reply(554, "DATA"), False, Fate.BOUNCE),
        (_reply(421, "RCPT TO"), True, Fate.TRANSIENT),  # peer closing: retry later
        (_reply(451, "DATA"), True, Fate.TRANSIENT),  # timeout waiting for the dot reply
    ],
)
def test_reply_fate(response: Response, lost: bool, fate: Fate) -> None:
    """2xx delivered, 4xx or a lost session retried, 5xx bounced, whichever command."""
    assert reply_fate(response, lost=lost) is fate


@pytest.mark.parametrize(
    ("response", "lost", "usable", "deliveries", "max_deliveries", "kept", "retire"),
    [
        (_reply(250, "DATA"), False, True, 1, 1024, True, False),  # reuse
        (_reply(250, "DATA"), False, True, 1024, 1024, True, True),  # max reached
        (_reply(250, "DATA"), False, True, 1, 1, True, True),
        (_reply(550, "RCPT TO"), False, True, 1, 1024, True, False),  # RSET, next txn
        (_reply(450, "MAIL FROM"), False, True, 1, 1024, True, False),
        (_reply(550, "RCPT TO"), False, False, 1, 1024, True, True),  # RSET refused
        (_reply(554, "DATA"), False, True, 1, 1024, True, False),  # txn over, keep
        (_reply(451, "DATA"), False, True, 1, 1024, True, False),
        (_reply(421, "MAIL FROM"), True, False, 1, 1024, True, True),  # RFC 5321 3.8
        (_reply(421, "DATA"), False, True, 1, 1024, True, True),  # 421 even if not lost
        (_reply(451, "DATA"), True, False, 1, 1024, True, True),  # timeout
        (_reply(250, "DATA"), False, True, 1, 1024, False, True),  # lease lost
        (None, False, True, 0, 1024, True, False),  # body gone: nothing sent, keep
        (None, False, True, 5, 5, True, True),
    ],
)
def test_retires_connection(
    response: Response | None,
    lost: bool,
    usable: bool,
    deliveries: int,
    max_deliveries: int,
    kept: bool,
    retire: bool,
) -> None:
    """A session is reused unless broken, at max_deliveries_per_connection or unleased."""
    assert (
        retires_connection(
            response=response,
            lost=lost,
            usable=usable,
            deliveries=deliveries,
            max_deliveries=max_deliveries,
            lease_kept=kept,
        )
        is retire
    )


@pytest.mark.parametrize(
    ("wait", "idle_timeout", "stopping", "fate"),
    [
        (0.1, 5.0, False, Fate.KEEP_WAITING),
        (5.0, 5.0, False, Fate.KEEP_WAITING),
        (5.1, 5.0, False, Fate.GIVE_BACK),  # longer than the connection would idle
        (0.1, 5.0, True, Fate.GIVE_BACK),  # draining: don't hold the message
    ],
)
def test_rate_wait_fate(wait: float, idle_timeout: float, stopping: bool, fate: Fate) -> None:
    """Short rate waits happen on the connection; long ones go back to the scheduler."""
    assert rate_wait_fate(wait=wait, idle_timeout=idle_timeout, stopping=stopping) is fate


@pytest.mark.parametrize(
    ("expires", "now", "delay"),
    [(1000.0, 900.0, 100.0), (1000.0, 999.5, 1.0), (1000.0, 2000.0, 1.0)],
)
def test_hold_delay(expires: float, now: float, delay: float) -> None:
    """A suspension gives messages back until it ends, at least one second."""
    assert hold_delay(expires=expires, now=now) == delay


D, T, C, G = LossCause.DISCONNECTED, LossCause.TIMEOUT, LossCause.CLOSING, LossCause.GARBLED


@pytest.mark.parametrize(
    ("phase", "cause", "reused", "retried", "fate"),
    [
        # A pooled session the peer closed before answering: not an attempt, in every phase.
        ("idle", D, True, False, Fate.RETRY_NOW),  # found closed before MAIL was sent
        ("MAIL FROM", D, True, False, Fate.RETRY_NOW),
        ("RCPT TO", D, True, False, Fate.RETRY_NOW),
        ("DATA", D, True, False, Fate.RETRY_NOW),
        ("end-of-data", D, True, False, Fate.RETRY_NOW),  # maybe delivered: a duplicate at worst
        # The one immediate retry is spent: an ordinary TransientFailure (no spinning).
        ("MAIL FROM", D, True, True, Fate.TRANSIENT),
        ("end-of-data", D, True, True, Fate.TRANSIENT),
        # A fresh session failing so is a TransientFailure.
        ("idle", D, False, False, Fate.TRANSIENT),
        ("MAIL FROM", D, False, False, Fate.TRANSIENT),
        ("end-of-data", D, False, False, Fate.TRANSIENT),
        # The peer answered or is slow: a real attempt, even on a pooled session.
        ("MAIL FROM", T, True, False, Fate.TRANSIENT),  # a timeout is not "found dead"
        ("end-of-data", T, True, False, Fate.TRANSIENT),
        ("MAIL FROM", C, True, False, Fate.TRANSIENT),  # 421: RFC 5321 §3.8, it said so
        ("RCPT TO", G, True, False, Fate.TRANSIENT),  # a malformed reply
    ],
)
def test_lost_session_fate(
    phase: str, cause: LossCause, reused: bool, retried: bool, fate: Fate
) -> None:
    loss = SessionLoss(phase=phase, cause=cause, reused=reused)
    assert lost_session_fate(loss, retried=retried) is fate


def test_connection_lost_without_facts_is_never_stale() -> None:
    """A ConnectionLost raised without a SessionLoss (e.g. by a fake) is a fresh-session
    disconnect: a TransientFailure, never a retry."""
    lost = ConnectionLost(Response.parse(421, "4.4.2 gone", "MAIL FROM"))
    assert lost.loss == SessionLoss(phase="MAIL FROM", cause=D, reused=False)
    assert lost_session_fate(lost.loss, retried=False) is Fate.TRANSIENT


@pytest.mark.parametrize(
    ("failures", "rand", "expected"),
    [
        (1, 0.0, CONNECT_BACKOFF_BASE / 2),  # equal jitter: at least half the schedule
        (1, 0.999999, CONNECT_BACKOFF_BASE),  # below the full schedule
        (2, 0.0, CONNECT_BACKOFF_BASE),  # doubles per consecutive failure
        (3, 0.0, CONNECT_BACKOFF_BASE * 2),
        (10, 0.0, CONNECT_BACKOFF_CAP / 2),  # capped
        (10, 0.999999, CONNECT_BACKOFF_CAP),
        (10_000, 0.5, CONNECT_BACKOFF_CAP * 0.75),  # huge counts do not overflow
        (0, 0.0, CONNECT_BACKOFF_BASE / 2),  # 0 counts as the first
    ],
)
def test_connect_backoff(failures: int, rand: float, expected: float) -> None:
    assert connect_backoff(failures=failures, rand=rand) == pytest.approx(expected, rel=1e-5)


def test_connect_backoff_recovers_promptly() -> None:
    """The cap keeps the hold-off after a long outage short (it was a fixed 5 s)."""
    assert max(connect_backoff(failures=n, rand=0.999999) for n in range(1, 100)) <= 5.0


@pytest.mark.parametrize(
    "limit, workers, share",
    [(10, 1, 10), (10, 2, 5), (11, 2, 6), (1, 2, 1), (3, 4, 1), (32, 3, 11), (10, 0, 10)],
)
def test_worker_share_of_a_connection_limit(limit, workers, share):
    """Each worker may open ceil(limit / workers), at least one; one worker: the limit."""
    assert worker_share(limit, workers) == share
