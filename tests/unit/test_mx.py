"""MX resolution without the network: factor_names (pure) and nameserver settings.

MxResolver's lookups run against a DNS server: tests/integration/test_mx_resolver.py.
"""

from __future__ import annotations

import pytest

from engine.config.settings import DnsSettings
from engine.delivery.mx import MxResolver, factor_names

GMAIL = [
    "gmail-smtp-in.l.google.com",
    "alt1.gmail-smtp-in.l.google.com",
    "alt2.gmail-smtp-in.l.google.com",
    "alt3.gmail-smtp-in.l.google.com",
    "alt4.gmail-smtp-in.l.google.com",
]


# KumoMTA crates/mailexchanger/src/lib.rs: name_factoring, mx_order_name_factor,
# lookup_single_mx and lookup_null_mx.
@pytest.mark.parametrize(
    ("hosts", "site"),
    [
        (
            ["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net", "mta7.am0.yahoodns.net"],
            "(mta5|mta6|mta7).am0.yahoodns.net",
        ),
        (
            ["mta5.AM0.yahoodns.net", "mta6.am0.yAHOodns.net", "mta7.am0.yahoodns.net"],
            "(mta5|mta6|mta7).am0.yahoodns.net",
        ),
        (GMAIL, "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"),
        (
            ["mta5.am0.yahoodns.net:123", "mta6.am0.yahoodns.net:123", "mta7.am0.yahoodns.net:123"],
            "(mta5|mta6|mta7).am0.yahoodns.net:123",
        ),
        (
            ["mta5.am0.yahoodns.net:123", "mta6.am0.yahoodns.net:456", "mta7.am0.yahoodns.net:123"],
            "(mta5|mta6|mta7).am0.yahoodns.(net:123|net:456)",
        ),
        (
            [
                "example-com.mail.protection.outlook.com.",
                "mx-biz.mail.am0.yahoodns.net.",
                "mx-biz.mail.am0.yahoodns.net.",
            ],
            "(example-com|mx-biz).mail.(protection|am0).(outlook|yahoodns).(com|net)",
        ),
        (
            [
                "mx-biz.mail.am0.yahoodns.net.",
                "mx-biz.mail.am0.yahoodns.net.",
                "example-com.mail.protection.outlook.com.",
            ],
            "(mx-biz|example-com).mail.(am0|protection).(yahoodns|outlook).(net|com)",
        ),
        (["do.havedane.net."], "do.havedane.net"),
        (["."], ""),
        ([], ""),
    ],
)
def test_factor_names(hosts: list[str], site: str) -> None:
    """Host names roll up into KumoMTA's site name."""
    assert factor_names(hosts) == site


def test_nameservers_may_use_different_ports() -> None:
    """Each nameserver entry keeps its own port."""
    settings = DnsSettings(nameservers=["127.0.0.1:5353", "[::1]:53", "192.0.2.1"])
    assert MxResolver(settings)


def test_nameserver_must_be_an_address() -> None:
    """A nameserver given as a host name is rejected."""
    with pytest.raises(ValueError):
        MxResolver(DnsSettings(nameservers=["dns.example.test:53"]))
