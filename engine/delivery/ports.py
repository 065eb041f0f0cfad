"""The seams through which delivery reaches the network: SMTP connections and DNS.

Exports:
    Endpoint        one address to connect to: the MX name (SNI, logs), IP literal and port
    SmtpConnection  an open SMTP session that takes one single-recipient transaction at a time
    SmtpConnector   opens SmtpConnections (``connect(endpoint, source, path)``)
    Resolver        ``resolve_mx(domain)`` and ``resolve_addresses(host)``
    TlsPolicySource ``mta_sts(domain)`` (RFC 8461) and ``tlsa(host, port)`` (RFC 7672)

The ready queue depends only on these protocols. The node wires the real ones
(``delivery.connector.SmtpClientConnector`` over ``delivery.client``,
``delivery.mx.MxResolver`` over dnspython, ``delivery.tls_policy.TlsPolicies``); unit
tests wire the in-memory fakes of ``tests/support/fakes.py`` (scripted replies per host,
recorded calls), as httpx's ``MockTransport`` and KumoMTA's ``TestResolver`` do.

The transaction stays one call (``send``: MAIL, RCPT, DATA, and RSET after a
refusal) because ``delivery.commands`` drives those commands itself (pipelining order,
per-phase timeouts, SMTPUTF8 checks); the reply's ``command`` says which one answered.
Errors are those of ``delivery.errors`` and ``delivery.mx``: ``connect`` raises
``DeliveryError`` (ConnectFailed, TlsRequiredError, TlsFailed), ``send`` raises
``ConnectionLost``, ``resolve_addresses`` raises ``HostResolutionError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from engine.delivery.dane import Tlsa, TlsaAnswer
from engine.delivery.mta_sts import MtaStsPolicy
from engine.delivery.mx import MailExchanger
from engine.policy.egress import EgressPathConfig, EgressSource
from engine.records import PeerAddress, Response

__all__ = ["Endpoint", "SmtpConnection", "SmtpConnector", "Resolver", "TlsPolicySource"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """host: the MX (or configured) host name, used for SNI and certificate checks.
    address: the IP literal to connect to. port: the TCP port.
    tlsa: the host's DNSSEC-validated TLSA RRset when DANE applies (TLS mandatory,
    authenticated by its usable records); None: the path's ``enable_tls`` decides."""

    host: str
    address: str
    port: int
    tlsa: tuple[Tlsa, ...] | None = None


class SmtpConnection(Protocol):
    """An open session. peer: name and ``address:port``; deliveries: transactions
    attempted on it; tls_*: the negotiated TLS, or None for plaintext."""

    peer: PeerAddress
    tls_cipher: str | None
    tls_protocol_version: str | None

    @property
    def deliveries(self) -> int:
        """Transactions attempted on this session."""
        ...

    @property
    def is_usable(self) -> bool:
        """False once the session broke (timeout, disconnect, 421, failed RSET)."""
        ...

    async def send(self, sender: str, recipient: str, data: bytes) -> Response:
        """One transaction; the final reply (MAIL/RCPT refusal or end-of-data)."""
        ...

    async def close(self) -> None:
        """QUIT and close; never raises."""
        ...


class SmtpConnector(Protocol):
    """Opens sessions: connect, banner, EHLO, STARTTLS per ``path.enable_tls``."""

    async def connect(
        self, endpoint: Endpoint, source: EgressSource, path: EgressPathConfig
    ) -> SmtpConnection: ...


class Resolver(Protocol):
    """MX and address lookups (TTL-cached in the real one)."""

    async def resolve_mx(self, domain: str) -> MailExchanger: ...

    async def resolve_addresses(self, host: str) -> list[str]: ...


class TlsPolicySource(Protocol):
    """Outbound TLS policy: a recipient domain's MTA-STS policy, an MX host's TLSA RRset."""

    async def mta_sts(self, domain: str) -> MtaStsPolicy | None:
        """The policy to apply now, or None (none published, or none could be fetched)."""
        ...

    async def tlsa(self, host: str, port: int = 25) -> TlsaAnswer:
        """The TLSA RRset of ``_<port>._tcp.<host>`` and whether DNSSEC validated it;
        raises ``TlsaLookupFailed`` when the lookup did not complete."""
        ...

    async def address_secure(self, host: str) -> bool:
        """Whether ``host``'s address records are DNSSEC-validated (RFC 7672 §2.2)."""
        ...
