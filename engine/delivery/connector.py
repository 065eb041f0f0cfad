"""The real SmtpConnector: opens ``delivery.client.SmtpClientConnection`` sessions.

Exports:
    SmtpClientConnector   ``connect(endpoint, source, path)`` over aiosmtplib

It adds only the EHLO name choice (the path's ``ehlo_domain``, else the source's,
else the node's hostname); everything else is ``SmtpClientConnection.open``.
"""

from __future__ import annotations

from engine.delivery.client import SmtpClientConnection
from engine.delivery.ports import Endpoint, SmtpConnection
from engine.policy.egress import EgressPathConfig, EgressSource

__all__ = ["SmtpClientConnector"]


class SmtpClientConnector:
    """hostname: our name in EHLO/HELO when neither the path nor the source sets one."""

    def __init__(self, *, hostname: str) -> None:
        self._hostname = hostname

    async def connect(
        self, endpoint: Endpoint, source: EgressSource, path: EgressPathConfig
    ) -> SmtpConnection:
        """Raises ConnectFailed, TlsRequiredError or TlsFailed (``delivery.client``)."""
        return await SmtpClientConnection.open(
            host_name=endpoint.host,
            address=endpoint.address,
            port=endpoint.port,
            path=path,
            source=source,
            ehlo_domain=path.ehlo_domain or source.ehlo_domain or self._hostname,
        )
