"""Egress: where and how a message leaves (KumoMTA make_egress_path / source / pool).

Exports:
    TlsMode              Opportunistic, OpportunisticInsecure, Required, RequiredInsecure, Disabled
    EgressPathConfig     per (source, site) delivery settings: limits, TLS, timeouts
    EgressSource         a source address and EHLO name
    EgressPool           weighted sources; DEFAULT_POOL is KumoMTA's ``unspecified``
    is_prohibited(addr, prohibited) -> bool    pure check of an MX target address

Defaults are KumoMTA's code defaults (crates/kumo-api-types/src/egress_path.rs,
crates/rfc5321/src/client_types.rs).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "TlsMode", "EgressPathConfig", "EgressSource", "EgressPool", "DEFAULT_POOL",
    "DEFAULT_SOURCE", "is_prohibited", "DEFAULT_PROHIBITED_HOSTS",
]


class TlsMode(StrEnum):
    OPPORTUNISTIC = "Opportunistic"
    OPPORTUNISTIC_INSECURE = "OpportunisticInsecure"
    REQUIRED = "Required"
    REQUIRED_INSECURE = "RequiredInsecure"
    DISABLED = "Disabled"

    @property
    def requires_tls(self) -> bool:
        return self in (TlsMode.REQUIRED, TlsMode.REQUIRED_INSECURE)

    @property
    def verifies_certificate(self) -> bool:
        # RFC 7435 opportunistic TLS: a self-signed certificate still beats plaintext,
        # so plain Opportunistic does not verify either. Verification is for the
        # Required mode (and, later, MTA-STS/DANE).
        return self is TlsMode.REQUIRED


DEFAULT_PROHIBITED_HOSTS: tuple[str, ...] = ("127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128")


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressPathConfig:
    """Settings for one ready queue (egress source -> MX site)."""

    connection_limit: int = 32
    max_deliveries_per_connection: int = 1024
    enable_tls: TlsMode = TlsMode.OPPORTUNISTIC
    smtp_port: int = 25
    prohibited_hosts: tuple[str, ...] = DEFAULT_PROHIBITED_HOSTS
    skip_hosts: tuple[str, ...] = ()
    ehlo_domain: str | None = None
    max_ready: int = 1024
    idle_timeout: float = 5.0
    connect_timeout: float = 60.0
    banner_timeout: float = 60.0
    ehlo_timeout: float = 300.0
    starttls_timeout: float = 5.0
    mail_from_timeout: float = 300.0
    rcpt_to_timeout: float = 300.0
    data_timeout: float = 300.0
    data_dot_timeout: float = 300.0
    rset_timeout: float = 5.0
    try_next_host_on_transport_error: bool = False
    provider_name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressSource:
    """Where connections come from: a local address (None: the kernel picks) and EHLO name."""

    name: str
    source_address: str | None = None
    ehlo_domain: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressPool:
    """Named weighted sources; weight 0 excludes a source."""

    name: str
    entries: tuple[tuple[str, int], ...] = field(default_factory=tuple)


DEFAULT_SOURCE = EgressSource(name="unspecified")
DEFAULT_POOL = EgressPool(name="unspecified", entries=(("unspecified", 1),))


def is_prohibited(address: str, prohibited: tuple[str, ...]) -> bool:
    """True when an MX target IP falls in any prohibited CIDR.

    address: an IPv4/IPv6 literal. prohibited: CIDR strings.
    An unparseable address is treated as prohibited (fail closed).
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    for cidr in prohibited:
        net = ipaddress.ip_network(cidr, strict=False)
        if ip.version == net.version and ip in net:
            return True
    return False
