"""One outbound SMTP connection: open, STARTTLS per policy, deliver one recipient at a time.

Exports:
    SmtpClientConnection   a reusable session to one MX host, wrapping aiosmtplib
    DeliveryError and its subclasses (below)

Exceptions (each carries ``.response: Response`` so callers log them uniformly):

    DeliveryError
     +-- ConnectFailed      refused, connect/banner timeout, banner or EHLO/HELO refused
     +-- TlsRequiredError   the path requires TLS and the peer did not advertise STARTTLS
     +-- TlsFailed          STARTTLS refused or the TLS handshake / verification failed,
     |                      or (DANE) the certificate matched no TLSA record
     |    +-- TlsHandshakeFailed   the handshake itself failed (remember_broken_tls)
     +-- AuthFailed         AUTH PLAIN refused by the peer, or not allowed on this session
     +-- ConnectionLost     a timeout, disconnect or ``421`` during a transaction

A 4xx/5xx reply to MAIL, RCPT or DATA is not an exception: ``send`` returns it.
aiosmtplib's high-level ``sendmail`` hides per-recipient replies, so this module
drives MAIL/RCPT/DATA itself; every network await runs under ``asyncio.timeout``
named by the ``EgressPathConfig`` field for that phase.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import aiosmtplib

from engine.delivery.dane import Tlsa, peer_chain, tlsa_matches, tlsa_name, usable
from engine.delivery.smtp_auth import auth_refusal, plain_initial_response, read_password
from engine.policy.egress import EgressPathConfig, EgressSource, TlsMode
from engine.records import PeerAddress, Response

__all__ = [
    "SmtpClientConnection",
    "DeliveryError",
    "ConnectFailed",
    "TlsRequiredError",
    "TlsFailed",
    "TlsHandshakeFailed",
    "AuthFailed",
    "ConnectionLost",
]

T = TypeVar("T")
TlsContextFactory = Callable[[bool], ssl.SSLContext]
"""Builds a client context; the argument says whether the certificate must be verified."""


class DeliveryError(Exception):
    """A connection-level failure; ``response`` is a (usually synthetic) 4xx reply."""

    def __init__(self, response: Response) -> None:
        super().__init__(str(response))
        self.response = response


class ConnectFailed(DeliveryError):
    """The session could not be opened (TCP, banner, EHLO/HELO)."""


class TlsRequiredError(DeliveryError):
    """TLS is required but the peer did not offer STARTTLS; nothing was sent."""


class TlsFailed(DeliveryError):
    """STARTTLS was refused, or the handshake or certificate verification failed."""


class TlsHandshakeFailed(TlsFailed):
    """STARTTLS was accepted but the handshake or certificate verification failed."""


class AuthFailed(DeliveryError):
    """AUTH PLAIN was refused by the peer, or not attempted (no TLS, unverified)."""


class ConnectionLost(DeliveryError):
    """The session broke mid-use (timeout, disconnect, 421); the connection is unusable."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
        self._port = port
        self._broken = False
        self.peer = PeerAddress(name=host_name, addr=f"{address}:{port}")
        self.deliveries = 0
        self.tls_cipher: str | None = None
        self.tls_protocol_version: str | None = None
        self.tls_verified = False

    @property
    def is_usable(self) -> bool:
        return not self._broken and self._smtp.is_connected

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
                await self._smtp.connect()
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
                await self._timed(command, self._path.ehlo_timeout, self._smtp.ehlo())
            except aiosmtplib.SMTPHeloError as exc:
                if exc.code == 421 or not self._smtp.is_connected:
                    raise
                command = "HELO"
                await self._timed(command, self._path.ehlo_timeout, self._smtp.helo())
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
        reply = await self._command(
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
            async with asyncio.timeout(path.starttls_timeout + path.tls_handshake_timeout):
                await self._smtp.starttls(
                    server_hostname=self._host, tls_context=ctx, timeout=path.tls_handshake_timeout
                )
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

    async def _timed(
        self, phase: str, timeout: float, aw: Awaitable[T], command: str | None = None
    ) -> T:
        """Await ``aw`` under ``timeout``; transport failures become ConnectionLost.

        phase: names the wait in the synthetic reply; command: what the reply answers.
        """
        command = command or phase
        try:
            async with asyncio.timeout(timeout):
                return await aw
        except TimeoutError:
            self._fail()
            raise ConnectionLost(
                Response.parse(
                    451, f"4.4.2 timeout waiting for {phase} reply from {self._host}", command
                )
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code != aiosmtplib.SMTPStatus.invalid_response:
                raise
            error: Exception = exc  # a malformed reply: the session is out of step
        except (
            aiosmtplib.SMTPServerDisconnected,
            aiosmtplib.SMTPTimeoutError,
            ConnectionError,
        ) as exc:
            error = exc
        self._fail()
        raise ConnectionLost(
            Response.parse(
                421, f"4.4.2 {self._host}: connection lost during {phase}: {error}", command
            )
        ) from error

    async def _command(
        self,
        phase: str,
        timeout: float,
        command: str,
        encoding: str = "ascii",
        log_as: str | None = None,
    ) -> Response:
        """Send one command line; return the reply, or raise ConnectionLost on 421.

        log_as: what replies name as their command, when the line carries a secret."""
        shown = log_as or command
        smtp_reply = await self._timed(
            phase,
            timeout,
            self._smtp.execute_command(command.encode(encoding), timeout=None),
            shown,
        )
        response = Response.parse(smtp_reply.code, smtp_reply.message, shown)
        if response.code == 421:  # RFC 5321 3.8: the peer is closing the channel.
            self._fail()
            raise ConnectionLost(response)
        return response

    async def send(self, sender: str, recipient: str, data: bytes) -> Response:
        """Deliver ``data`` (CRLF line endings, not dot-stuffed) to one recipient.

        sender: the reverse-path (``""`` for the null sender); recipient: one address.
        Returns the peer's final reply (MAIL or RCPT refusal, DATA or end-of-data reply),
        with ``command`` set. Raises ConnectionLost on timeouts, disconnects and 421,
        ValueError for an address containing control characters (nothing is sent).
        """
        if _CONTROL.search(sender) or _CONTROL.search(recipient):
            raise ValueError("envelope address contains a control character")
        if not self.is_usable:
            raise ConnectionLost(Response.parse(421, f"4.4.2 {self._host}: connection closed"))
        utf8 = not (sender.isascii() and recipient.isascii())
        if utf8 and not self._smtp.supports_extension("smtputf8"):
            # RFC 6531 3.2: never send a non-ASCII address to a server without SMTPUTF8.
            return Response.parse(550, f"5.6.7 {self._host} does not support SMTPUTF8", "MAIL FROM")
        self.deliveries += 1
        encoding = "utf-8" if utf8 else "ascii"
        reply = await self._command(
            "MAIL FROM",
            self._path.mail_from_timeout,
            self._mail_command(sender, data, utf8),
            encoding,
        )
        if reply.code != 250:
            return await self._reset(reply)
        reply = await self._command(
            "RCPT TO", self._path.rcpt_to_timeout, f"RCPT TO:<{recipient}>", encoding
        )
        if reply.code not in (250, 251):
            return await self._reset(reply)
        return await self._data(data)

    def _mail_command(self, sender: str, data: bytes, utf8: bool) -> str:
        parts = [f"MAIL FROM:<{sender}>"]
        if self._smtp.supports_extension("size"):
            parts.append(f"SIZE={len(data)}")  # RFC 1870
        if not data.isascii() and self._smtp.supports_extension("8bitmime"):
            parts.append("BODY=8BITMIME")  # RFC 6152
        if utf8:
            parts.append("SMTPUTF8")  # RFC 6531
        return " ".join(parts)

    async def _data(self, data: bytes) -> Response:
        reply = await self._command("DATA", self._path.data_timeout, "DATA")
        if reply.code != 354:
            return await self._reset(reply)
        payload = data if data.endswith(b"\r\n") else data + b"\r\n"
        # RFC 5321 4.5.2 transparency; we write directly so the bytes stay exact
        # (aiosmtplib's data() would also re-normalize line endings).
        payload = (b"." if payload.startswith(b".") else b"") + payload.replace(b"\r\n.", b"\r\n..")
        payload += b".\r\n"
        final = await self._timed(
            "end-of-data", self._path.data_dot_timeout, self._write_payload(payload), "DATA"
        )
        response = Response.parse(final.code, final.message, "DATA")
        if response.code == 421:
            self._fail()
            raise ConnectionLost(response)
        return response

    async def _write_payload(self, payload: bytes) -> aiosmtplib.SMTPResponse:
        protocol = self._smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        protocol.write(payload)  # no await before read_response: the reply can't be missed
        return await protocol.read_response(timeout=None)

    async def _reset(self, refusal: Response) -> Response:
        """RSET after a refusal so the connection can take the next transaction."""
        try:
            reply = await self._command("RSET", self._path.rset_timeout, "RSET")
        except ConnectionLost:
            return refusal  # already marked unusable; the refusal is still the answer
        if reply.code != 250:
            self._fail()
        return refusal

    def _fail(self) -> None:
        self._broken = True
        self._smtp.close()

    async def close(self) -> None:
        """QUIT (bounded by ``rset_timeout``, as cheap as RSET) and close; never raises."""
        try:
            if self.is_usable:
                async with asyncio.timeout(self._path.rset_timeout):
                    await self._smtp.quit(timeout=None)
        except Exception:  # noqa: BLE001 - best effort; CancelledError still propagates
            pass
        finally:
            self._broken = True
            self._smtp.close()
