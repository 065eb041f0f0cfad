"""Smarthost AUTH PLAIN against a real aiosmtpd receiver that requires AUTH after STARTTLS."""

from __future__ import annotations

import asyncio
import ssl

import aiosmtplib
import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from engine.delivery.client import SmtpClientConnection
from engine.delivery.errors import AuthFailed
from engine.policy.egress import DEFAULT_SOURCE, EgressPathConfig, KeySource, TlsMode
from tests.support.node import running_node

MESSAGE = b"From: a@tx.test\r\nTo: b@rx.test\r\nSubject: hi\r\n\r\nHello\r\n"
USER, PASSWORD = "relay-user", "s3cret pass"


class AuthReceiver:
    """aiosmtpd on 127.0.0.1 with STARTTLS and AUTH required (auth_require_tls)."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.tls = tls
        self.logins: list[tuple[str, str, bool]] = []  # (user, password, accepted)
        self.mail_froms: list[str] = []
        self.messages: list[bytes] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._sessions: list[SMTP] = []
        self.arrived = asyncio.Event()

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        user, password = auth_data.login.decode(), auth_data.password.decode()
        ok = (user, password) == (USER, PASSWORD)
        self.logins.append((user, password, ok))
        return AuthResult(success=ok, handled=False)  # aiosmtpd then replies 535

    async def handle_MAIL(self, server, session, envelope, address, options):
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        self.mail_froms.append(address)
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.original_content)
        self.arrived.set()
        return "250 2.0.0 queued"

    async def __aenter__(self) -> AuthReceiver:
        def factory() -> SMTP:
            proto = SMTP(
                self,
                hostname="rx.test",
                tls_context=self.tls,
                authenticator=self._authenticate,
                auth_require_tls=True,
                auth_required=True,
            )
            self._sessions.append(proto)
            return proto

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(factory, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for proto in self._sessions:
            if proto.transport is not None:
                proto.transport.close()
        await self._server.wait_closed()
        await asyncio.gather(
            *(p._handler_coroutine for p in self._sessions if p._handler_coroutine),
            return_exceptions=True,
        )


@pytest.fixture
def cert(tmp_path):
    """A certificate for rx.test from a throwaway CA (trustme):
    (certificate chain path, key path, CA certificate path)."""
    ca = trustme.CA()
    issued = ca.issue_cert("rx.test")
    chain, key, ca_file = tmp_path / "chain.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    ca.cert_pem.write_to_path(str(ca_file))
    return chain, key, ca_file


@pytest.fixture
def server_tls(cert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert[0], cert[1])
    return ctx


@pytest.fixture
def trusting(cert):
    """A TLS context factory that trusts the test certificate when asked to verify."""

    def factory(verify: bool) -> ssl.SSLContext:
        if not verify:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=str(cert[2]))

    return factory


async def open_to(rx: AuthReceiver, factory, **path_kw) -> SmtpClientConnection:
    path = EgressPathConfig(smtp_auth_plain_username=USER, **path_kw)
    return await SmtpClientConnection.open(
        host_name="rx.test",
        address="127.0.0.1",
        port=rx.port,
        path=path,
        source=DEFAULT_SOURCE,
        ehlo_domain="tx.test",
        tls_context_factory=factory,
    )


async def test_auth_plain_over_verified_tls_delivers(server_tls, trusting):
    """Required TLS with a trusted certificate: AUTH PLAIN succeeds and the message lands."""
    async with AuthReceiver(server_tls) as rx:
        conn = await open_to(
            rx,
            trusting,
            enable_tls=TlsMode.REQUIRED,
            smtp_auth_plain_password=KeySource(key_data=PASSWORD),
        )
        try:
            reply = await conn.send("a@tx.test", "b@rx.test", MESSAGE)
        finally:
            await conn.close()
    assert reply.code == 250
    assert rx.logins == [(USER, PASSWORD, True)]
    assert rx.messages == [MESSAGE]


async def test_auth_password_from_a_file(tmp_path, server_tls, trusting):
    """A KeySource path is read (one trailing newline stripped, as a mounted Secret has)."""
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    async with AuthReceiver(server_tls) as rx:
        conn = await open_to(
            rx,
            trusting,
            enable_tls=TlsMode.REQUIRED,
            smtp_auth_plain_password=KeySource(path=str(secret)),
        )
        await conn.close()
    assert rx.logins == [(USER, PASSWORD, True)]


async def test_auth_without_tls_fails_transiently_and_sends_no_password(server_tls, trusting):
    """With TLS disabled, AUTH is never attempted: a 451 TransientFailure, nothing sent."""
    async with AuthReceiver(server_tls) as rx:
        with pytest.raises(AuthFailed) as info:
            await open_to(
                rx,
                trusting,
                enable_tls=TlsMode.DISABLED,
                smtp_auth_plain_password=KeySource(key_data=PASSWORD),
            )
    response = info.value.response
    assert response.code == 451 and response.is_transient
    assert "needs TLS" in response.content and PASSWORD not in str(response)
    assert rx.logins == [] and rx.mail_froms == []


async def test_auth_over_unverified_tls_needs_the_allow_option(server_tls, trusting):
    """Opportunistic TLS does not verify the certificate, so AUTH is refused unless
    allow_smtp_auth_plain_without_valid_certificate is true."""
    async with AuthReceiver(server_tls) as rx:
        with pytest.raises(AuthFailed) as info:
            await open_to(rx, trusting, smtp_auth_plain_password=KeySource(key_data=PASSWORD))
        assert "verified certificate" in info.value.response.content
        assert rx.logins == []
        conn = await open_to(
            rx,
            trusting,
            smtp_auth_plain_password=KeySource(key_data=PASSWORD),
            allow_smtp_auth_plain_without_valid_certificate=True,
        )
        await conn.close()
    assert rx.logins == [(USER, PASSWORD, True)]


async def test_wrong_password_is_the_peers_refusal(server_tls, trusting):
    """A refused AUTH raises AuthFailed carrying the peer's 535, and no MAIL is sent."""
    async with AuthReceiver(server_tls) as rx:
        with pytest.raises(AuthFailed) as info:
            await open_to(
                rx,
                trusting,
                enable_tls=TlsMode.REQUIRED,
                smtp_auth_plain_password=KeySource(key_data="wrong"),
            )
    assert info.value.response.code == 535
    assert info.value.response.command == "AUTH PLAIN"
    assert rx.mail_froms == []


POLICY = """
def register(nimbus):
    @nimbus.on("get_egress_path_config")
    def path(routing_domain, source, site):
        return nimbus.EgressPathConfig(
            smtp_auth_plain_username="{user}",
            smtp_auth_plain_password=nimbus.KeySource(key_data="{password}"),
            allow_smtp_auth_plain_without_valid_certificate={allow},
        )

    @nimbus.on("get_queue_config")
    def queue(domain, tenant, campaign, routing_domain):
        return nimbus.QueueConfig(mx_list=("127.0.0.1:{port}",))
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


@pytest.mark.parametrize("allow", [True, False])
async def test_node_relays_through_an_auth_smarthost(tmp_path, server_tls, allow):
    """End to end: the node authenticates to the smarthost (Delivery), or, without the
    allow option over unverified TLS, logs a TransientFailure and sends no credential."""
    async with AuthReceiver(server_tls) as rx:
        policy = POLICY.format(user=USER, password=PASSWORD, allow=allow, port=rx.port)
        async with running_node(tmp_path, policy=policy) as node:
            await inject(node)
            kind = "Delivery" if allow else "TransientFailure"
            [rec] = await node.records.wait(lambda r: r["type"] == kind)
    if allow:
        assert rx.logins == [(USER, PASSWORD, True)] and len(rx.messages) == 1
    else:
        assert rx.logins == [] and rx.messages == []
        assert rec["response"]["code"] == 451
        assert "verified certificate" in rec["response"]["content"]
