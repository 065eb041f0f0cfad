"""The SMTP listener: aiosmtpd sessions served on the engine's own loop.

Exports:
    SmtpListener      start(host, port) / stop_accepting() / close(); open session count
    SmtpHandler       the aiosmtpd handler: EHLO, MAIL, RCPT, DATA policy and limits

Protocol work (parsing, dot-unstuffing, SIZE, line limits) is aiosmtpd's; this
module decides: relay permission (RFC 5321 §3.6: only ``relay_hosts`` or
authenticated clients), recipient and connection limits, bare-LF refusal (RFC
5321 §2.3.8, the SMTP-smuggling vector), policy events, and the DATA reply,
``250 OK ids=<id> ...``, sent only after the spool commit.

Reply codes used here:
    421 4.3.2  shutting down, or load shedding (new sessions)
    421 4.7.0  too many connections
    421 4.4.2  idle timeout           450 4.3.0 / 451 4.3.0  policy error
    452 4.3.1  spool full             452 4.5.3  too many recipients
    550 5.7.1  relaying denied, or a suppressed recipient (at RCPT for a list entry of
               every tenant; after DATA for a tenant's own entry or a policy override)
    550 5.6.0  bare CR or LF in message data
    500        line too long (aiosmtpd, RFC 5321 §4.5.3.1.6)
    552        message too large (aiosmtpd, RFC 1870)
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import itertools
import logging
import os
import ssl
from collections.abc import Callable, Iterable
from email.utils import formatdate
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from engine.config.settings import Settings
from engine.logs.diagnostics import bind_contextvars, reset_contextvars
from engine.policy.events import (
    GET_LISTENER_DOMAIN,
    SMTP_SERVER_EHLO,
    SMTP_SERVER_MAIL_FROM,
    SMTP_SERVER_MESSAGE_RECEIVED,
    SMTP_SERVER_RCPT_TO,
    PolicyFailure,
    Registry,
    Rejected,
)
from engine.policy.listener_domain import ListenerDomain
from engine.reception.accept import Accepted, Acceptor, Incoming
from engine.reception.auth import Credentials, FailureLimiter, auth_limited_reply
from engine.reception.report_intake import take_reports
from engine.reception.shedding import Shedding
from engine.reception.smtp_session import Refuse, SmtpSession
from engine.records import PeerAddress, Response, new_message_id
from engine.storage.spool import SpoolError, SpoolFull
from engine.suppression.service import Suppressed

__all__ = ["SmtpListener", "SmtpHandler"]

log = logging.getLogger("nimbus.smtp")

SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"


def _reply(resp: Response) -> str:
    return resp.single_line()


def _peer_host_port(session: Session) -> tuple[str, int]:
    """The client's (host, port). aiosmtpd annotates ``Session.peer`` as ``str | None``, but
    it holds the socket's peername tuple (or None before the connection is made)."""
    peer: object = session.peer
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), int(peer[1])
    return "", 0


def _reverse_path(mail_from: str | None) -> str:
    """The sender as stored and relayed: aiosmtpd keeps the null reverse path as the text
    ``<>`` (it must stay truthy there), Nimbus as "" (relayed as ``MAIL FROM:<>``)."""
    return "" if mail_from in (None, "<>") else mail_from


def _report_listeners(envelope: Envelope) -> dict[str, ListenerDomain]:
    """Recipient -> its listener domain, for the recipients whose domain reads reports
    (kept on the transaction's envelope; aiosmtpd makes a new one after each DATA/RSET)."""
    found: dict[str, ListenerDomain] | None = getattr(envelope, "_nimbus_reports", None)
    if found is None:
        found = {}
        setattr(envelope, "_nimbus_reports", found)  # noqa: B010 (aiosmtpd Envelope)
    return found


def _in_networks(
    address: str, networks: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for net in networks:
        net = ipaddress.ip_network(net, strict=False) if isinstance(net, str) else net
        if ip.version == net.version and ip in net:
            return True
    return False


class SmtpHandler:
    """aiosmtpd handler hooks."""

    def __dir__(self) -> list[str]:
        # aiosmtpd looks up handle_*/auth_* hooks with dir()/getmembers() on every new
        # session; list only those (see SmtpSession.__dir__).
        return _HANDLER_HOOKS

    def __init__(
        self,
        *,
        settings: Settings,
        acceptor: Acceptor,
        policy: Callable[[], Registry],
        draining: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._acceptor = acceptor
        self._policy = policy
        self._draining = draining
        self._relay_nets = [
            ipaddress.ip_network(c, strict=False) for c in settings.smtp.relay_hosts
        ]
        self._hostname = settings.effective_hostname

    def _peer(self, session: Session) -> PeerAddress:
        # Asked several times per message: built once per session and EHLO name.
        name = session.host_name or ""
        cached: tuple[str, PeerAddress] | None = getattr(session, "_nimbus_peer", None)
        if cached is not None and cached[0] == name:
            return cached[1]
        host, port = _peer_host_port(session)
        peer = PeerAddress(name=name, addr=f"{host}:{port}")
        setattr(session, "_nimbus_peer", (name, peer))  # noqa: B010 (aiosmtpd Session, untyped slot)
        return peer

    def _may_relay(self, session: Session) -> bool:
        if session.authenticated:
            return True
        return _in_networks(_peer_host_port(session)[0], self._relay_nets)

    def _conn_meta(self, session: Session) -> dict[str, Any]:
        return {
            "received_from": self._peer(session).addr,
            "ehlo_domain": session.host_name,
            "authenticated": bool(session.authenticated),
            "tls": session.ssl is not None,
        }

    def _reject(
        self, session: Session, envelope: Envelope, resp: Response, recipient: str = ""
    ) -> str:
        self._acceptor.log_rejection(
            sender=_reverse_path(envelope.mail_from),
            recipient=recipient,
            response=resp,
            protocol="ESMTP",
            peer=self._peer(session),
        )
        return _reply(resp)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd handles pipelined input correctly but doesn't advertise it (RFC 2920).
        extensions = ["PIPELINING", *(line[4:] for line in responses[1:])]
        try:
            chosen = await self._policy().dispatch(
                SMTP_SERVER_EHLO, hostname, self._conn_meta(session), list(extensions)
            )
        except (Rejected, PolicyFailure) as exc:
            session.host_name = None  # a refused EHLO leaves the session un-greeted
            return [self._reject(session, envelope, exc.response)]
        if chosen is not None:
            extensions = [str(e) for e in chosen]
        lines = [responses[0]] + [f"250-{e}" for e in extensions]
        return (
            [*lines[:-1], "250 " + lines[-1][4:]] if len(lines) > 1 else ["250 " + responses[0][4:]]
        )

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self._draining():
            return SHUTTING_DOWN
        try:
            await self._policy().dispatch(
                SMTP_SERVER_MAIL_FROM, _reverse_path(address), self._conn_meta(session)
            )
        except (Rejected, PolicyFailure) as exc:
            return self._reject(session, envelope, exc.response)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def _relay_allowed(
        self, session: Session, address: str
    ) -> tuple[bool, ListenerDomain | None]:
        """Relay for trusted peers and AUTH; otherwise ask ``get_listener_domain`` about the
        recipient domain (relay_to: we accept mail for it; relay_from: these peers may).
        Also the listener domain, when it reads reports (log_oob / log_arf): asked for
        trusted peers too when the policy answers the event, so a bounce domain reads the
        reports a trusted relay hands in."""
        trusted = self._may_relay(session)
        registry = self._policy()
        if trusted and not registry.has(GET_LISTENER_DOMAIN):
            return True, None
        domain = address.rpartition("@")[2].lower()
        listener = await registry.dispatch(
            GET_LISTENER_DOMAIN, domain, self._settings.smtp.listen, self._conn_meta(session)
        )
        if listener is None:
            return trusted, None
        reads = listener if listener.reads_reports else None
        if trusted or listener.relay_to:
            return True, reads
        peer = _peer_host_port(session)[0]
        return bool(listener.relay_from) and _in_networks(peer, listener.relay_from), reads

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        try:
            allowed, reads = await self._relay_allowed(session, address)
        except (Rejected, PolicyFailure) as exc:
            return self._reject(session, envelope, exc.response, address)
        if not allowed:
            return self._reject(
                session, envelope, Response.parse(550, "5.7.1 Relaying denied"), address
            )
        if len(envelope.rcpt_tos) >= self._settings.smtp.max_recipients:
            return self._reject(
                session, envelope, Response.parse(452, "4.5.3 Too many recipients"), address
            )
        try:
            await self._policy().dispatch(SMTP_SERVER_RCPT_TO, address, self._conn_meta(session))
            suppressions = self._acceptor.suppressions
            if suppressions is not None and not reads:  # a report address is never refused
                await suppressions.check(address, None, self._policy(), at_rcpt=True)
        except (Rejected, PolicyFailure) as exc:
            return self._reject(session, envelope, exc.response, address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        if reads is not None:
            _report_listeners(envelope)[address] = reads
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data: bytes = envelope.original_content or b""
        crlf = data.count(b"\r\n")
        if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
            return self._reject(
                session,
                envelope,
                Response.parse(
                    550,
                    "5.6.0 Message contains a bare CR or LF; lines must end with CRLF "
                    "(RFC 5321 2.3.8)",
                ),
            )
        if self._acceptor.not_ready:
            return SHUTTING_DOWN if self._draining() else "451 4.3.2 Not ready, try again later"
        peer = self._peer(session)
        meta = {
            "reception_protocol": "ESMTP",
            "received_from": peer.addr,
            "received_via": self._settings.smtp.listen,
            "hostname": self._hostname,
            "ehlo_domain": session.host_name,
        }
        if session.authenticated and session.auth_data:
            # KumoMTA's names: the AUTH identity (we have no separate authz identity).
            meta["authn_id"] = meta["authz_id"] = str(session.auth_data)
        intake = take_reports(
            data,
            envelope.rcpt_tos,
            _report_listeners(envelope),
            acceptor=self._acceptor,
            sender=_reverse_path(envelope.mail_from),
            peer=peer,
        )
        dropped = [intake.report_id] if intake.report_id else []
        if not intake.recipients:  # every copy was a report, logged and dropped
            return "250 OK ids=" + " ".join(dropped)
        batch = []
        for rcpt in intake.recipients:
            id = new_message_id()  # also named in this copy's Received: header
            batch.append(
                Incoming(
                    sender=_reverse_path(envelope.mail_from),
                    recipient=rcpt,
                    id=id,
                    meta=dict(meta),
                    data=self._trace_header(session, id, rcpt) + data,
                )
            )
        try:
            results = await self._acceptor.accept(
                batch,
                event=SMTP_SERVER_MESSAGE_RECEIVED,
                event_arg=self._conn_meta(session),
                protocol="ESMTP",
                peer=peer,
                all_or_nothing=True,  # one reply for the DATA: a refusal stores no copy
            )
        except SpoolFull:
            return self._reject(
                session,
                envelope,
                Response.parse(452, "4.3.1 Insufficient system storage, try again later"),
            )
        except SpoolError:
            log.exception("spool_write_failed")
            return self._reject(
                session,
                envelope,
                Response.parse(451, "4.3.0 Local error in processing, try again later"),
            )
        for result in results:  # a refusal is the DATA's one reply; nothing was stored
            if isinstance(result, Suppressed):  # its Rejection record is logged already
                return _reply(result.response)
            if not isinstance(result, Accepted):
                return self._reject(session, envelope, result.response)
        return "250 OK ids=" + " ".join(
            [r.id for r in results if isinstance(r, Accepted)] + dropped
        )

    def _trace_header(self, session: Session, id: str, recipient: str) -> bytes:
        """RFC 5321 §4.4: every SMTP server MUST prepend a Received header."""
        host, _ = _peer_host_port(session)
        with_ = "ESMTP" if session.extended_smtp else "SMTP"
        if session.ssl is not None:
            with_ += "S"
        if session.authenticated:
            with_ += "A"
        return (
            f"Received: from {session.host_name or 'unknown'} ([{host}])\r\n"
            f"\tby {self._hostname} (Nimbus) with {with_} id {id}\r\n"
            f"\tfor <{recipient}>; {formatdate()}\r\n"
        ).encode("utf-8", "replace")


_HANDLER_HOOKS = sorted(n for n in vars(SmtpHandler) if n.startswith(("handle_", "auth_")))
# aiosmtpd calls inspect.signature(handle_EHLO) per session to pick its hook API; a
# precomputed signature makes that a lookup instead of a parse. (The ignore: functions take
# any attribute at runtime, but the typed Callable declares no ``__signature__``.)
SmtpHandler.handle_EHLO.__signature__ = inspect.signature(SmtpHandler.handle_EHLO)  # type: ignore[attr-defined]


def _peer_text(peer: Any) -> str:
    """``host:port`` of a socket peer name (IPv4 or IPv6 tuple); empty when unknown."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "")


# Session ids for diagnostics: a random per-process prefix and a counter. uuid4 per session
# cost ~0.14 ms of a ~3 ms relayed message on a VM (one getrandom syscall each; profiled).
_SESSION_PREFIX = os.urandom(3).hex()
_SESSION_COUNTER = itertools.count(1)


class _Session(SmtpSession):
    """The engine's SMTP session: every line it logs names the session and the peer."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # aiosmtpd creates the session task in connection_made, and a task copies the
        # context it is created in: bound here (and reset for this callback), the ids appear
        # on every diagnostic line of this session and no other. (Wrapping _handle_client
        # instead cost an extra coroutine frame on every resume: ~45 us per message.)
        session_id = f"{_SESSION_PREFIX}{next(_SESSION_COUNTER):06x}"
        self._trace_id = self._trace_id or session_id
        tokens = bind_contextvars(
            smtp_session=session_id, peer=_peer_text(transport.get_extra_info("peername"))
        )
        try:
            super().connection_made(transport)
        finally:
            reset_contextvars(**tokens)


class SmtpListener:
    """One SMTP listening socket and its sessions."""

    def __init__(
        self,
        *,
        settings: Settings,
        acceptor: Acceptor,
        policy: Callable[[], Registry],
        credentials: Credentials,
        on_connection: Callable[[], None] = lambda: None,
        shedding: Callable[[], Shedding | None] = lambda: None,
        auth_limiter: FailureLimiter | None = None,
    ) -> None:
        self._settings = settings
        # Failed AUTH attempts per peer: the same brake (and count) as HTTP basic auth.
        self._auth_limiter = auth_limiter or FailureLimiter.from_settings(settings.http)
        self._on_connection = on_connection
        self._shedding = shedding
        self._draining = False
        self._handler = SmtpHandler(
            settings=settings, acceptor=acceptor, policy=policy, draining=lambda: self._draining
        )
        self._credentials = credentials
        self._tls = self._tls_context()
        self._hostname = settings.effective_hostname
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[SmtpSession] = set()

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    def _tls_context(self) -> ssl.SSLContext | None:
        s = self._settings.smtp
        if not s.tls_certificate:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(s.tls_certificate, s.tls_private_key)
        return ctx

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        peer = session.peer[0] if isinstance(session.peer, tuple) else None
        wait = self._auth_limiter.retry_after(peer)
        if wait:  # refused unchecked: a guesser learns nothing while the bucket is empty
            return AuthResult(success=False, handled=False, message=auth_limited_reply(wait))
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode("utf-8", "replace")
            if self._credentials.check(user, auth_data.password.decode("utf-8", "replace")):
                return AuthResult(success=True, auth_data=user)
        self._auth_limiter.failed(peer)
        return AuthResult(success=False, handled=False)

    def _protocol(self) -> asyncio.BaseProtocol:
        if self._draining:
            return Refuse(SHUTTING_DOWN)
        if self.open_sessions >= self._settings.smtp.max_connections:
            return Refuse("421 4.7.0 Too many connections, try again later")
        shedding = self._shedding()
        if shedding is not None:  # RFC 3463 4.3.2: system not accepting network messages
            return Refuse(f"421 4.3.2 Load shedding ({shedding.reason}), try again later")
        self._on_connection()
        session = _Session(
            self._handler,
            hostname=self._hostname,
            ident="ESMTP Nimbus",
            loop=self._loop,
            data_size_limit=self._settings.smtp.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=self._tls,
            require_starttls=False,
            auth_require_tls=True,
            authenticator=self._authenticate if self._tls else None,
            timeout=self._settings.smtp.idle_timeout,
            on_close=lambda: self._sessions.discard(session),
            data_timeout=self._settings.smtp.data_timeout,
        )
        self._sessions.add(session)
        return session

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> tuple[str, int]:
        """Listen; returns the bound (host, port) (port 0 picks a free one).

        reuse_port: bind with SO_REUSEPORT, so a node's workers share the port and the
        kernel spreads connections over them.
        """
        loop = self._loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            host,
            port,
            backlog=1024,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    def stop_accepting(self) -> None:
        """New sessions get 421 4.3.2; open sessions get it at their next MAIL."""
        self._draining = True

    async def close(self, timeout: float = 5.0) -> None:
        """Stop listening, hang up on sessions still open (called after the drain: their
        clients retry), and wait up to ``timeout`` seconds for the server to let go of them."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        try:
            async with asyncio.timeout(timeout):
                await server.wait_closed()
        except TimeoutError:
            log.warning("smtp_listener_closed_with_open_sessions", extra={"n": len(self._sessions)})
