"""Egress path options: ``make_egress_path`` / shaping.toml values -> EgressPathConfig.

Exports:
    parse_egress_option(name, value, *, where) -> parsed value      (pure, ConfigError)
    parse_egress_options(options, *, where) -> {name: parsed value} (pure, ConfigError)
    apply_egress_options(parsed, base=EgressPathConfig()) -> EgressPathConfig
    egress_path_from_options(options, *, where) -> EgressPathConfig (pure, ConfigError)
    check_egress_path(config, *, where) -> None   a policy-built config (ConfigError)
    EGRESS_OPTION_NAMES  every option key ``make_egress_path`` / shaping.toml accepts
    IMPLEMENTED_OPTIONS, REFUSED_OPTIONS   the support table (below)

Support table (one source for the docs, the loader and the tests). Every EgressPathConfig
field is in exactly one set:

* IMPLEMENTED: read by the engine (routing, gate, ready queue, delivery client, mx),
  ``enable_mta_sts`` (``delivery.mta_sts``) and ``enable_dane`` (``delivery.dane``) too.
* REFUSED: not implemented. Any value other than KumoMTA's code default is a ConfigError
  ``<file>: [table] key "<name>": not supported by Nimbus``; the code default itself is
  accepted silently because setting it changes nothing (KumoMTA's own default shaping
  file writes ``consecutive_connection_failures_before_delay = 100``).

Option values: durations as ``"60s"`` or seconds; integers as TOML integers
or ``"1,000"``; ``connection_limit`` and ``additional_connection_limits`` values as
LimitSpec (``"local:5"``); rates as ThrottleSpec (``"100/min"``); booleans as TOML
booleans only. Every EgressPathConfig field has a parser (checked at import).
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from engine.config.settings import ConfigError
from engine.config.throttle_spec import LimitSpec, ThrottleSpec
from engine.config.units import parse_duration
from engine.policy.egress import (
    EgressPathConfig,
    IpLookupStrategy,
    KeySource,
    MemoryReductionPolicy,
    ReconnectStrategy,
    RefreshStrategy,
    TlsMode,
    WakeupStrategy,
)

__all__ = [
    "parse_egress_option",
    "parse_egress_options",
    "apply_egress_options",
    "egress_path_from_options",
    "EGRESS_OPTION_NAMES",
    "IMPLEMENTED_OPTIONS",
    "REFUSED_OPTIONS",
    "check_egress_path",
]


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
        raise ValueError(
            f"expected a file path or a table with key_data or vault_mount + "
            f"vault_path, got {value!r}"
        )
    unknown = sorted(set(value) - _KEY_FIELDS)
    if unknown:
        raise ValueError(
            f"unknown key source field(s) {unknown}; expected key_data or "
            f"vault_mount + vault_path (+ vault_address, vault_token, vault_key)"
        )
    if not all(isinstance(v, str) for v in value.values()):
        raise ValueError("key source fields must be strings")
    has_vault = "vault_mount" in value and "vault_path" in value
    if ("key_data" in value) == has_vault:
        raise ValueError("a key source needs exactly one of key_data or vault_mount + vault_path")
    if has_vault:
        raise ValueError("vault key sources are not supported by Nimbus; use a path or key_data")
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

IMPLEMENTED_OPTIONS: frozenset[str] = frozenset(
    {
        # limits and rates: engine/shaping/gate.py, engine/queues/{routing,ready}.py
        "connection_limit",
        "connection_limit_local",  # the ``local:`` prefix of connection_limit
        "additional_connection_limits",
        "max_connection_rate",
        "max_message_rate",
        "additional_message_rate_throttles",
        "source_selection_rate",
        "additional_source_selection_rates",
        "max_deliveries_per_connection",
        "max_ready",
        "provider_name",
        # hosts and addresses: engine/queues/ready.py, engine/delivery/mx.py
        "smtp_port",
        "prohibited_hosts",
        "skip_hosts",
        "ip_lookup_strategy",
        "max_mx_addresses_per_host",
        "max_mx_plan_size",
        "ehlo_domain",
        # TLS and AUTH: engine/delivery/client.py
        "enable_tls",
        "remember_broken_tls",
        "opportunistic_tls_reconnect_on_failed_handshake",
        "smtp_auth_plain_username",
        "smtp_auth_plain_password",
        "allow_smtp_auth_plain_without_tls",
        "allow_smtp_auth_plain_without_valid_certificate",
        # outbound TLS policy: engine/delivery/{mta_sts,dane}.py, engine/queues/{routing,connect}.py
        "enable_mta_sts",
        "enable_dane",
        # timeouts: engine/delivery/client.py, engine/queues/ready.py (idle)
        "idle_timeout",
        "connect_timeout",
        "banner_timeout",
        "ehlo_timeout",
        "starttls_timeout",
        "tls_handshake_timeout",
        "auth_timeout",
        "mail_from_timeout",
        "rcpt_to_timeout",
        "data_timeout",
        "data_dot_timeout",
        "rset_timeout",
    }
)
REFUSED_OPTIONS: frozenset[str] = (
    frozenset(f.name for f in fields(EgressPathConfig)) - IMPLEMENTED_OPTIONS
)

assert IMPLEMENTED_OPTIONS <= {f.name for f in fields(EgressPathConfig)}, "stale support table"

_DEFAULTS = EgressPathConfig()


def _not_supported(name: str, where: str) -> ConfigError:
    return ConfigError(f'{where} key "{name}": not supported by Nimbus')


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
    naming ``where`` and the key, for an unknown key, a bad value, or a REFUSED option
    set to anything but its default ("not supported by Nimbus").
    """
    parse = _PARSERS.get(name)
    if parse is None:
        raise _unknown(name, where)
    try:
        parsed = parse(value)
    except ValueError as exc:
        raise ConfigError(f"{where} {name}: {exc}") from None
    if name in REFUSED_OPTIONS and parsed != getattr(_DEFAULTS, name):
        raise _not_supported(name, where)
    return parsed


def parse_egress_options(options: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Validate and convert a table of egress path options: ``{name: parsed value}``."""
    return {name: parse_egress_option(name, value, where=where) for name, value in options.items()}


def apply_egress_options(
    parsed: Mapping[str, Any], base: EgressPathConfig | None = None
) -> EgressPathConfig:
    """``base`` (default: code defaults) with already-parsed options set on it."""
    # Values differ by option (the field's own type each): replace() checks them by name.
    changes: dict[str, Any] = {
        name: MappingProxyType(dict(value)) if isinstance(value, Mapping) else value
        for name, value in parsed.items()
    }
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


def check_egress_path(config: EgressPathConfig, *, where: str) -> None:
    """Check a policy-built EgressPathConfig against the support table.

    where: names the policy answer, e.g. ``get_egress_path_config(example.com, ...)``.
    Raises ConfigError for a REFUSED field that differs from its default.
    """
    for name in sorted(REFUSED_OPTIONS):
        if getattr(config, name) != getattr(_DEFAULTS, name):
            raise _not_supported(name, where)
