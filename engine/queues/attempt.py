"""One delivery attempt on an open session: send, rewrite a refusal, apply the fate.

Exports:
    Sent            what the connection does next: the reply, whether the session was
                    lost, and whether it was found stale (send the message again now)
    attempt_facts   the Attempt (log record facts) for a session of a route
    deliver(...)    send one message on a session and apply its fate (``queues.decisions``)
    apply_fate(...) a Fate -> the disposition (``queues.outcomes``)

A lost session whose ``lost_session_fate`` is RETRY_NOW (a pooled connection the peer
closed before answering) is not an attempt: no log record, no attempt counted, only the
``pooled_connection_stale`` diagnostic line naming the phase; the ready queue sends the
message again at once on a fresh session (``queues.ready``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from engine.delivery.errors import ConnectionLost
from engine.delivery.ports import SmtpConnection
from engine.policy.events import Registry
from engine.queues.connect import ReadyRoute
from engine.queues.decisions import Fate, lost_session_fate, reply_fate
from engine.queues.outcomes import Attempt, Outcomes
from engine.queues.rewrite import rewrite_delivery_status
from engine.records import Message, Response

__all__ = ["Sent", "attempt_facts", "deliver", "apply_fate"]

log = logging.getLogger("nimbus.ready")


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """response: the reply (None: nothing was sent, the message was removed). lost: the
    session broke. stale: RETRY_NOW, the message awaits its immediate retry."""

    response: Response | None
    lost: bool = False
    stale: bool = False


def attempt_facts(route: ReadyRoute, conn: SmtpConnection | None = None) -> Attempt:
    """Where an attempt on ``route`` went; without a session, no peer or TLS facts."""
    if conn is None:
        return Attempt(site=route.name, egress_source=route.source.name, egress_pool=route.pool)
    return Attempt(
        site=route.name,
        egress_source=route.source.name,
        egress_pool=route.pool,
        peer=conn.peer,
        tls_cipher=conn.tls_cipher,
        tls_protocol_version=conn.tls_protocol_version,
        provider_name=route.path.provider_name,
    )


async def deliver(
    route: ReadyRoute,
    conn: SmtpConnection,
    msg: Message,
    data: bytes,
    *,
    outcomes: Outcomes,
    policy: Callable[[], Registry],
    retried: bool,
) -> Sent:
    """Send ``msg`` (its body ``data``) on ``conn`` and apply its fate.

    retried: this is the message's immediate retry after a stale session (so a second
    loss is an ordinary TransientFailure).
    """
    lost = False
    try:
        response = await conn.send(msg.sender, msg.recipient, data)
    except ConnectionLost as exc:
        response, lost = exc.response, True
        if lost_session_fate(exc.loss, retried=retried) is Fate.RETRY_NOW:
            log.info(
                "pooled_connection_stale",
                extra={
                    "ready_queue": route.name,
                    "id": msg.id,
                    "phase": exc.loss.phase,
                    "peer": conn.peer.addr,
                    "response": str(exc.response),
                },
            )
            return Sent(response=response, lost=True, stale=True)
    except Exception as exc:  # a bug must cost a retry, never the message
        log.exception("delivery_internal_error", extra={"id": msg.id})
        response = Response.parse(451, f"4.3.0 internal error: {type(exc).__name__}")
        lost = True
    if not lost and not response.is_success:
        response = await rewrite_delivery_status(policy(), msg.queue, response)
    fate = reply_fate(response, lost=lost)
    await apply_fate(outcomes, fate, msg, response, attempt_facts(route, conn))
    return Sent(response=response, lost=lost)


async def apply_fate(
    outcomes: Outcomes, fate: Fate, msg: Message, response: Response, attempt: Attempt
) -> None:
    """DELIVERED / TRANSIENT / BOUNCE -> the disposition; other fates change nothing."""
    if fate is Fate.DELIVERED:
        outcomes.delivered(msg, response, attempt)
    elif fate is Fate.TRANSIENT:
        await outcomes.transient(msg, response, attempt)
    elif fate is Fate.BOUNCE:
        outcomes.bounced(msg, response, attempt)
