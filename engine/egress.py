"""Egress: where and how a message leaves (KumoMTA make_egress_path / source / pool).

Exports:
    TlsMode              Opportunistic, OpportunisticInsecure, Required, RequiredInsecure, Disabled
    EgressPathConfig     per (source, site) delivery settings: limits, rates, TLS, timeouts
    KeySource            a credential or key: a file path, inline data, or a Vault location
    RefreshStrategy, IpLookupStrategy, ReconnectStrategy, WakeupStrategy,
    MemoryReductionPolicy                the remaining KumoMTA enum-valued path options
    parse_egress_option(name, value, *, where) -> parsed value      (pure, ConfigError)
    parse_egress_options(options, *, where) -> {name: parsed value} (pure, ConfigError)
    apply_egress_options(parsed, base=EgressPathConfig()) -> EgressPathConfig
    egress_path_from_options(options, *, where) -> EgressPathConfig (pure, ConfigError)
    EGRESS_OPTION_NAMES  every option key ``make_egress_path`` / shaping.toml accepts
    EgressSource         a source address and EHLO name
    EgressPool           weighted sources; DEFAULT_POOL is KumoMTA's ``unspecified``
    is_prohibited(addr, prohibited) -> bool    pure check of an MX target address

Defaults are KumoMTA's code defaults (crates/kumo-api-types/src/egress_path.rs,
crates/rfc5321/src/client_types.rs). Options the engine does not act on yet (MTA-STS,
DANE, LMTP, OpenSSL tuning, wakeup strategies, ...) are still parsed and validated so
a KumoMTA shaping file loads unchanged. Option values: durations as ``"60s"`` or
seconds; integers as TOML integers or ``"1,000"``; ``connection_limit`` and
``additional_connection_limits`` values as LimitSpec (``"local:5"``); rates as
ThrottleSpec (``"100/min"``); booleans as TOML booleans only.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from .config import ConfigError
from .throttle_spec import LimitSpec, ThrottleSpec
from .units import parse_duration

__all__ = [
    "TlsMode", "EgressPathConfig", "EgressSource", "EgressPool", "DEFAULT_POOL",
    "DEFAULT_SOURCE", "is_prohibited", "DEFAULT_PROHIBITED_HOSTS", "KeySource",
    "RefreshStrategy", "IpLookupStrategy", "ReconnectStrategy", "WakeupStrategy",
    "MemoryReductionPolicy", "parse_egress_option", "parse_egress_options",
    "apply_egress_options", "egress_path_from_options", "EGRESS_OPTION_NAMES",
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
        return (self.mail_from_timeout + self.rcpt_to_timeout + self.data_timeout
                + self.data_dot_timeout)


# --- option parsing ------------------------------------------------------------------------

def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        result = value
    elif isinstance(value, str) and value.strip().replace(",", "").replace("_", "").isdigit():
        result = int(value.strip().replace(",", "").replace("_", ""))
    else:
        raise ValueError(f"expected an integer such as 100 or '1,000', got {value!r}")
    if result < 0:
        raise ValueError(f"must not be negative, got {result}")
    return result


def _positive(value: Any) -> int:
    result = _integer(value)
    if result < 1:
        raise ValueError(f"must be 1 or larger, got {result}")
    return result


def _port(value: Any) -> int:
    port = _integer(value)
    if not 1 <= port <= 65535:
        raise ValueError(f"expected a port 1-65535, got {port}")
    return port


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _duration(value: Any) -> float:
    if not isinstance(value, (str, int, float)):
        raise ValueError(f"expected a duration such as '60s', got {value!r}")
    return parse_duration(value)


def _throttle(value: Any) -> ThrottleSpec:
    if not isinstance(value, str):
        raise ValueError(f"expected a throttle string such as '100/min', got {value!r}")
    return ThrottleSpec.parse(value)


def _named(parse: Callable[[Any], Any]) -> Callable[[Any], Mapping[str, Any]]:
    def parse_map(value: Any) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a table of name = value, got {value!r}")
        out = {}
        for name, item in value.items():
            try:
                out[str(name)] = parse(item)
            except ValueError as exc:
                raise ValueError(f"{name!r}: {exc}") from None
        return MappingProxyType(out)
    return parse_map


def _cidrs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of CIDRs such as ['10.0.0.0/8'], got {value!r}")
    for item in value:
        try:
            ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR such as 10.0.0.0/8") from None
    return tuple(str(item) for item in value)


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(value)


_KEY_FIELDS = {f.name for f in fields(KeySource)} - {"path"}


def _key_source(value: Any) -> KeySource:
    if isinstance(value, str):
        return KeySource(path=value)
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a file path or a table with key_data or vault_mount + "
                         f"vault_path, got {value!r}")
    unknown = sorted(set(value) - _KEY_FIELDS)
    if unknown:
        raise ValueError(f"unknown key source field(s) {unknown}; expected key_data or "
                         f"vault_mount + vault_path (+ vault_address, vault_token, vault_key)")
    if not all(isinstance(v, str) for v in value.values()):
        raise ValueError("key source fields must be strings")
    has_vault = "vault_mount" in value and "vault_path" in value
    if ("key_data" in value) == has_vault:
        raise ValueError("a key source needs exactly one of key_data or vault_mount + vault_path")
    return KeySource(**value)


def _enum(kind: type[StrEnum]) -> Callable[[Any], StrEnum]:
    def parse(value: Any) -> StrEnum:
        try:
            return kind(value)
        except ValueError:
            names = ", ".join(m.value for m in kind)
            raise ValueError(f"expected one of {names}, got {value!r}") from None
    return parse


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "connection_limit": LimitSpec.parse,
    "additional_connection_limits": _named(LimitSpec.parse),
    "max_connection_rate": _throttle,
    "max_message_rate": _throttle,
    "additional_message_rate_throttles": _named(_throttle),
    "source_selection_rate": _throttle,
    "additional_source_selection_rates": _named(_throttle),
    "enable_tls": _enum(TlsMode),
    "tls_certificate": _key_source,
    "tls_private_key": _key_source,
    "smtp_auth_plain_password": _key_source,
    "openssl_cipher_list": _string,
    "openssl_cipher_suites": _string,
    "openssl_options": _string,
    "rustls_cipher_suites": _strings,
    "remember_broken_tls": _duration,
    "smtp_port": _port,
    "smtp_auth_plain_username": _string,
    "prohibited_hosts": _cidrs,
    "skip_hosts": _cidrs,
    "ip_lookup_strategy": _enum(IpLookupStrategy),
    "ehlo_domain": _string,
    "reconnect_strategy": _enum(ReconnectStrategy),
    "refresh_strategy": _enum(RefreshStrategy),
    "dispatcher_wakeup_strategy": _enum(WakeupStrategy),
    "maintainer_wakeup_strategy": _enum(WakeupStrategy),
    "low_memory_reduction_policy": _enum(MemoryReductionPolicy),
    "no_memory_reduction_policy": _enum(MemoryReductionPolicy),
    "readyq_pool_name": _string,
    "provider_name": _string,
    "max_deliveries_per_connection": _positive,
    "max_recipients_per_batch": _positive,
    "max_ready": _positive,
    "max_mx_addresses_per_host": _positive,
    "max_mx_plan_size": _positive,
}
for _f in fields(EgressPathConfig):
    if _f.name in _PARSERS or _f.name == "connection_limit_local":
        continue
    if _f.type in ("int",):
        _PARSERS[_f.name] = _integer
    elif _f.type in ("bool",):
        _PARSERS[_f.name] = _boolean
    elif _f.type in ("float", "float | None"):
        _PARSERS[_f.name] = _duration
    else:  # pragma: no cover - a new field must be given a parser above
        raise AssertionError(f"EgressPathConfig.{_f.name} ({_f.type}) has no option parser")

EGRESS_OPTION_NAMES: frozenset[str] = frozenset(_PARSERS)


def _unknown(name: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(name, sorted(EGRESS_OPTION_NAMES), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where} {name}: unknown egress path option{hint}")


def parse_egress_option(name: str, value: Any, *, where: str) -> Any:
    """Validate and convert one egress path option.

    name: a ``make_egress_path`` key such as ``"connection_limit"``.
    value: the TOML value (``"local:5"``, ``"100/min"``, ``"60s"``, ...).
    where: ``file: [table]`` for the error message.
    Returns the parsed value (a LimitSpec for ``connection_limit``). Raises ConfigError
    naming ``where`` and the key, for an unknown key or a bad value.
    """
    parse = _PARSERS.get(name)
    if parse is None:
        raise _unknown(name, where)
    try:
        return parse(value)
    except ValueError as exc:
        raise ConfigError(f"{where} {name}: {exc}") from None


def parse_egress_options(options: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Validate and convert a table of egress path options: ``{name: parsed value}``."""
    return {name: parse_egress_option(name, value, where=where) for name, value in options.items()}


def apply_egress_options(parsed: Mapping[str, Any],
                         base: EgressPathConfig | None = None) -> EgressPathConfig:
    """``base`` (default: code defaults) with already-parsed options set on it."""
    changes = {name: MappingProxyType(dict(value)) if isinstance(value, Mapping) else value
               for name, value in parsed.items()}
    limit = changes.pop("connection_limit", None)
    if limit is not None:
        changes["connection_limit"] = limit.limit
        changes["connection_limit_local"] = limit.local
    return replace(base or EgressPathConfig(), **changes)


def egress_path_from_options(options: Mapping[str, Any], *, where: str) -> EgressPathConfig:
    """Build an EgressPathConfig from ``make_egress_path``-style options.

    options: option name -> TOML value; unset options keep KumoMTA's code defaults.
    where: ``file: [table]`` for error messages.
    Raises ConfigError naming ``where`` and the key for an unknown key or a bad value.
    """
    return apply_egress_options(parse_egress_options(options, where=where))


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
