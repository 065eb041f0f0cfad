"""Broken STARTTLS memory: ``remember_broken_tls`` and the plaintext reconnect.

Exports:
    BrokenTlsHosts     addresses whose TLS handshake failed, each until its expiry
    open_connection(broken, **open_kwargs) -> SmtpClientConnection

KumoMTA semantics (``make_egress_path``): with an Opportunistic TLS mode, a failed
handshake marks the host as broken for ``remember_broken_tls``; connections to it
skip STARTTLS meanwhile (RFC 7435 3: opportunistic security prefers an unencrypted
delivery to none). ``opportunistic_tls_reconnect_on_failed_handshake`` reconnects
in plaintext at once. Required modes never fall back. AUTH PLAIN still refuses a
plaintext session (``smtp_auth``), so a credential never follows the fallback.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from engine.delivery.client import SmtpClientConnection
from engine.delivery.errors import TlsHandshakeFailed
from engine.policy.egress import EgressPathConfig, TlsMode

__all__ = ["BrokenTlsHosts", "open_connection"]

MAX_REMEMBERED = 10_000
"""Bound on remembered addresses; the oldest entry goes first past it."""

_OPPORTUNISTIC = (TlsMode.OPPORTUNISTIC, TlsMode.OPPORTUNISTIC_INSECURE)


class BrokenTlsHosts:
    """Addresses whose STARTTLS handshake failed, remembered until a deadline.

    clock: monotonic seconds (injected by tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}

    def remember(self, address: str, duration: float) -> None:
        self._until.pop(address, None)
        self._until[address] = self._clock() + duration
        if len(self._until) > MAX_REMEMBERED:
            del self._until[next(iter(self._until))]

    def is_broken(self, address: str) -> bool:
        until = self._until.get(address)
        if until is None:
            return False
        if until <= self._clock():
            del self._until[address]
            return False
        return True


async def open_connection(
    broken: BrokenTlsHosts, *, address: str, path: EgressPathConfig, **open_kwargs: Any
) -> SmtpClientConnection:
    """``SmtpClientConnection.open`` with the path's broken-TLS rules applied.

    broken: the memory shared by the node's ready queues. Raises what ``open`` raises.
    """
    opportunistic = path.enable_tls in _OPPORTUNISTIC
    plain = dataclasses.replace(path, enable_tls=TlsMode.DISABLED)
    if opportunistic and broken.is_broken(address):
        return await SmtpClientConnection.open(address=address, path=plain, **open_kwargs)
    try:
        return await SmtpClientConnection.open(address=address, path=path, **open_kwargs)
    except TlsHandshakeFailed:
        if not opportunistic:
            raise
        if path.remember_broken_tls is not None:
            broken.remember(address, path.remember_broken_tls)
        if not path.opportunistic_tls_reconnect_on_failed_handshake:
            raise
    return await SmtpClientConnection.open(address=address, path=plain, **open_kwargs)
