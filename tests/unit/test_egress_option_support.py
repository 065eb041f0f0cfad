"""Every egress-path option is implemented or refused ("not supported by Nimbus")."""

from __future__ import annotations

import dataclasses
import logging
import textwrap
from pathlib import Path

import pytest

from engine.config.settings import ConfigError
from engine.delivery.broken_tls import BrokenTlsHosts
from engine.delivery.mx import order_addresses
from engine.delivery.smtp_auth import auth_refusal, plain_initial_response
from engine.policy.egress import EgressPathConfig, IpLookupStrategy
from engine.policy.egress_options import (
    IMPLEMENTED_OPTIONS,
    REFUSED_OPTIONS,
    check_egress_path,
    parse_egress_option,
)
from engine.policy.helpers.shaping_load import load_shaping

IMPL, R = "implemented", "refused"
SUPPORT = {
    "connection_limit": IMPL,
    "connection_limit_local": IMPL,
    "additional_connection_limits": IMPL,
    "max_connection_rate": IMPL,
    "max_message_rate": IMPL,
    "additional_message_rate_throttles": IMPL,
    "source_selection_rate": IMPL,
    "additional_source_selection_rates": IMPL,
    "max_deliveries_per_connection": IMPL,
    "max_recipients_per_batch": R,
    "max_ready": IMPL,
    "consecutive_connection_failures_before_delay": R,
    "enable_tls": IMPL,
    "enable_mta_sts": IMPL,
    "enable_dane": IMPL,
    "enable_pipelining": R,
    "enable_rset": R,
    "use_lmtp": R,
    "tls_prefer_openssl": R,
    "tls_certificate": R,
    "tls_private_key": R,
    "openssl_cipher_list": R,
    "openssl_cipher_suites": R,
    "openssl_options": R,
    "rustls_cipher_suites": R,
    "opportunistic_tls_reconnect_on_failed_handshake": IMPL,
    "remember_broken_tls": IMPL,
    "smtp_port": IMPL,
    "smtp_auth_plain_username": IMPL,
    "smtp_auth_plain_password": IMPL,
    "allow_smtp_auth_plain_without_tls": IMPL,
    "allow_smtp_auth_plain_without_valid_certificate": IMPL,
    "prohibited_hosts": IMPL,
    "skip_hosts": IMPL,
    "ip_lookup_strategy": IMPL,
    "max_mx_addresses_per_host": IMPL,
    "max_mx_plan_size": IMPL,
    "ehlo_domain": IMPL,
    "aggressive_connection_opening": R,
    "reconnect_strategy": R,
    "try_next_host_on_transport_error": R,
    "idle_timeout": IMPL,
    "connect_timeout": IMPL,
    "banner_timeout": IMPL,
    "ehlo_timeout": IMPL,
    "starttls_timeout": IMPL,
    "tls_handshake_timeout": IMPL,
    "auth_timeout": IMPL,
    "mail_from_timeout": IMPL,
    "rcpt_to_timeout": IMPL,
    "data_timeout": IMPL,
    "data_dot_timeout": IMPL,
    "rset_timeout": IMPL,
    "system_shutdown_timeout": R,
    "dispatcher_progress_watchdog_timeout": R,
    "refresh_interval": R,
    "refresh_strategy": R,
    "dispatcher_wakeup_strategy": R,
    "maintainer_wakeup_strategy": R,
    "low_memory_reduction_policy": R,
    "no_memory_reduction_policy": R,
    "readyq_pool_name": R,
    "ignore_8bit_checks": R,
    "provider_name": IMPL,
}

# A valid, non-default TOML value for every refused option.
REFUSED_VALUES = {
    "max_recipients_per_batch": 5,
    "consecutive_connection_failures_before_delay": 5,
    "enable_pipelining": False,
    "enable_rset": False,
    "use_lmtp": True,
    "tls_prefer_openssl": True,
    "tls_certificate": "/etc/cert.pem",
    "tls_private_key": {"key_data": "k"},
    "openssl_cipher_list": "HIGH",
    "openssl_cipher_suites": "TLS_AES_128_GCM_SHA256",
    "openssl_options": "NO_TICKET",
    "rustls_cipher_suites": ["TLS13_AES_128_GCM_SHA256"],
    "aggressive_connection_opening": True,
    "reconnect_strategy": "TerminateSession",
    "try_next_host_on_transport_error": True,
    "system_shutdown_timeout": "90s",
    "dispatcher_progress_watchdog_timeout": "10m",
    "refresh_interval": "5m",
    "refresh_strategy": "Epoch",
    "dispatcher_wakeup_strategy": "Relaxed",
    "maintainer_wakeup_strategy": "Relaxed",
    "low_memory_reduction_policy": "NoShrink",
    "no_memory_reduction_policy": "ShrinkData",
    "readyq_pool_name": "pool",
    "ignore_8bit_checks": True,
}
# The code default of a refused option is accepted: setting it changes nothing.
REFUSED_DEFAULTS = {
    "max_recipients_per_batch": 100,
    "consecutive_connection_failures_before_delay": 100,
    "enable_pipelining": True,
    "enable_rset": True,
    "use_lmtp": False,
    "reconnect_strategy": "ConnectNextHost",
    "refresh_interval": "60s",
    "refresh_strategy": "Ttl",
    "ignore_8bit_checks": False,
}
WHERE = 'shaping.toml: ["gmail.com"]'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shaping.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_table_covers_exactly_the_egress_path_fields():
    """The support table lists every EgressPathConfig field, once."""
    assert set(SUPPORT) == {f.name for f in dataclasses.fields(EgressPathConfig)}


@pytest.mark.parametrize(("name", "status"), sorted(SUPPORT.items()))
def test_table_matches_the_code(name, status):
    """The engine's support sets say the same as this table."""
    code = {name: IMPL for name in IMPLEMENTED_OPTIONS}
    code.update({name: R for name in REFUSED_OPTIONS})
    assert code[name] == status


def test_every_refused_option_has_a_test_value():
    """Each refused option is exercised below with a non-default value."""
    assert set(REFUSED_VALUES) == REFUSED_OPTIONS


@pytest.mark.parametrize(("name", "value"), sorted(REFUSED_VALUES.items()))
def test_refused_option_names_key_and_not_supported(name, value):
    """A refused option with a non-default value is a ConfigError naming file, table, key."""
    with pytest.raises(ConfigError) as info:
        parse_egress_option(name, value, where=WHERE)
    assert str(info.value) == f'{WHERE} key "{name}": not supported by Nimbus'


@pytest.mark.parametrize(("name", "value"), sorted(REFUSED_VALUES.items()))
def test_refused_option_in_a_shaping_file(tmp_path, name, value):
    """From TOML: the shaping loader refuses it with the file, block and key."""
    path = write(tmp_path, f'["gmail.com"]\nmx_rollup = false\n{name} = {_toml(value)}\n')
    with pytest.raises(ConfigError, match=f'\\["gmail.com"\\] key "{name}": not supported'):
        load_shaping([path])


@pytest.mark.parametrize(("name", "value"), sorted(REFUSED_VALUES.items()))
def test_refused_option_in_a_set_config_action(tmp_path, name, value):
    """From a TSA SetConfig action: the rule loader refuses it with the same words."""
    path = write(
        tmp_path,
        f"""
        ["default"]
        [["default".automation]]
        regex = "x"
        duration = "1h"
        action = {{SetConfig = {{name = "{name}", value = {_toml(value)}}}}}
        """,
    )
    with pytest.raises(ConfigError, match=f'action SetConfig key "{name}": not supported'):
        load_shaping([path])


@pytest.mark.parametrize(("name", "value"), sorted(REFUSED_VALUES.items()))
def test_refused_option_in_a_policy_built_config(name, value):
    """From a policy answer: check_egress_path refuses a non-default field."""
    config = dataclasses.replace(EgressPathConfig(), **{name: _parsed(name, value)})
    with pytest.raises(ConfigError, match=f'key "{name}": not supported by Nimbus'):
        check_egress_path(config, where="get_egress_path_config(d, s, site)")


@pytest.mark.parametrize(("name", "value"), sorted(REFUSED_DEFAULTS.items()))
def test_refused_option_at_its_default_is_accepted(name, value):
    """Writing a refused option's KumoMTA default changes nothing, so it loads."""
    parsed = parse_egress_option(name, value, where=WHERE)
    assert parsed == getattr(EgressPathConfig(), name)


@pytest.mark.parametrize("name", ["enable_mta_sts", "enable_dane"])
@pytest.mark.parametrize("value", [True, False])
def test_tls_policy_options_load_silently(tmp_path, caplog, name, value):
    """enable_mta_sts / enable_dane are implemented: either value loads with no warning and
    reaches the resolved path."""
    path = write(tmp_path, f'["default"]\n{name} = {_toml(value)}\n')
    with caplog.at_level(logging.WARNING, logger="nimbus.config"):
        shaping = load_shaping([path])
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert shaping.default is not None and shaping.default.options[name] is value


def test_policy_built_dane_is_accepted():
    """A policy answer with enable_dane = true passes the support check."""
    assert check_egress_path(EgressPathConfig(enable_dane=True), where="answer") is None


def test_vault_key_source_is_refused():
    """A Vault key source cannot be read by Nimbus, so it is refused at load."""
    with pytest.raises(ConfigError, match="vault key sources are not supported by Nimbus"):
        parse_egress_option(
            "smtp_auth_plain_password", {"vault_mount": "m", "vault_path": "p"}, where=WHERE
        )


def _toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _parsed(name, value):
    """The engine value of a refused option (its parser, without the refusal)."""
    from engine.policy import egress_options

    return egress_options._PARSERS[name](value)


# -- the implemented decisions -----------------------------------------------------

V4, V4B, V6 = "192.0.2.1", "192.0.2.2", "2001:db8::1"


@pytest.mark.parametrize(
    ("strategy", "limit", "expected"),
    [
        (IpLookupStrategy.IPV4_AND_IPV6, 10, [V4, V6, V4B]),
        (IpLookupStrategy.IPV4_ONLY, 10, [V4, V4B]),
        (IpLookupStrategy.IPV6_ONLY, 10, [V6]),
        (IpLookupStrategy.IPV4_THEN_IPV6, 10, [V4, V4B, V6]),
        (IpLookupStrategy.IPV6_THEN_IPV4, 10, [V6, V4, V4B]),
        (IpLookupStrategy.IPV6_THEN_IPV4, 2, [V6, V4]),
        (IpLookupStrategy.IPV4_AND_IPV6, 1, [V4]),
    ],
)
def test_order_addresses(strategy, limit, expected):
    """ip_lookup_strategy orders or filters families; max_mx_addresses_per_host caps."""
    assert order_addresses([V4, V6, V4B], strategy, limit) == expected


@pytest.mark.parametrize(
    ("options", "tls", "verified", "refused"),
    [
        ({}, True, True, None),
        ({}, False, False, "needs TLS"),
        ({}, True, False, "verified certificate"),
        ({"allow_smtp_auth_plain_without_valid_certificate": True}, True, False, None),
        ({"allow_smtp_auth_plain_without_valid_certificate": True}, False, False, "needs TLS"),
        ({"allow_smtp_auth_plain_without_tls": True}, False, False, None),
        ({"allow_smtp_auth_plain_without_tls": True}, True, False, None),
    ],
)
def test_auth_refusal(options, tls, verified, refused):
    """AUTH PLAIN goes only over (verified) TLS unless the allow_* options say otherwise."""
    path = EgressPathConfig(smtp_auth_plain_username="u", **options)
    response = auth_refusal(path, host="mx", tls=tls, verified=verified)
    if refused is None:
        assert response is None
    else:
        assert response is not None and response.code == 451 and refused in response.content


def test_plain_initial_response_is_rfc4616():
    """authzid empty, NUL, authcid, NUL, password; base64."""
    assert plain_initial_response("tim", "tanstaaftanstaaf") == "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"


def test_broken_tls_is_remembered_until_it_expires():
    """A handshake failure is remembered for remember_broken_tls seconds, then forgotten."""
    now = [1000.0]
    broken = BrokenTlsHosts(clock=lambda: now[0])
    broken.remember("192.0.2.1", 60)
    assert broken.is_broken("192.0.2.1") and not broken.is_broken("192.0.2.2")
    now[0] += 61
    assert not broken.is_broken("192.0.2.1")
