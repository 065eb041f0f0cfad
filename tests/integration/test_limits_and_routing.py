"""SMTP session limits (connections, idle timeout) and routing_domain routing."""

from __future__ import annotations

import asyncio

import aiosmtplib

from tests.support.dns_server import FakeDns
from tests.support.node import running_node
from tests.support.peers import free_port_on
from tests.support.receiver import Receiver


async def open_session(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    async with asyncio.timeout(10):
        banner = await reader.readline()
    return reader, writer, banner


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


async def test_connections_over_the_limit_get_421(tmp_path):
    """Past smtp.max_connections a new session is refused with 421 4.7.0; once one closes,
    a new session is served again."""
    async with running_node(tmp_path, **{"smtp.max_connections": 2}) as node:
        first = await open_session(node.smtp_port)
        second = await open_session(node.smtp_port)
        _, third_writer, third_banner = await open_session(node.smtp_port)
        await close(third_writer)
        await close(first[1])
        async with asyncio.timeout(10):
            while node.smtp.open_sessions >= 2:  # the server sees the close asynchronously
                await asyncio.sleep(0.01)
        _, fourth_writer, fourth_banner = await open_session(node.smtp_port)
        await close(fourth_writer)
        await close(second[1])
    assert first[2].startswith(b"220 ") and second[2].startswith(b"220 ")
    assert third_banner.startswith(b"421 4.7.0 ")
    assert fourth_banner.startswith(b"220 ")


async def test_idle_session_gets_421_then_is_closed(tmp_path):
    """A client silent for longer than smtp.idle_timeout gets 421 4.4.2 and is disconnected."""
    async with running_node(tmp_path, **{"smtp.idle_timeout": 0.3}) as node:
        reader, writer, banner = await open_session(node.smtp_port)
        async with asyncio.timeout(10):
            reply = await reader.readline()
            rest = await reader.read()
        await close(writer)
    assert banner.startswith(b"220 ")
    assert reply.startswith(b"421 4.4.2 ")
    assert rest == b""  # the server closed the connection


ROUTING_POLICY = """
def register(nimbus):
    @nimbus.on("smtp_server_message_received")
    def received(msg, conn_meta):
        if msg.recipient().endswith("@customer.test"):
            msg.set_meta("routing_domain", "relay.test")

    @nimbus.on("get_egress_path_config")
    def path(routing_domain, source, site):
        return nimbus.EgressPathConfig(smtp_port={port}, prohibited_hosts=(),
                                       enable_tls=nimbus.TlsMode.DISABLED)
"""


async def test_routing_domain_sends_mail_to_the_routing_domains_mx(tmp_path):
    """A message with meta routing_domain is queued as 'domain!routing_domain' and delivered
    to the routing domain's MX, not the recipient domain's."""
    port = free_port_on("127.0.0.5", "127.0.0.6")
    async with FakeDns(ttl=60) as dns:
        dns.add("customer.test", "MX", "10 mx.customer.test.")
        dns.add("mx.customer.test", "A", "127.0.0.5")
        dns.add("relay.test", "MX", "10 mx.relay.test.")
        dns.add("mx.relay.test", "A", "127.0.0.6")
        async with Receiver("127.0.0.5", port) as direct, Receiver("127.0.0.6", port) as relay:
            async with running_node(tmp_path, policy=ROUTING_POLICY.format(port=port),
                                    **{"dns.nameservers": [dns.nameserver]}) as node:
                await aiosmtplib.send(b"Subject: r\r\n\r\nbody\r\n", sender="a@src.test",
                                      recipients=["u@customer.test"], hostname="127.0.0.1",
                                      port=node.smtp_port, start_tls=False)
                [rec] = await node.records.wait(lambda r: r["type"] == "Delivery")
    assert rec["queue"] == "customer.test!relay.test"
    assert rec["site"] == "unspecified->mx.relay.test@smtp_client"
    assert len(relay.messages) == 1 and direct.messages == []
    assert relay.messages[0].recipients == ["u@customer.test"]
