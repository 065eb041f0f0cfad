"""Outbound STARTTLS per TlsMode, and inbound STARTTLS with AUTH for relaying."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import ssl

import pytest
import trustme

from tests.support.node import running_node
from tests.support.receiver import Receiver

POLICY = """
def register(nimbus):
    @nimbus.on("get_egress_path_config")
    def path(routing_domain, source, site):
        return nimbus.EgressPathConfig(enable_tls=nimbus.TlsMode.{mode})

    @nimbus.on("get_queue_config")
    def queue(domain, tenant, campaign, routing_domain):
        return nimbus.QueueConfig(mx_list=("127.0.0.1:{port}",))
"""


@pytest.fixture
def cert(tmp_path):
    """A certificate for rx.test from a throwaway test CA: (certificate path, key path)."""
    directory = tmp_path / "cert"
    directory.mkdir()
    issued = trustme.CA().issue_cert("rx.test")
    issued.cert_chain_pems[0].write_to_path(str(directory / "c"))
    issued.private_key_pem.write_to_path(str(directory / "k"))
    return directory / "c", directory / "k"


@pytest.fixture
def server_tls(cert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*cert)
    return ctx


def node_for(tmp_path, rx: Receiver, mode: str):
    return running_node(tmp_path, policy=POLICY.format(mode=mode, port=rx.port))


async def send(node, recipient: str = "u@dst.test") -> None:
    import aiosmtplib

    await aiosmtplib.send(
        b"Subject: t\r\n\r\nhello\r\n",
        sender="s@src.test",
        recipients=[recipient],
        hostname="127.0.0.1",
        port=node.smtp_port,
        start_tls=False,
    )


# -- outbound ----------------------------------------------------------------------


async def test_required_tls_never_falls_back_to_plaintext(tmp_path):
    """With TLS Required and a peer that offers no STARTTLS, the message is deferred (4xx)
    before MAIL FROM is ever sent."""
    async with Receiver() as rx:
        async with node_for(tmp_path, rx, "REQUIRED") as node:
            await send(node)
            [rec] = await node.records.wait(lambda r: r["type"] == "TransientFailure")
    assert 400 <= rec["response"]["code"] < 500
    assert "TLS required" in rec["response"]["content"]
    assert rx.connections >= 1
    assert rx.mail_froms == 0 and rx.messages == []
    assert node.records.of("Delivery") == []


async def test_opportunistic_tls_accepts_an_untrusted_certificate(tmp_path, server_tls):
    """Opportunistic TLS upgrades to TLS even with a certificate from an unknown CA, and the
    Delivery record names the cipher."""
    async with Receiver(tls_context=server_tls) as rx:
        async with node_for(tmp_path, rx, "OPPORTUNISTIC") as node:
            await send(node)
            [rec] = await node.records.wait(lambda r: r["type"] == "Delivery")
    assert len(rx.messages) == 1 and rx.messages[0].tls is True
    assert rec["tls_cipher"]
    assert rec["tls_protocol_version"].startswith("TLS")


async def test_disabled_tls_delivers_in_plaintext_even_when_offered(tmp_path, server_tls):
    """With TLS Disabled the message goes in plaintext although the peer offers STARTTLS."""
    async with Receiver(tls_context=server_tls) as rx:
        async with node_for(tmp_path, rx, "DISABLED") as node:
            await send(node)
            [rec] = await node.records.wait(lambda r: r["type"] == "Delivery")
    assert len(rx.messages) == 1 and rx.messages[0].tls is False
    assert "tls_cipher" not in rec


# -- inbound -----------------------------------------------------------------------


def tls_node(tmp_path, cert, auth_dir, rx: Receiver):
    """A node with STARTTLS and AUTH, relaying only for 10.255.0.0/16 (not for us)."""
    return running_node(
        tmp_path,
        **{
            "smtp.tls_certificate": str(cert[0]),
            "smtp.tls_private_key": str(cert[1]),
            "http.auth_dir": str(auth_dir),
            "smtp.relay_hosts": ["10.255.0.0/16"],
            "sink.enabled": True,
            "sink.endpoint": f"127.0.0.1:{rx.port}",
        },
    )


def unverified() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def test_auth_is_advertised_only_after_starttls(tmp_path, cert, auth_dir):
    """EHLO offers STARTTLS but not AUTH in plaintext, and AUTH once TLS is up."""

    def session(port: int) -> tuple[dict[str, str], dict[str, str]]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.test")
            before = dict(client.esmtp_features)
            client.starttls(context=unverified())
            client.ehlo("client.test")
            return before, dict(client.esmtp_features)

    async with Receiver() as rx, tls_node(tmp_path, cert, auth_dir, rx) as node:
        before, after = await asyncio.to_thread(session, node.smtp_port)
    assert "starttls" in before and "auth" not in before
    assert "auth" in after and "PLAIN" in after["auth"].split()


async def test_authenticated_client_may_relay(tmp_path, cert, auth_dir):
    """After STARTTLS and AUTH PLAIN as alice, a client outside relay_hosts may relay."""

    def session(port: int) -> tuple[tuple[int, bytes], tuple[int, bytes], tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=unverified())
            client.ehlo("client.test")
            client.user, client.password = "alice", "s3cret"
            auth = client.auth("PLAIN", client.auth_plain)
            client.mail("s@src.test")
            rcpt = client.rcpt("u@dst.test")
            data = client.data(b"Subject: t\r\n\r\nhello\r\n")
            return auth, rcpt, data

    async with Receiver() as rx, tls_node(tmp_path, cert, auth_dir, rx) as node:
        auth, rcpt, data = await asyncio.to_thread(session, node.smtp_port)
        await rx.wait_for(1)
    assert auth[0] == 235
    assert rcpt[0] == 250
    assert data[0] == 250 and data[1].startswith(b"OK ids=")
    assert b"with ESMTPSA" in rx.messages[0].data  # the Received header records TLS + AUTH


async def test_unauthenticated_client_outside_relay_hosts_is_denied(tmp_path, cert, auth_dir):
    """Without AUTH, a client outside relay_hosts gets 550 5.7.1 at RCPT, even over TLS."""

    def session(port: int) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=unverified())
            client.ehlo("client.test")
            client.mail("s@src.test")
            return client.rcpt("u@dst.test")

    async with Receiver() as rx, tls_node(tmp_path, cert, auth_dir, rx) as node:
        code, text = await asyncio.to_thread(session, node.smtp_port)
        [rec] = await node.records.wait(lambda r: r["type"] == "Rejection")
    assert code == 550 and text.startswith(b"5.7.1")
    assert rec["recipient"] == "u@dst.test"
    assert rx.messages == []


async def test_repeated_bad_smtp_auth_is_braked_with_the_http_budget(tmp_path, cert, auth_dir):
    """Three wrong AUTH PLAIN passwords are 535; the fourth attempt, even with the right
    password, is 454 4.7.0 with the wait (refused unchecked: guessing cannot go on); HTTP basic
    auth from the same peer shares the count (429); another peer may still authenticate."""
    import aiohttp

    def attempts(port: int, tries: list[str], local: str = "127.0.0.1") -> list[tuple[int, bytes]]:
        answers = []
        with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(local, 0)) as client:
            client.starttls(context=unverified())
            client.ehlo("client.test")
            for password in tries:
                token = base64.b64encode(f"\0alice\0{password}".encode()).decode()
                answers.append(client.docmd("AUTH", "PLAIN " + token))
        return answers

    settings = {
        "smtp.tls_certificate": str(cert[0]),
        "smtp.tls_private_key": str(cert[1]),
        "http.auth_dir": str(auth_dir),
        "http.auth_failure_burst": 3,
        "http.auth_failure_refill": "60s",
        "sink.enabled": True,
        "sink.endpoint": "127.0.0.1:9",
    }
    async with running_node(tmp_path, **settings) as node:
        port = node.smtp_port
        answers = await asyncio.to_thread(attempts, port, ["g1", "g2", "g3", "s3cret"])
        good = {"Authorization": aiohttp.encode_basic_auth("alice", "s3cret")}
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{node.http_port}/api/inject/v1"
            async with http.post(url, json={}, headers=good) as response:
                http_status = response.status
        other = await asyncio.to_thread(attempts, port, ["s3cret"], "127.0.0.2")
    assert [code for code, _ in answers[:3]] == [535, 535, 535]
    code, text = answers[3]
    assert code == 454 and text.startswith(b"4.7.0 Too many failed authentication attempts")
    assert 1 <= int(text.rsplit(b"retry in ", 1)[1].rstrip(b"s")) <= 60
    assert http_status == 429
    assert other[0][0] == 235
