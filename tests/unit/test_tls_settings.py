"""The outbound TLS policy settings are validated at load, naming table and key."""

from __future__ import annotations

import pytest

from engine.config.settings import ConfigError, load_settings


def test_defaults():
    """System CAs, port 443, a 10 s fetch."""
    delivery = load_settings(env={}).delivery
    assert (delivery.tls_ca_file, delivery.mta_sts_port, delivery.mta_sts_timeout) == (
        "",
        443,
        10.0,
    )


def test_env_names():
    """Each setting has its NIMBUS_DELIVERY_* name."""
    delivery = load_settings(
        env={
            "NIMBUS_DELIVERY_MTA_STS_PORT": "8443",
            "NIMBUS_DELIVERY_MTA_STS_TIMEOUT": "3s",
        }
    ).delivery
    assert (delivery.mta_sts_port, delivery.mta_sts_timeout) == (8443, 3.0)


@pytest.mark.parametrize("port", ["0", "65536"])
def test_mta_sts_port_out_of_range(port):
    """A port outside 1-65535 is refused with the table and key."""
    with pytest.raises(ConfigError, match=r"\[delivery\] mta_sts_port: must be 1-65535"):
        load_settings(env={"NIMBUS_DELIVERY_MTA_STS_PORT": port})


def test_unreadable_ca_file(tmp_path):
    """A CA bundle that cannot be read is refused at load, naming the path."""
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=r"\[delivery\] tls_ca_file: cannot read"):
        load_settings(env={"NIMBUS_DELIVERY_TLS_CA_FILE": str(missing)})


def test_readable_ca_file(tmp_path):
    """A readable bundle is accepted as given."""
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    assert load_settings(env={"NIMBUS_DELIVERY_TLS_CA_FILE": str(path)}).delivery.tls_ca_file == (
        str(path)
    )
