"""Egress: where and how a message leaves (KumoMTA make_egress_path / source / pool).

Exports:
    TlsMode              Opportunistic, OpportunisticInsecure, Required, RequiredInsecure, Disabled
    EgressPathConfig     per (source, site) delivery settings: limits, rates, TLS, timeouts
    KeySource            a credential or key: a file path, inline data, or a Vault location
    RefreshStrategy, IpLookupStrategy, ReconnectStrategy, WakeupStrategy,
    MemoryReductionPolicy                the remaining KumoMTA enum-valued path options
    EgressSource         a source address and EHLO name
    EgressPool           weighted sources; DEFAULT_POOL is KumoMTA's ``unspecified``
    is_prohibited(addr, prohibited) -> bool    pure check of an MX target address

Defaults are KumoMTA's code defaults (crates/kumo-api-types/src/egress_path.rs,
crates/rfc5321/src/client_types.rs). How option values are written and validated is
described in ``engine.policy.egress_options``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from engine.config.throttle_spec import LimitSpec, ThrottleSpec

__all__ = [
    "TlsMode",
    "EgressPathConfig",
    "EgressSource",
    "EgressPool",
    "DEFAULT_POOL",
    "DEFAULT_SOURCE",
    "is_prohibited",
    "DEFAULT_PROHIBITED_HOSTS",
    "KeySource",
    "RefreshStrategy",
    "IpLookupStrategy",
    "ReconnectStrategy",
    "WakeupStrategy",
    "MemoryReductionPolicy",
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


class RefreshStrategy(StrEnum):
    TTL = "Ttl"
    EPOCH = "Epoch"


class IpLookupStrategy(StrEnum):
    IPV4_AND_IPV6 = "Ipv4AndIpv6"
    IPV4_ONLY = "Ipv4Only"
    IPV6_ONLY = "Ipv6Only"
    IPV6_THEN_IPV4 = "Ipv6ThenIpv4"
    IPV4_THEN_IPV6 = "Ipv4ThenIpv6"


class ReconnectStrategy(StrEnum):
    TERMINATE_SESSION = "TerminateSession"
    RECONNECT_SAME_HOST = "ReconnectSameHost"
    CONNECT_NEXT_HOST = "ConnectNextHost"


class WakeupStrategy(StrEnum):
    AGGRESSIVE = "Aggressive"
    RELAXED = "Relaxed"


class MemoryReductionPolicy(StrEnum):
    SHRINK_DATA_AND_META = "ShrinkDataAndMeta"
    SHRINK_DATA = "ShrinkData"
    NO_SHRINK = "NoShrink"


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySource:
    """Where a key or credential comes from (KumoMTA ``docs/reference/keysource.md``).

    Exactly one form is set: ``path`` (a file), ``key_data`` (inline), or
    ``vault_mount`` + ``vault_path`` (HashiCorp Vault; address and token default to
    ``$VAULT_ADDR`` / ``$VAULT_TOKEN``). Secrets are left out of ``repr``.
    """

    path: str | None = None
    key_data: str | None = field(default=None, repr=False)
    vault_mount: str | None = None
    vault_path: str | None = None
    vault_address: str | None = None
    vault_token: str | None = field(default=None, repr=False)
    vault_key: str | None = None


DEFAULT_PROHIBITED_HOSTS: tuple[str, ...] = ("127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128")


def _no_names() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressPathConfig:
    """Settings for one ready queue (egress source -> MX site).

    ``connection_limit`` is the cap per ready queue; ``connection_limit_local`` says it
    was given as ``"local:N"`` (never shared through Redis). ``additional_*`` maps are
    named limits shared by every path that names them (shaping's provider limits).
    Timeouts are seconds. ``system_shutdown_timeout`` None means the sum of the
    mail_from, rcpt_to, data and data_dot timeouts (``effective_system_shutdown_timeout``).
    The mapping fields are read-only views, so this record is not hashable.
    """

    connection_limit: int = 32
    connection_limit_local: bool = False
    additional_connection_limits: Mapping[str, LimitSpec] = field(default_factory=_no_names)
    max_connection_rate: ThrottleSpec | None = None
    max_message_rate: ThrottleSpec | None = None
    additional_message_rate_throttles: Mapping[str, ThrottleSpec] = field(default_factory=_no_names)
    source_selection_rate: ThrottleSpec | None = None
    additional_source_selection_rates: Mapping[str, ThrottleSpec] = field(default_factory=_no_names)
    max_deliveries_per_connection: int = 1024
    max_recipients_per_batch: int = 100
    max_ready: int = 1024
    consecutive_connection_failures_before_delay: int = 100
    enable_tls: TlsMode = TlsMode.OPPORTUNISTIC
    enable_mta_sts: bool = True
    enable_dane: bool = False
    enable_pipelining: bool = True
    enable_rset: bool = True
    use_lmtp: bool = False
    tls_prefer_openssl: bool = False
    tls_certificate: KeySource | None = None
    tls_private_key: KeySource | None = None
    openssl_cipher_list: str | None = None
    openssl_cipher_suites: str | None = None
    openssl_options: str | None = None
    rustls_cipher_suites: tuple[str, ...] = ()
    opportunistic_tls_reconnect_on_failed_handshake: bool = False
    remember_broken_tls: float | None = None
    smtp_port: int = 25
    smtp_auth_plain_username: str | None = None
    smtp_auth_plain_password: KeySource | None = None
    allow_smtp_auth_plain_without_tls: bool = False
    allow_smtp_auth_plain_without_valid_certificate: bool = False
    prohibited_hosts: tuple[str, ...] = DEFAULT_PROHIBITED_HOSTS
    skip_hosts: tuple[str, ...] = ()
    ip_lookup_strategy: IpLookupStrategy = IpLookupStrategy.IPV4_AND_IPV6
    max_mx_addresses_per_host: int = 10
    max_mx_plan_size: int = 50
    ehlo_domain: str | None = None
    aggressive_connection_opening: bool = False
    reconnect_strategy: ReconnectStrategy = ReconnectStrategy.CONNECT_NEXT_HOST
    try_next_host_on_transport_error: bool = False
    idle_timeout: float = 5.0
    connect_timeout: float = 60.0
    banner_timeout: float = 60.0
    ehlo_timeout: float = 300.0
    starttls_timeout: float = 5.0
    tls_handshake_timeout: float = 60.0
    auth_timeout: float = 60.0
    mail_from_timeout: float = 300.0
    rcpt_to_timeout: float = 300.0
    data_timeout: float = 300.0
    data_dot_timeout: float = 300.0
    rset_timeout: float = 5.0
    system_shutdown_timeout: float | None = None
    dispatcher_progress_watchdog_timeout: float | None = None
    refresh_interval: float = 60.0
    refresh_strategy: RefreshStrategy = RefreshStrategy.TTL
    dispatcher_wakeup_strategy: WakeupStrategy = WakeupStrategy.AGGRESSIVE
    maintainer_wakeup_strategy: WakeupStrategy = WakeupStrategy.AGGRESSIVE
    low_memory_reduction_policy: MemoryReductionPolicy = MemoryReductionPolicy.SHRINK_DATA_AND_META
    no_memory_reduction_policy: MemoryReductionPolicy = MemoryReductionPolicy.SHRINK_DATA_AND_META
    readyq_pool_name: str | None = None
    ignore_8bit_checks: bool = False
    provider_name: str | None = None

    @property
    def connection_limit_spec(self) -> LimitSpec:
        """``connection_limit`` with its ``local:`` flag, as one LimitSpec."""
        return LimitSpec(limit=self.connection_limit, local=self.connection_limit_local)

    @property
    def effective_system_shutdown_timeout(self) -> float:
        """How long in-flight deliveries may finish at shutdown (KumoMTA's derived default)."""
        if self.system_shutdown_timeout is not None:
            return self.system_shutdown_timeout
        return (
            self.mail_from_timeout
            + self.rcpt_to_timeout
            + self.data_timeout
            + self.data_dot_timeout
        )


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
