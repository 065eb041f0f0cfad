"""SmtpClientConnection against real aiosmtpd receivers served in the test's own loop."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass

import pytest
import trustme
from aiosmtpd.smtp import SMTP

from engine.delivery.client import SmtpClientConnection
from engine.delivery.errors import ConnectFailed, ConnectionLost, TlsFailed, TlsRequiredError
from engine.policy.egress import DEFAULT_SOURCE, EgressPathConfig, EgressSource, TlsMode
from engine.records import EnhancedCode

MESSAGE = (
    b"From: a@tx.test\r\nTo: b@rx.test\r\nSubject: hi\r\n\r\n"
    b"Hello\r\n.a line starting with a dot\r\n"
)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool


class Receiver:
    """aiosmtpd handler that records what arrived and answers as configured."""

    def __init__(
        self,
        *,
        rcpt_replies: dict[str, str] | None = None,
        data_reply: str | None = None,
        stall_data: bool = False,
        refuse_ehlo: bool = False,
    ) -> None:
        self.refuse_ehlo = refuse_ehlo
        self.rcpt_replies = rcpt_replies or {}
        self.data_reply = data_reply
        self.stall = asyncio.Event() if stall_data else None
        self.connections = 0
        self.peers: list[str] = []
        self.mail_from: list[tuple[str, list[str]]] = []
        self.messages: list[Received] = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        if self.refuse_ehlo:
            session.extended_smtp = False
            return ["502 5.5.1 EHLO not implemented"]
        session.host_name = hostname  # aiosmtpd leaves this to a handle_EHLO hook
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.mail_from.append((address, list(mail_options)))
        self.peers.append(session.peer[0])
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.stall is not None:
            await self.stall.wait()
        self.messages.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                session.ssl is not None,
            )
        )
        return self.data_reply or "250 2.0.0 queued"


@pytest.fixture(scope="module")
def tls_ca() -> trustme.CA:
    """A test CA no system trust store knows, made once per module."""
    return trustme.CA()


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory, tls_ca):
    """A certificate for rx.test issued by ``tls_ca``: (certificate chain, key) PEM files."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    issued = tls_ca.issue_cert("rx.test")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory, tls_ca):
    """The test CA's certificate as a PEM file (what a client that trusts it loads)."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def server_tls(cert_files) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert_files)
    return ctx


@pytest.fixture
async def start_receiver():
    """Factory: serve a Receiver on 127.0.0.1:0 and return its port; closed at teardown."""
    started: list[tuple[asyncio.Server, list[SMTP], Receiver]] = []

    async def start(handler: Receiver, tls_context: ssl.SSLContext | None = None) -> int:
        loop = asyncio.get_running_loop()
        protocols: list[SMTP] = []

        def factory() -> SMTP:
            handler.connections += 1
            proto = SMTP(handler, hostname="rx.test", tls_context=tls_context, loop=loop)
            protocols.append(proto)
            return proto

        server = await loop.create_server(factory, "127.0.0.1", 0)
        started.append((server, protocols, handler))
        return server.sockets[0].getsockname()[1]

    yield start
    for server, protocols, handler in started:
        if handler.stall is not None:
            handler.stall.set()
        server.close()
        await server.wait_closed()
        for proto in protocols:
            if proto.transport is not None:
                proto.transport.close()
            if proto._handler_coroutine is not None:
                await asyncio.gather(proto._handler_coroutine, return_exceptions=True)


@pytest.fixture
async def open_client():
    """Factory: open an SmtpClientConnection to 127.0.0.1:<port>; closed at teardown."""
    opened: list[SmtpClientConnection] = []

    async def open_(
        port: int,
        tls: TlsMode = TlsMode.OPPORTUNISTIC,
        factory=None,
        source: EgressSource = DEFAULT_SOURCE,
        **path_kw,
    ):
        path = EgressPathConfig(enable_tls=tls, **path_kw)
        conn = await SmtpClientConnection.open(
            host_name="rx.test",
            address="127.0.0.1",
            port=port,
            path=path,
            source=source,
            ehlo_domain="tx.test",
            tls_context_factory=factory,
        )
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        await conn.close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_plain_delivery_returns_250_and_exact_bytes(start_receiver, open_client):
    """A plain delivery returns the 250 reply and the receiver gets the exact bytes."""
    rx = Receiver()
    conn = await open_client(await start_receiver(rx))
    response = await conn.send("a@tx.test", "b@rx.test", MESSAGE)
    assert (response.code, response.enhanced_code, response.command) == (
        250,
        EnhancedCode(2, 0, 0),
        "DATA",
    )
    assert rx.messages == [Received("a@tx.test", ["b@rx.test"], MESSAGE, False)]
    assert conn.tls_cipher is None and conn.tls_protocol_version is None
    assert conn.peer.name == "rx.test" and conn.peer.addr.startswith("127.0.0.1:")


async def test_connection_is_reused_for_several_sends(start_receiver, open_client):
    """Three sends on one connection arrive as three messages over one connection."""
    rx = Receiver()
    conn = await open_client(await start_receiver(rx))
    for i in range(3):
        assert (await conn.send("a@tx.test", f"r{i}@rx.test", MESSAGE)).code == 250
    assert rx.connections == 1 and len(rx.messages) == 3
    assert conn.deliveries == 3 and conn.is_usable


async def test_source_address_is_bound(start_receiver, open_client):
    """The connection comes from the egress source's address."""
    rx = Receiver()
    source = EgressSource(name="second", source_address="127.0.0.2")
    conn = await open_client(await start_receiver(rx), source=source)
    assert (await conn.send("a@tx.test", "b@rx.test", MESSAGE)).code == 250
    assert rx.peers == ["127.0.0.2"]


async def test_rcpt_550_is_returned_and_connection_stays_usable(start_receiver, open_client):
    """A 550 RCPT refusal is returned with its enhanced code and the next send still works."""
    rx = Receiver(rcpt_replies={"bad@rx.test": "550 5.1.1 no such user"})
    conn = await open_client(await start_receiver(rx))
    refused = await conn.send("a@tx.test", "bad@rx.test", MESSAGE)
    assert refused.code == 550 and refused.enhanced_code == EnhancedCode(5, 1, 1)
    assert refused.command == "RCPT TO:<bad@rx.test>" and refused.content == "no such user"
    assert conn.is_usable
    assert (await conn.send("a@tx.test", "good@rx.test", MESSAGE)).code == 250
    assert [m.rcpt_tos for m in rx.messages] == [["good@rx.test"]]


async def test_rcpt_451_is_returned(start_receiver, open_client):
    """A 451 RCPT reply is returned as a transient Response."""
    rx = Receiver(rcpt_replies={"later@rx.test": "451 4.3.0 try later"})
    conn = await open_client(await start_receiver(rx))
    response = await conn.send("a@tx.test", "later@rx.test", MESSAGE)
    assert response.code == 451 and response.is_transient
    assert response.enhanced_code == EnhancedCode(4, 3, 0)


async def test_rcpt_421_raises_connection_lost(start_receiver, open_client):
    """A 421 RCPT reply raises ConnectionLost carrying it and leaves the connection unusable."""
    rx = Receiver(rcpt_replies={"b@rx.test": "421 4.7.0 too busy, closing"})
    conn = await open_client(await start_receiver(rx))
    with pytest.raises(ConnectionLost) as info:
        await conn.send("a@tx.test", "b@rx.test", MESSAGE)
    assert info.value.response.code == 421
    assert info.value.response.command == "RCPT TO:<b@rx.test>"
    assert not conn.is_usable


async def test_refused_ehlo_falls_back_to_helo(start_receiver, open_client):
    """A peer that refuses EHLO is greeted with HELO and still receives the message."""
    rx = Receiver(refuse_ehlo=True)
    conn = await open_client(await start_receiver(rx))
    assert (await conn.send("a@tx.test", "b@rx.test", MESSAGE)).code == 250
    assert rx.mail_from == [("a@tx.test", [])]


async def test_data_554_is_returned(start_receiver, open_client):
    """A 554 end-of-data reply is returned with command DATA."""
    rx = Receiver(data_reply="554 5.7.1 message rejected")
    conn = await open_client(await start_receiver(rx))
    response = await conn.send("a@tx.test", "b@rx.test", MESSAGE)
    assert (response.code, response.enhanced_code, response.command) == (
        554,
        EnhancedCode(5, 7, 1),
        "DATA",
    )
    assert conn.is_usable


async def test_mail_from_carries_size_and_8bitmime(start_receiver, open_client):
    """MAIL FROM carries SIZE= and, for 8-bit data, BODY=8BITMIME."""
    rx = Receiver()
    conn = await open_client(await start_receiver(rx))
    body = MESSAGE + "caf\u00e9\r\n".encode()
    assert (await conn.send("a@tx.test", "b@rx.test", body)).code == 250
    assert rx.mail_from == [("a@tx.test", [f"SIZE={len(body)}", "BODY=8BITMIME"])]
    assert rx.messages[0].content == body


async def test_non_ascii_address_without_smtputf8_is_refused_locally(start_receiver, open_client):
    """A non-ASCII address to a server without SMTPUTF8 gets 550 5.6.7 and nothing is sent."""
    rx = Receiver()
    conn = await open_client(await start_receiver(rx))
    response = await conn.send("a@tx.test", "j\u00f6rg@rx.test", MESSAGE)
    assert response.code == 550 and response.enhanced_code == EnhancedCode(5, 6, 7)
    assert rx.mail_from == [] and conn.is_usable


async def test_opportunistic_uses_starttls_with_untrusted_cert(
    start_receiver, open_client, server_tls
):
    """Opportunistic TLS upgrades despite an untrusted certificate and delivers over TLS."""
    rx = Receiver()
    conn = await open_client(await start_receiver(rx, server_tls))
    assert (await conn.send("a@tx.test", "b@rx.test", MESSAGE)).code == 250
    assert conn.tls_cipher and conn.tls_protocol_version.startswith("TLS")
    assert rx.messages[0].tls


async def test_opportunistic_without_starttls_delivers_in_plaintext(start_receiver, open_client):
    """Opportunistic TLS delivers in plaintext when STARTTLS is not offered."""
    rx = Receiver()
    conn = await open_client(await start_receiver(rx), TlsMode.OPPORTUNISTIC)
    assert (await conn.send("a@tx.test", "b@rx.test", MESSAGE)).code == 250
    assert conn.tls_cipher is None and not rx.messages[0].tls


async def test_required_without_starttls_never_sends_mail(start_receiver, open_client):
    """Required TLS without STARTTLS raises TlsRequiredError before any MAIL FROM."""
    rx = Receiver()
    port = await start_receiver(rx)
    with pytest.raises(TlsRequiredError) as info:
        await open_client(port, TlsMode.REQUIRED)
    assert info.value.response.code == 451
    assert info.value.response.enhanced_code == EnhancedCode(4, 7, 5)
    assert "not advertised by rx.test" in info.value.response.content
    assert rx.connections == 1 and rx.mail_from == []


async def test_required_rejects_untrusted_cert(start_receiver, open_client, server_tls):
    """Required TLS fails verification of a certificate from an unknown CA with TlsFailed."""
    rx = Receiver()
    port = await start_receiver(rx, server_tls)
    with pytest.raises(TlsFailed) as info:
        await open_client(port, TlsMode.REQUIRED)
    assert info.value.response.is_transient and "certificate" in info.value.response.content
    assert rx.mail_from == []


async def test_required_accepts_cert_from_trusted_ca(
    start_receiver, open_client, server_tls, ca_file
):
    """Required TLS delivers when the factory's context trusts the certificate."""
    rx = Receiver()
    port = await start_receiver(rx, server_tls)

    def factory(verify: bool) -> ssl.SSLContext:
        assert verify
        return ssl.create_default_context(cafile=str(ca_file))

    conn = await open_client(port, TlsMode.REQUIRED, factory=factory)
    assert (await conn.send("a@tx.test", "b@rx.test", MESSAGE)).code == 250
    assert rx.messages[0].tls


async def test_required_insecure_accepts_untrusted_cert(start_receiver, open_client, server_tls):
    """RequiredInsecure TLS delivers over TLS despite an untrusted certificate."""
    rx = Receiver()
    conn = await open_client(await start_receiver(rx, server_tls), TlsMode.REQUIRED_INSECURE)
    assert (await conn.send("a@tx.test", "b@rx.test", MESSAGE)).code == 250
    assert conn.tls_cipher and rx.messages[0].tls


async def test_disabled_ignores_offered_starttls(start_receiver, open_client, server_tls):
    """Disabled TLS delivers in plaintext even when STARTTLS is offered."""
    rx = Receiver()
    conn = await open_client(await start_receiver(rx, server_tls), TlsMode.DISABLED)
    assert (await conn.send("a@tx.test", "b@rx.test", MESSAGE)).code == 250
    assert conn.tls_cipher is None and not rx.messages[0].tls


async def test_connect_refused_raises_connect_failed(open_client, closed_port):
    """A refused TCP connection raises ConnectFailed with a 4xx response."""
    with pytest.raises(ConnectFailed) as info:
        await open_client(closed_port)
    assert info.value.response.code == 421
    assert info.value.response.enhanced_code == EnhancedCode(4, 4, 1)


async def test_silent_banner_times_out_quickly():
    """A server that accepts TCP but never greets raises ConnectFailed after banner_timeout."""
    accepted: list[asyncio.Transport] = []

    class Silent(asyncio.Protocol):
        def connection_made(self, transport):
            accepted.append(transport)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Silent, "127.0.0.1", 0)
    try:
        path = EgressPathConfig(connect_timeout=1.0, banner_timeout=0.2)
        started = time.monotonic()
        with pytest.raises(ConnectFailed) as info:
            await SmtpClientConnection.open(
                host_name="rx.test",
                address="127.0.0.1",
                port=server.sockets[0].getsockname()[1],
                path=path,
                source=DEFAULT_SOURCE,
                ehlo_domain="tx.test",
            )
        assert time.monotonic() - started < 2.0
        assert info.value.response.code == 421 and "banner" in info.value.response.content
    finally:
        server.close()
        await server.wait_closed()
        for transport in accepted:
            transport.close()


async def test_data_dot_timeout_raises_connection_lost(start_receiver, open_client):
    """A peer that never answers the end of data raises ConnectionLost and is unusable."""
    rx = Receiver(stall_data=True)
    conn = await open_client(await start_receiver(rx), data_dot_timeout=0.2)
    with pytest.raises(ConnectionLost) as info:
        await conn.send("a@tx.test", "b@rx.test", MESSAGE)
    response = info.value.response
    assert response.code == 451 and response.enhanced_code == EnhancedCode(4, 4, 2)
    assert response.command == "DATA" and "end-of-data" in response.content
    assert not conn.is_usable
