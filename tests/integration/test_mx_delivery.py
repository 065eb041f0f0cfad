"""MX delivery against a real DNS server on loopback and receivers on 127.0.0.x."""

from __future__ import annotations

import pytest

from tests.support.dns_server import FakeDns
from tests.support.node import running_node
from tests.support.peers import free_port_on
from tests.support.receiver import Receiver

POLICY = """
def register(nimbus):
    @nimbus.on("get_egress_path_config")
    def path(routing_domain, source, site):
        # Test MX hosts live on 127.0.0.x: allow loopback, use the receivers' port.
        return nimbus.EgressPathConfig(smtp_port={port}, prohibited_hosts=(),
                                       enable_tls=nimbus.TlsMode.DISABLED,
                                       connect_timeout=2, idle_timeout=1)

    @nimbus.on("get_queue_config")
    def queue(domain, tenant, campaign, routing_domain):
        return nimbus.QueueConfig(retry_interval=60, max_age=3600)
"""


@pytest.fixture
async def dns():
    async with FakeDns(ttl=60) as server:
        yield server


def node_for(tmp_path, dns, port):
    return running_node(
        tmp_path,
        policy=POLICY.format(port=port),
        **{"dns.nameservers": [dns.nameserver], "dns.timeout": 0.5, "dns.lifetime": 1.0},
    )


async def send(node, recipient: str) -> None:
    import aiosmtplib

    await aiosmtplib.send(
        b"Subject: t\r\n\r\nhello\r\n",
        sender="s@src.test",
        recipients=[recipient],
        hostname="127.0.0.1",
        port=node.smtp_port,
        start_tls=False,
    )


async def test_lowest_preference_mx_is_used(tmp_path, dns):
    """Mail goes to the MX with the lowest preference value."""
    port = free_port_on("127.0.0.2", "127.0.0.3")
    dns.add("pref.test", "MX", "20 mx2.pref.test.")
    dns.add("pref.test", "MX", "10 mx1.pref.test.")
    dns.add("mx1.pref.test", "A", "127.0.0.2")
    dns.add("mx2.pref.test", "A", "127.0.0.3")
    async with Receiver("127.0.0.2", port) as best, Receiver("127.0.0.3", port) as other:
        async with node_for(tmp_path, dns, port) as node:
            await send(node, "u@pref.test")
            [rec] = await node.records.wait(lambda r: r["type"] == "Delivery")
    assert len(best.messages) == 1 and other.messages == []
    assert rec["peer_address"]["name"] == "mx1.pref.test"
    assert rec["site"] == "unspecified->(mx1|mx2).pref.test@smtp_client"


async def test_falls_back_to_next_mx_when_first_refuses_connections(tmp_path, dns):
    """When the preferred MX doesn't accept connections, the next MX gets the mail."""
    port = free_port_on("127.0.0.2", "127.0.0.3")
    dns.add("fb.test", "MX", "10 down.fb.test.")
    dns.add("fb.test", "MX", "20 up.fb.test.")
    dns.add("down.fb.test", "A", "127.0.0.2")  # nothing listens there
    dns.add("up.fb.test", "A", "127.0.0.3")
    async with Receiver("127.0.0.3", port) as up:
        async with node_for(tmp_path, dns, port) as node:
            await send(node, "u@fb.test")
            [rec] = await node.records.wait(lambda r: r["type"] == "Delivery")
    assert len(up.messages) == 1
    assert rec["peer_address"]["name"] == "up.fb.test"


async def test_domain_without_mx_is_delivered_to_its_a_record(tmp_path, dns):
    """A domain with no MX but an A record is its own mail exchanger (RFC 5321 §5.1)."""
    port = free_port_on("127.0.0.4")
    dns.add("nomx.test", "A", "127.0.0.4")
    async with Receiver("127.0.0.4", port) as rx:
        async with node_for(tmp_path, dns, port) as node:
            await send(node, "u@nomx.test")
            [rec] = await node.records.wait(lambda r: r["type"] == "Delivery")
    assert len(rx.messages) == 1
    assert rec["site"] == "unspecified->nomx.test@smtp_client"


async def test_null_mx_bounces(tmp_path, dns):
    """A null MX (RFC 7505) is a permanent failure: Bounce 556 5.1.10, no retry."""
    dns.add("nullmx.test", "MX", "0 .")
    async with node_for(tmp_path, dns, free_port_on("127.0.0.1")) as node:
        await send(node, "u@nullmx.test")
        [rec] = await node.records.wait(lambda r: r["type"] == "Bounce")
    assert rec["response"]["code"] == 556
    assert rec["response"]["enhanced_code"] == {"class": 5, "subject": 1, "detail": 10}
    assert node.records.of("TransientFailure") == []


async def test_nxdomain_bounces(tmp_path, dns):
    """A recipient domain that does not exist bounces at once."""
    async with node_for(tmp_path, dns, free_port_on("127.0.0.1")) as node:
        await send(node, "u@missing.test")
        [rec] = await node.records.wait(lambda r: r["type"] == "Bounce")
    assert rec["response"]["code"] == 550
    assert node.records.of("TransientFailure") == []


async def test_servfail_is_a_transient_failure(tmp_path, dns):
    """A SERVFAIL answer defers the message (TransientFailure) instead of bouncing it."""
    dns.servfail("broken.test")
    async with node_for(tmp_path, dns, free_port_on("127.0.0.1")) as node:
        await send(node, "u@broken.test")
        [rec] = await node.records.wait(lambda r: r["type"] == "TransientFailure")
        scheduled = node.scheduler.messages()
    assert 400 <= rec["response"]["code"] < 500
    assert node.records.of("Bounce") == []
    assert [m.recipient for m in scheduled] == ["u@broken.test"]  # kept for a retry


async def test_loopback_mx_is_prohibited_by_default(tmp_path, dns):
    """An MX resolving to loopback is refused unless configured (a misconfigured domain can't
    make us deliver to ourselves)."""
    dns.add("loop.test", "MX", "10 mx.loop.test.")
    dns.add("mx.loop.test", "A", "127.0.0.1")
    async with running_node(tmp_path, **{"dns.nameservers": [dns.nameserver]}) as node:
        await send(node, "u@loop.test")
        [rec] = await node.records.wait(lambda r: r["type"] in ("Bounce", "TransientFailure"))
    assert rec["type"] == "Bounce"
    assert rec["response"]["code"] == 550
    assert "prohibited" in rec["response"]["content"]
