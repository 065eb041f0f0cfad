"""The node's outbound TLS policy sources: MTA-STS per recipient domain, TLSA per MX host.

Exports:
    TlsPolicies            the real ``ports.TlsPolicySource``: ``mta_sts(domain)``,
                           ``tlsa(host, port)``, ``address_secure(host)``, ``close()``
    tls_context_factory(ca_file) -> TlsContextFactory   client contexts that verify
                           against ``ca_file`` (empty: the system store)

Built once by ``app.py`` from the ``dns`` and ``delivery`` settings; the ready queue's
route (``queues.connect``) asks it per domain and per host. The concepts are in
``delivery.mta_sts`` and ``delivery.dane``; the lookups in ``delivery.tls_dns``.
"""

from __future__ import annotations

import functools
import ssl
import time
from collections.abc import Awaitable, Callable

from engine.config.settings import DeliverySettings, DnsSettings
from engine.delivery.client import TlsContextFactory
from engine.delivery.dane import TlsaAnswer
from engine.delivery.mta_sts import MtaStsPolicies, MtaStsPolicy, PolicyFetcher
from engine.delivery.tls_dns import TlsDnsResolver

__all__ = ["TlsPolicies", "tls_context_factory"]


def tls_context_factory(ca_file: str) -> TlsContextFactory:
    """``(verify) -> SSLContext``: verifying contexts trust ``ca_file`` (or the system
    store when empty) and check the host name; the others accept any certificate."""

    @functools.cache
    def factory(verify: bool) -> ssl.SSLContext:
        if verify:
            return ssl.create_default_context(cafile=ca_file or None)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    return factory


class TlsPolicies:
    """dns: nameservers and timeouts (the resolver must validate DNSSEC for DANE).
    delivery: ``tls_ca_file``, ``mta_sts_port``, ``mta_sts_timeout``.
    resolve_addresses: host -> IP literals, for the policy host (the node's MxResolver).
    contexts: the node's client TLS contexts (the policy fetch verifies with them);
    default: ``tls_context_factory(delivery.tls_ca_file)``.
    """

    def __init__(
        self,
        *,
        dns: DnsSettings,
        delivery: DeliverySettings,
        resolve_addresses: Callable[[str], Awaitable[list[str]]],
        contexts: TlsContextFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        contexts = contexts or tls_context_factory(delivery.tls_ca_file)
        self._dns = TlsDnsResolver(dns, clock=clock)
        self._fetcher = PolicyFetcher(
            resolve_addresses=resolve_addresses,
            ssl_context=contexts(True),
            port=delivery.mta_sts_port,
            timeout=delivery.mta_sts_timeout,
        )
        self._policies = MtaStsPolicies(
            txt_id=self._dns.mta_sts_id, fetch=self._fetcher.fetch, clock=clock
        )

    async def mta_sts(self, domain: str) -> MtaStsPolicy | None:
        return await self._policies.policy(domain)

    async def tlsa(self, host: str, port: int = 25) -> TlsaAnswer:
        return await self._dns.tlsa(host, port)

    async def address_secure(self, host: str) -> bool:
        return await self._dns.address_secure(host)

    async def close(self) -> None:
        await self._fetcher.close()
