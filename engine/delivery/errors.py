"""Delivery errors: how an outbound SMTP session failed, each carrying a 4xx/5xx reply.

Exports (each carries ``.response: Response`` so callers log them uniformly)::

    DeliveryError
     +-- ConnectFailed      refused, connect/banner timeout, banner or EHLO/HELO refused
     +-- TlsRequiredError   the path requires TLS and the peer did not advertise STARTTLS
     +-- TlsFailed          STARTTLS refused or the TLS handshake / verification failed
     |    +-- TlsHandshakeFailed   the handshake itself failed (remember_broken_tls)
     +-- AuthFailed         AUTH PLAIN refused by the peer, or not allowed on this session
     +-- ConnectionLost     a timeout, disconnect or ``421`` during a transaction;
                            ``loss`` (a SessionLoss) says where and how

    LossCause   how a session was lost: disconnected / timeout / closing (421) / garbled
    SessionLoss the typed facts of a ConnectionLost: phase, cause, whether the session
                had carried a transaction before (reused)

A 4xx/5xx reply to MAIL, RCPT or DATA is not an exception: the transaction returns it.
Whether a loss costs the message an attempt is the ready queue's pure decision
(``queues.decisions.lost_session_fate``): a pooled session the peer closed before
answering is a stale connection, not a delivery attempt.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from engine.records import Response

__all__ = [
    "DeliveryError",
    "ConnectFailed",
    "TlsRequiredError",
    "TlsFailed",
    "TlsHandshakeFailed",
    "AuthFailed",
    "ConnectionLost",
    "LossCause",
    "SessionLoss",
]


class DeliveryError(Exception):
    """A connection-level failure; ``response`` is a (usually synthetic) 4xx reply."""

    def __init__(self, response: Response) -> None:
        super().__init__(str(response))
        self.response = response


class ConnectFailed(DeliveryError):
    """The session could not be opened (TCP, banner, EHLO/HELO)."""


class TlsRequiredError(DeliveryError):
    """TLS is required but the peer did not offer STARTTLS; nothing was sent."""


class TlsFailed(DeliveryError):
    """STARTTLS was refused, or the handshake or certificate verification failed."""


class TlsHandshakeFailed(TlsFailed):
    """STARTTLS was accepted but the handshake or certificate verification failed."""


class AuthFailed(DeliveryError):
    """AUTH PLAIN was refused by the peer, or not attempted (no TLS, unverified)."""


class LossCause(enum.Enum):
    DISCONNECTED = "disconnected"  # EOF or reset before the command in flight was answered
    TIMEOUT = "timeout"  # no reply within the phase's timeout
    CLOSING = "closing"  # the peer answered 421: it is closing the channel (RFC 5321 §3.8)
    GARBLED = "garbled"  # a malformed reply: the session is out of step


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionLoss:
    """phase: what was in flight: ``idle`` (found closed before MAIL FROM was sent),
    ``MAIL FROM``, ``RCPT TO``, ``DATA``, ``end-of-data`` (after the final dot), or an
    opening phase (``EHLO``, ``AUTH``). reused: the session had carried a transaction
    before this one (a pooled connection)."""

    phase: str
    cause: LossCause
    reused: bool


class ConnectionLost(DeliveryError):
    """The session broke mid-use (timeout, disconnect, 421); the connection is unusable.

    loss: where and how; the default is a disconnect on a fresh session (never stale).
    """

    def __init__(self, response: Response, loss: SessionLoss | None = None) -> None:
        super().__init__(response)
        self.loss = loss or SessionLoss(
            phase=response.command or "idle", cause=LossCause.DISCONNECTED, reused=False
        )
