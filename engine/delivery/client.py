"""One outbound SMTP connection's lifecycle: open, STARTTLS per policy, AUTH, reuse, close.

Exports:
    SmtpClientConnection   a reusable session to one MX host, wrapping aiosmtplib

``open`` connects, reads the banner, says EHLO (or HELO), negotiates TLS per the path's
``enable_tls`` (or, with a DNSSEC-validated TLSA RRset, DANE: TLS mandatory and the
certificate must match a record, RFC 7672) and authenticates; failures raise the errors of
``delivery.errors`` (ConnectFailed, TlsRequiredError, TlsFailed, TlsHandshakeFailed,
AuthFailed). The commands of a transaction (MAIL, RCPT, DATA, RSET) and their timed replies
are ``delivery.commands``; ``send`` runs one transaction there.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import ipaddress
import socket
import ssl
from collections.abc import Callable, Sequence

import aiosmtplib

from engine.delivery.commands import SmtpCommands
from engine.delivery.dane import Tlsa, peer_chain, tlsa_matches, tlsa_name, usable
from engine.delivery.errors import (
    AuthFailed,
    ConnectFailed,
    ConnectionLost,
    TlsFailed,
    TlsHandshakeFailed,
    TlsRequiredError,
)
from engine.delivery.smtp_auth import auth_refusal, plain_initial_response, read_password
from engine.policy.egress import EgressPathConfig, EgressSource, TlsMode
from engine.records import PeerAddress, Response
from engine.trace import CLIENT_TRACES

__all__ = ["SmtpClientConnection"]

TlsContextFactory = Callable[[bool], ssl.SSLContext]
"""Builds a client context; the argument says whether the certificate must be verified."""


@functools.cache
def _default_tls_context(verify: bool) -> ssl.SSLContext:
    """System CA store plus hostname check when ``verify``; otherwise accept any cert."""
    if verify:
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _connect_socket(address: str, port: int, source: str | None) -> socket.socket:
    """A connected non-blocking TCP socket; ``address`` must be an IP literal."""
    ip = ipaddress.ip_address(address)
    sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET)
    try:
        sock.setblocking(False)
        if source:
            sock.bind((source, 0))
        await asyncio.get_running_loop().sock_connect(sock, (address, port))
    except BaseException:
        sock.close()
        raise
    return sock


class SmtpClientConnection:
    """An open SMTP session to one host, reused for many single-recipient transactions.

    peer: the MX name and ``address:port``. deliveries: transactions attempted.
    tls_cipher / tls_protocol_version: negotiated TLS, or None for plaintext.
    """

    def __init__(
        self,
        smtp: aiosmtplib.SMTP,
        *,
        host_name: str,
        address: str,
        port: int,
        path: EgressPathConfig,
    ) -> None:
        self._smtp = smtp
        self._path = path
        self._host = host_name
        self._commands = SmtpCommands(smtp, host=host_name, path=path)
        self._commands.peer_addr = f"{address}:{port}"
        self._port = port
        self.peer = PeerAddress(name=host_name, addr=f"{address}:{port}")
        self.tls_cipher: str | None = None
        self.tls_protocol_version: str | None = None
        self.tls_verified = False

    @property
    def is_usable(self) -> bool:
        return self._commands.usable

    @property
    def deliveries(self) -> int:
        """Transactions attempted on this session."""
        return self._commands.transactions

    @classmethod
    async def open(
        cls,
        *,
        host_name: str,
        address: str,
        port: int,
        path: EgressPathConfig,
        source: EgressSource,
        ehlo_domain: str,
        tls_context_factory: TlsContextFactory | None = None,
        tlsa: Sequence[Tlsa] | None = None,
    ) -> SmtpClientConnection:
        """Connect, read the banner, EHLO (or HELO), STARTTLS per ``path.enable_tls``,
        and AUTH PLAIN when ``path.smtp_auth_plain_username`` is set.

        host_name: the MX name, used for SNI and certificate verification.
        address, port: the IP literal and port to connect to.
        source: binds ``source.source_address`` when set.
        ehlo_domain: our name in EHLO/HELO.
        tls_context_factory: ``(verify) -> SSLContext``; default: system CAs / no checks.
        tlsa: the host's DNSSEC-validated TLSA RRset, when DANE applies (RFC 7672): TLS
            is then mandatory whatever ``enable_tls`` says, authenticated by the records.
        Raises ConnectFailed, TlsRequiredError, TlsFailed or AuthFailed; nothing is left
        open then.
        """
        target = f"{host_name}[{address}]:{port}"
        try:
            async with asyncio.timeout(path.connect_timeout):
                sock = await _connect_socket(address, port, source.source_address)
        except TimeoutError:
            raise ConnectFailed(
                Response.parse(421, f"4.4.1 {target}: timeout connecting")
            ) from None
        except OSError as exc:
            raise ConnectFailed(
                Response.parse(421, f"4.4.1 {target}: connection failed: {exc}")
            ) from exc
        # aiosmtplib: timeout=None because asyncio.timeout bounds every phase here;
        # start_tls=False so it does not EHLO/STARTTLS on its own.
        smtp = aiosmtplib.SMTP(
            hostname=address, local_hostname=ehlo_domain, timeout=None, start_tls=False, sock=sock
        )
        conn = cls(smtp, host_name=host_name, address=address, port=port, path=path)
        try:
            await conn._read_banner(target)
        except BaseException:
            # Nothing was written yet, so closing the fd now is safe even if a
            # transport owns it (its later close is idempotent).
            sock.close()
            raise
        try:
            await conn._hello()
            if tlsa is not None:
                await conn._dane_tls(tlsa, tls_context_factory)
            else:
                await conn._negotiate_tls(path.enable_tls, tls_context_factory)
            if path.smtp_auth_plain_username is not None:
                await conn._authenticate(path.smtp_auth_plain_username)
        except (TlsRequiredError, AuthFailed):
            await conn.close()  # QUIT before any MAIL FROM: never send in plaintext.
            raise
        except BaseException:
            smtp.close()
            raise
        return conn

    async def _read_banner(self, target: str) -> None:
        try:
            async with asyncio.timeout(self._path.banner_timeout):
                banner = await self._smtp.connect()
            if CLIENT_TRACES.active:
                self._commands.trace("connected")
                self._commands.trace("read", f"{banner.code} {banner.message}\r\n")
        except TimeoutError:
            raise ConnectFailed(
                Response.parse(421, f"4.4.1 {target}: timeout waiting for banner")
            ) from None
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise ConnectFailed(Response.parse(exc.code, exc.message)) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise ConnectFailed(
                Response.parse(421, f"4.4.1 {target}: connection lost before banner: {exc}")
            ) from exc

    async def _hello(self) -> None:
        """EHLO, falling back to HELO when EHLO is refused (RFC 5321 4.1.4)."""
        command = "EHLO"
        try:
            try:
                self._commands.trace("write", f"EHLO {self._smtp.local_hostname}\r\n")
                reply = await self._commands.timed(
                    command, self._path.ehlo_timeout, self._smtp.ehlo()
                )
                self._commands.trace("read", f"{reply.code} {reply.message}\r\n")
            except aiosmtplib.SMTPHeloError as exc:
                if exc.code == 421 or not self._smtp.is_connected:
                    raise
                command = "HELO"
                await self._commands.timed(command, self._path.ehlo_timeout, self._smtp.helo())
        except aiosmtplib.SMTPHeloError as exc:
            raise ConnectFailed(Response.parse(exc.code, exc.message, command)) from exc
        except ConnectionLost as exc:
            raise ConnectFailed(exc.response) from exc

    async def _negotiate_tls(self, mode: TlsMode, factory: TlsContextFactory | None) -> None:
        if mode is TlsMode.DISABLED:
            return
        if not self._smtp.supports_extension("starttls"):
            if mode.requires_tls:
                raise TlsRequiredError(
                    Response.parse(
                        451, f"4.7.5 TLS required but not advertised by {self._host}", "EHLO"
                    )
                )
            return
        verify = mode.verifies_certificate
        ctx = factory(verify) if factory else await asyncio.to_thread(_default_tls_context, verify)
        try:
            await self._starttls(ctx)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421 or mode.requires_tls:
                raise TlsFailed(
                    Response.parse(
                        451,
                        f"4.7.5 STARTTLS refused by {self._host}: {exc.code} {exc.message}",
                        "STARTTLS",
                    )
                ) from exc
            return  # RFC 3207 4: opportunistic, so carry on in plaintext.
        cipher = self._smtp.get_transport_info("cipher")
        if cipher:
            self.tls_cipher, self.tls_protocol_version = cipher[0], cipher[1]
        self.tls_verified = verify
        await self._hello()  # RFC 3207 4.2: forget pre-TLS EHLO state.

    async def _dane_tls(self, tlsa: Sequence[Tlsa], factory: TlsContextFactory | None) -> None:
        """RFC 7672 §2.2: a validated TLSA RRset makes STARTTLS mandatory (no downgrade when
        it is missing, refused or fails) and the chain must match a usable record; with
        none usable the session is encrypted but not authenticated (§3). DANE replaces
        PKIX, so the context does not verify; names matter only for DANE-TA (§3.2.2)."""
        host = self._host
        if not self._smtp.supports_extension("starttls"):
            raise TlsRequiredError(
                Response.parse(
                    451, f"4.7.5 DANE: {host} has TLSA records but offers no STARTTLS", "EHLO"
                )
            )
        ctx = factory(False) if factory else await asyncio.to_thread(_default_tls_context, False)
        try:
            await self._starttls(ctx)
        except aiosmtplib.SMTPResponseException as exc:
            raise TlsFailed(
                Response.parse(
                    451, f"4.7.5 DANE: STARTTLS refused by {host}: {exc.code}", "STARTTLS"
                )
            ) from exc
        except TlsHandshakeFailed as exc:  # a TlsFailed, so never the plaintext fallback
            raise TlsFailed(exc.response) from exc
        records = usable(tlsa)
        now = datetime.datetime.now(datetime.UTC)
        if records and not tlsa_matches(
            peer_chain(self._smtp.get_transport_info("ssl_object")), records, host=host, now=now
        ):
            self._smtp.close()
            raise TlsFailed(
                Response.parse(
                    451,
                    f"4.7.5 DANE: the certificate of {host} matches no TLSA record of "
                    f"{tlsa_name(host, self._port)}",
                    "STARTTLS",
                )
            )
        cipher = self._smtp.get_transport_info("cipher")
        if cipher:
            self.tls_cipher, self.tls_protocol_version = cipher[0], cipher[1]
        self.tls_verified = bool(records)
        await self._hello()  # RFC 3207 4.2

    async def _authenticate(self, username: str) -> None:
        """AUTH PLAIN with the initial response (RFC 4954 4); 235 means authenticated."""
        refusal = auth_refusal(
            self._path, host=self._host, tls=self.tls_cipher is not None, verified=self.tls_verified
        )
        if refusal is not None:
            raise AuthFailed(refusal)
        try:
            password = await asyncio.to_thread(read_password, self._path.smtp_auth_plain_password)
        except (OSError, ValueError) as exc:
            raise AuthFailed(
                Response.parse(451, f"4.7.0 smtp_auth_plain_password: {exc}", "AUTH")
            ) from None
        reply = await self._commands.command(
            "AUTH",
            self._path.auth_timeout,
            f"AUTH PLAIN {plain_initial_response(username, password)}",
            log_as="AUTH PLAIN",  # never the credential in a log record
        )
        if reply.code != 235:
            raise AuthFailed(reply)

    async def _starttls(self, ctx: ssl.SSLContext) -> None:
        """STARTTLS and handshake; a handshake failure fails this host (no plaintext retry
        here: ``remember_broken_tls`` is the ready queue's).

        aiosmtplib reads the 220 and runs the handshake in one call with one timeout, so
        ``tls_handshake_timeout`` bounds the handshake (and the reply) there and the
        whole exchange is bounded by ``starttls_timeout + tls_handshake_timeout``.
        """
        detail: object
        path = self._path
        try:
            self._commands.trace("write", "STARTTLS\r\n")
            async with asyncio.timeout(path.starttls_timeout + path.tls_handshake_timeout):
                reply = await self._smtp.starttls(
                    server_hostname=self._host, tls_context=ctx, timeout=path.tls_handshake_timeout
                )
            self._commands.trace("read", f"{reply.code} {reply.message} (TLS established)\r\n")
            return
        except aiosmtplib.SMTPResponseException:
            raise  # STARTTLS refused: the caller decides (plaintext or TlsFailed)
        except TimeoutError:
            detail = "timeout"
        except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
            detail = exc
        self._smtp.close()
        raise TlsHandshakeFailed(
            Response.parse(
                451, f"4.7.5 TLS handshake with {self._host} failed: {detail}", "STARTTLS"
            )
        )

    async def send(self, sender: str, recipient: str, data: bytes) -> Response:
        """One transaction (``SmtpCommands.transaction``): the peer's final reply.

        Raises ConnectionLost on timeouts, disconnects and 421, ValueError for an
        address containing control characters (nothing is sent).
        """
        return await self._commands.transaction(sender, recipient, data)

    async def close(self) -> None:
        """QUIT (bounded by ``rset_timeout``, as cheap as RSET) and close; never raises."""
        try:
            if self.is_usable:
                async with asyncio.timeout(self._path.rset_timeout):
                    await self._smtp.quit(timeout=None)
        except Exception:  # noqa: BLE001 - best effort; CancelledError still propagates
            pass
        finally:
            self._commands.fail()
            self._commands.trace("closed")
