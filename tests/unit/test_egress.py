"""Egress: is_prohibited and TlsMode."""

from __future__ import annotations

import pytest

from engine.policy.egress import DEFAULT_PROHIBITED_HOSTS, TlsMode, is_prohibited


@pytest.mark.parametrize(
    ("address", "prohibited"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("0.0.0.0", True),
        ("::", True),
        ("10.0.0.1", False),
        ("192.0.2.25", False),
        ("2001:db8::25", False),
        ("garbage", True),
        ("", True),
        ("mx.example.com", True),
    ],
)
def test_is_prohibited_defaults(address, prohibited):
    """Loopback and unspecified addresses (and unparseable ones) are prohibited by default."""
    assert is_prohibited(address, DEFAULT_PROHIBITED_HOSTS) is prohibited


@pytest.mark.parametrize(
    ("address", "cidrs", "prohibited"),
    [
        ("10.0.0.1", ("10.0.0.0/8",), True),
        ("10.0.0.1", ("10.0.0.1",), True),
        ("11.0.0.1", ("10.0.0.0/8",), False),
        ("127.0.0.1", (), False),
        ("fd00::1", ("fd00::/8",), True),
        ("10.0.0.1", ("fd00::/8",), False),
    ],
)
def test_is_prohibited_custom_list(address, cidrs, prohibited):
    """An address is prohibited exactly when it falls in one of the given CIDRs."""
    assert is_prohibited(address, cidrs) is prohibited


def test_is_prohibited_ipv4_mapped_loopback():
    """An IPv4-mapped loopback address is prohibited like 127.0.0.1."""
    assert is_prohibited("::ffff:127.0.0.1", DEFAULT_PROHIBITED_HOSTS) is True


@pytest.mark.parametrize(
    ("mode", "requires", "verifies"),
    [
        (TlsMode.OPPORTUNISTIC, False, False),
        (TlsMode.OPPORTUNISTIC_INSECURE, False, False),
        (TlsMode.REQUIRED, True, True),
        (TlsMode.REQUIRED_INSECURE, True, False),
        (TlsMode.DISABLED, False, False),
    ],
)
def test_tls_mode_properties(mode, requires, verifies):
    """requires_tls and verifies_certificate follow the mode."""
    assert (mode.requires_tls, mode.verifies_certificate) == (requires, verifies)


@pytest.mark.parametrize(
    "name", ["Opportunistic", "OpportunisticInsecure", "Required", "RequiredInsecure", "Disabled"]
)
def test_tls_mode_from_kumomta_name(name):
    """TlsMode values are KumoMTA's enable_tls names."""
    assert str(TlsMode(name)) == name
