"""The real SmtpConnector: opens ``delivery.client.SmtpClientConnection`` sessions.

Exports:
    SmtpClientConnector   ``connect(endpoint, source, path)`` over aiosmtplib

It adds the EHLO name choice (the path's ``ehlo_domain``, else the source's, else the
node's hostname) and the node's broken-TLS memory (``remember_broken_tls``: one per
connector, so it outlives idle ready queues); everything else is
``SmtpClientConnection.open``.
"""

from __future__ import annotations

from engine.delivery.broken_tls import BrokenTlsHosts, open_connection
from engine.delivery.client import TlsContextFactory
from engine.delivery.ports import Endpoint, SmtpConnection
from engine.policy.egress import EgressPathConfig, EgressSource

__all__ = ["SmtpClientConnector"]


class SmtpClientConnector:
    """hostname: our name in EHLO/HELO when neither the path nor the source sets one.
    tls_context_factory: client TLS contexts (``delivery.tls_ca_file``); default: system."""

    def __init__(
        self,
        *,
        hostname: str,
        broken_tls: BrokenTlsHosts | None = None,
        tls_context_factory: TlsContextFactory | None = None,
    ) -> None:
        self._hostname = hostname
        self._broken_tls = broken_tls or BrokenTlsHosts()
        self._tls_context_factory = tls_context_factory

    async def connect(
        self, endpoint: Endpoint, source: EgressSource, path: EgressPathConfig
    ) -> SmtpConnection:
        """Raises ConnectFailed, TlsRequiredError or TlsFailed (``delivery.errors``)."""
        return await open_connection(
            self._broken_tls,
            host_name=endpoint.host,
            address=endpoint.address,
            port=endpoint.port,
            path=path,
            source=source,
            ehlo_domain=path.ehlo_domain or source.ehlo_domain or self._hostname,
            tls_context_factory=self._tls_context_factory,
            tlsa=endpoint.tlsa,
        )
