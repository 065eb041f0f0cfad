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
            async with running_node(
                tmp_path,
                policy=ROUTING_POLICY.format(port=port),
                **{"dns.nameservers": [dns.nameserver]},
            ) as node:
                await aiosmtplib.send(
                    b"Subject: r\r\n\r\nbody\r\n",
                    sender="a@src.test",
                    recipients=["u@customer.test"],
                    hostname="127.0.0.1",
                    port=node.smtp_port,
                    start_tls=False,
                )
                [rec] = await node.records.wait(lambda r: r["type"] == "Delivery")
    assert rec["queue"] == "customer.test!relay.test"
    assert rec["site"] == "unspecified->mx.relay.test@smtp_client"
    assert len(relay.messages) == 1 and direct.messages == []
    assert relay.messages[0].recipients == ["u@customer.test"]


async def test_slow_body_within_data_timeout_is_accepted(tmp_path):
    """A body trickling in for longer than smtp.idle_timeout is still accepted: the body gets
    smtp.data_timeout (RFC 5321 4.5.3.2.6), and the idle timer applies again afterwards."""
    async with running_node(
        tmp_path, **{"smtp.idle_timeout": 0.3, "smtp.data_timeout": 10}
    ) as node:
        reader, writer, banner = await open_session(node.smtp_port)

        async def command(line: bytes) -> bytes:
            writer.write(line)
            await writer.drain()
            while True:
                reply = await reader.readline()
                if reply[3:4] != b"-":
                    return reply

        async with asyncio.timeout(10):
            await command(b"EHLO c.test\r\n")
            await command(b"MAIL FROM:<a@src.test>\r\n")
            await command(b"RCPT TO:<b@dst.test>\r\n")
            assert (await command(b"DATA\r\n")).startswith(b"354")
            for part in (b"Subject: slow\r\n", b"\r\n", b"line one\r\n"):
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.3)  # a slow client: the point of this test, not readiness
            reply = await command(b".\r\n")
            idle = await reader.readline()  # then the idle timer ends the silent session
        await close(writer)
    assert reply.startswith(b"250 OK ids=")
    assert idle.startswith(b"421 4.4.2 ")
