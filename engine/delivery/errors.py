"""Delivery errors: how an outbound SMTP session failed, each carrying a 4xx/5xx reply.

Exports (each carries ``.response: Response`` so callers log them uniformly)::

    DeliveryError
     +-- ConnectFailed      refused, connect/banner timeout, banner or EHLO/HELO refused
     +-- TlsRequiredError   the path requires TLS and the peer did not advertise STARTTLS
     +-- TlsFailed          STARTTLS refused or the TLS handshake / verification failed
     |    +-- TlsHandshakeFailed   the handshake itself failed (remember_broken_tls)
     +-- AuthFailed         AUTH PLAIN refused by the peer, or not allowed on this session
     +-- ConnectionLost     a timeout, disconnect or ``421`` during a transaction

A 4xx/5xx reply to MAIL, RCPT or DATA is not an exception: the transaction returns it.
"""

from __future__ import annotations

from engine.records import Response

__all__ = [
    "DeliveryError",
    "ConnectFailed",
    "TlsRequiredError",
    "TlsFailed",
    "TlsHandshakeFailed",
    "AuthFailed",
    "ConnectionLost",
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


class ConnectionLost(DeliveryError):
    """The session broke mid-use (timeout, disconnect, 421); the connection is unusable."""
