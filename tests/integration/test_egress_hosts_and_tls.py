"""skip_hosts through a running node, and remember_broken_tls against a real receiver
whose STARTTLS handshake fails."""

from __future__ import annotations

import ssl

import aiosmtplib
import pytest

from engine.delivery.broken_tls import BrokenTlsHosts, open_connection
from engine.delivery.errors import TlsFailed, TlsHandshakeFailed
from engine.policy.egress import DEFAULT_SOURCE, EgressPathConfig, TlsMode
from tests.support.node import running_node
from tests.support.receiver import Receiver

MESSAGE = b"From: a@tx.test\r\nTo: b@rx.test\r\nSubject: hi\r\n\r\nHello\r\n"

POLICY = """
def register(nimbus):
    @nimbus.on("get_egress_path_config")
    def path(routing_domain, source, site):
        return nimbus.EgressPathConfig(skip_hosts=("127.0.0.2/32",))

    @nimbus.on("get_queue_config")
    def queue(domain, tenant, campaign, routing_domain):
        return nimbus.QueueConfig(mx_list=({hosts}))
"""


async def inject(node) -> None:
    await aiosmtplib.send(
        b"Subject: t\r\n\r\nhello\r\n",
        sender="s@src.test",
        recipients=["u@dst.test"],
        hostname="127.0.0.1",
        port=node.smtp_port,
        start_tls=False,
    )


async def test_skip_hosts_address_is_passed_over(tmp_path):
    """The first MX is in skip_hosts: it is never connected to and the next one delivers."""
    async with Receiver("127.0.0.2") as skipped, Receiver("127.0.0.1") as rx:
        hosts = f'"127.0.0.2:{skipped.port}", "127.0.0.1:{rx.port}",'
        async with running_node(tmp_path, policy=POLICY.format(hosts=hosts)) as node:
            await inject(node)
            await node.records.wait(lambda r: r["type"] == "Delivery")
    assert skipped.connections == 0 and len(rx.messages) == 1


async def test_only_skipped_hosts_is_a_transient_failure(tmp_path):
    """When every MX address is in skip_hosts the message gets 451 4.4.4 and is retried."""
    async with Receiver("127.0.0.2") as skipped:
        hosts = f'"127.0.0.2:{skipped.port}",'
        async with running_node(tmp_path, policy=POLICY.format(hosts=hosts)) as node:
            await inject(node)
            [rec] = await node.records.wait(lambda r: r["type"] == "TransientFailure")
    assert skipped.connections == 0
    assert rec["response"]["code"] == 451 and "skip_hosts" in rec["response"]["content"]


@pytest.fixture
def broken_tls() -> ssl.SSLContext:
    """A server context with no certificate: STARTTLS is offered, every handshake fails."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


async def connect(rx: Receiver, broken: BrokenTlsHosts, **path_kw):
    return await open_connection(
        broken,
        host_name="rx.test",
        address="127.0.0.1",
        port=rx.port,
        path=EgressPathConfig(**path_kw),
        source=DEFAULT_SOURCE,
        ehlo_domain="tx.test",
    )


async def test_broken_tls_is_remembered_for_the_next_connection(broken_tls):
    """Opportunistic: the failed handshake fails this attempt; the next connection to the
    host skips STARTTLS and delivers in plaintext while remember_broken_tls lasts."""
    broken = BrokenTlsHosts()
    async with Receiver(tls_context=broken_tls) as rx:
        with pytest.raises(TlsHandshakeFailed):
            await connect(rx, broken, remember_broken_tls=3600.0)
        conn = await connect(rx, broken, remember_broken_tls=3600.0)
        try:
            assert conn.tls_cipher is None
            assert (await conn.send("a@tx.test", "b@rx.test", MESSAGE)).code == 250
        finally:
            await conn.close()
    assert len(rx.messages) == 1 and rx.messages[0].tls is False
    assert broken.is_broken("127.0.0.1")


async def test_without_remember_broken_tls_every_attempt_tries_tls(broken_tls):
    """Unset remember_broken_tls: nothing is remembered, each attempt fails the handshake."""
    broken = BrokenTlsHosts()
    async with Receiver(tls_context=broken_tls) as rx:
        for _ in range(2):
            with pytest.raises(TlsHandshakeFailed):
                await connect(rx, broken)
    assert rx.messages == [] and not broken.is_broken("127.0.0.1")


async def test_reconnect_on_failed_handshake_delivers_at_once(broken_tls):
    """opportunistic_tls_reconnect_on_failed_handshake reconnects in plaintext right away."""
    broken = BrokenTlsHosts()
    async with Receiver(tls_context=broken_tls) as rx:
        conn = await connect(rx, broken, opportunistic_tls_reconnect_on_failed_handshake=True)
        try:
            assert (await conn.send("a@tx.test", "b@rx.test", MESSAGE)).code == 250
        finally:
            await conn.close()
    assert rx.connections == 2 and rx.messages[0].tls is False


async def test_required_tls_never_remembers_a_plaintext_fallback(broken_tls):
    """Required TLS fails every time, whatever remember_broken_tls says."""
    broken = BrokenTlsHosts()
    async with Receiver(tls_context=broken_tls) as rx:
        for _ in range(2):
            with pytest.raises(TlsFailed):
                await connect(
                    rx,
                    broken,
                    enable_tls=TlsMode.REQUIRED,
                    remember_broken_tls=3600.0,
                    opportunistic_tls_reconnect_on_failed_handshake=True,
                )
    assert rx.messages == [] and rx.mail_froms == 0


REFUSING_POLICY = """
def register(nimbus):
    @nimbus.on("get_egress_path_config")
    def path(routing_domain, source, site):
        return nimbus.EgressPathConfig(use_lmtp=True)

    @nimbus.on("get_queue_config")
    def queue(domain, tenant, campaign, routing_domain):
        return nimbus.QueueConfig(mx_list=("127.0.0.1:{port}",))
"""


async def test_policy_built_unsupported_option_is_never_delivered(tmp_path, caplog):
    """A policy answer setting an option Nimbus does not implement (use_lmtp) is refused:
    a TransientFailure, no connection, and an error naming the key."""
    async with Receiver("127.0.0.1") as rx:
        async with running_node(tmp_path, policy=REFUSING_POLICY.format(port=rx.port)) as node:
            await inject(node)
            [rec] = await node.records.wait(lambda r: r["type"] == "TransientFailure")
    assert rx.connections == 0
    assert rec["response"]["code"] == 451
    errors = [getattr(r, "error", "") for r in caplog.records]
    assert any('key "use_lmtp": not supported by Nimbus' in e for e in errors)
