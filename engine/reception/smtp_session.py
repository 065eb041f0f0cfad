"""The SMTP protocol session: aiosmtpd's ``SMTP`` with the engine's protocol-level changes.

Exports:
    SmtpSession      bulk DATA reading (keeps pipelined bytes), a fast path for plain
                     ``<local@domain>`` addresses (and 553 for control characters or
                     undecodable bytes in any other), ``421 4.4.2`` on idle timeout, the DATA
                     body under its own timeout, cheap per-connection introspection
    Refuse           a protocol that sends one reply line and hangs up (421 refusals)
    SIMPLE_ADDRESS   the regex of the plain-address fast path

Protocol only: what to accept is decided by the handler (``engine.reception.smtp``) and,
for the sink, by ``sink.server``; both build on this class.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable
from typing import Any, Protocol, cast

from aiosmtpd.smtp import MISSING, SMTP, syntax

from engine.trace import SERVER_TRACES, trace_event

__all__ = ["SmtpSession", "Refuse", "SIMPLE_ADDRESS"]

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9-]+"
SIMPLE_ADDRESS = re.compile(
    rf"<({_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*)>(?:\s+(.*))?\Z", re.DOTALL
)

# What aiosmtpd's general parser lets through but no address may hold: control characters
# (RFC 5321 §4.1.2: quoted-pairSMTP and qtextSMTP are %d32-126; RFC 6531 §3.3 adds only
# UTF-8) and the lone surrogates that bytes which are not UTF-8 become (surrogateescape).
# Accepted, they failed every delivery attempt (found by bench/fuzz_smtp.py).
_UNSENDABLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_SESSION_IDS = itertools.count(1)


class _LimitedReader(Protocol):
    """The part of ``asyncio.StreamReader`` the bulk DATA read uses, including its line limit
    ``_limit``: asyncio has no public way to change it after construction, and typeshed
    leaves the private attribute out, so the reader is seen through this Protocol."""

    _limit: int

    async def readuntil(self, separator: bytes = ...) -> bytes: ...

    async def read(self, n: int = ...) -> bytes: ...


def _stream(transport: asyncio.BaseTransport) -> asyncio.WriteTransport:
    """A server connection's transport, seen as the stream transport it is. Not narrowed
    with isinstance: uvloop's transports (the CLI's loop) don't subclass asyncio's ABCs."""
    return cast(asyncio.WriteTransport, transport)


class Refuse(asyncio.Protocol):
    """Answers one line (421) and hangs up: over the connection limit, or draining."""

    def __init__(self, line: str) -> None:
        self._line = line

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _stream(transport).write(self._line.encode() + b"\r\n")
        transport.close()


class SmtpSession(SMTP):
    """aiosmtpd's SMTP with an RFC 5321 §4.5.3.2 reply on idle timeout and session counting."""

    _dir_cache: list[str] | None = None
    _trace_id = ""  # names the session in traces (``_Session`` uses its log session id)
    _trace_opened = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """``(address, rest)`` of a MAIL/RCPT argument. The common ``<local@domain>``
        (dot-atoms, RFC 5321 §4.1.2) is matched by one regex: aiosmtpd's general parser
        (email's header parser plus a Protocol class built per call) costs ~0.2 ms per
        address — ~0.4 ms of every message. Anything else goes to aiosmtpd's parser."""
        m = SIMPLE_ADDRESS.match(arg)
        if m is None or self.local_part_limit:
            address, rest = super()._getaddr(arg)
            if address and _UNSENDABLE.search(address):
                return None, None  # 553 5.1.3 malformed address
            return address, rest
        return m.group(1), m.group(2) or ""

    def __init__(
        self, *args: Any, on_close: Callable[[], None], data_timeout: float = 600.0, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self._on_close: Callable[[], None] | None = on_close
        self._data_timeout = data_timeout

    def __dir__(self) -> list[str]:
        # aiosmtpd's __init__ runs inspect.getmembers(self) and dir(self) on every
        # connection only to find its smtp_*/auth_* methods: ~0.6 ms per session, the
        # largest per-connection cost in a profile. Listing just those names (computed
        # once per class) gives it the same answer cheaply.
        cls = type(self)
        if cls._dir_cache is None:
            cls._dir_cache = [n for n in super().__dir__() if n.startswith(("smtp_", "auth_"))]
        return cls._dir_cache

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA (RFC 5321 §4.1.1.4), reading the body in bulk.

        aiosmtpd reads DATA one line at a time (a readuntil and a debug log call per
        line): for 40 KB messages that was half the node's CPU. Here the body is read
        up to each ``.\r\n`` (normally once per message), checked for line length
        and size, and dot-unstuffed with one ``replace``. Bytes after the terminator
        stay in the reader, so a pipelining client's next MAIL (RFC 2920) is kept.
        """
        body, too_much = await self._begin_data(arg)
        if body is None:
            return  # refused before 354, or the connection was lost mid-DATA
        if too_much:
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()
            return
        if body and max(map(len, body.split(b"\r\n"))) + 2 > self.line_length_limit:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            self._set_post_data_state()
            return
        content = (b"\r\n" + body).replace(b"\r\n.", b"\r\n")[2:]  # RFC 5321 §4.5.2
        assert self.envelope is not None  # aiosmtpd makes one per session before any command
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _begin_data(self, arg: str) -> tuple[bytes | None, bool]:
        """DATA's preconditions (greeting, AUTH, a recipient, no argument), the 354, and the
        body read in bulk: (body, over the size limit). body is None when DATA was refused
        (the reply is sent) or the connection was lost."""
        if await self.check_helo_needed():
            return None, False
        if await self.check_auth_needed("DATA"):
            return None, False
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return None, False
        if arg:
            await self.push("501 Syntax: DATA")
            return None, False
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        # The per-command idle timer would cut off a large upload on a slow link; the body
        # gets data_timeout instead (RFC 5321 §4.5.3.2.6: wait ≥ 10 minutes for the end).
        self._reset_timeout(max(self._data_timeout, self._timeout_duration))
        try:
            return await self._read_body()
        finally:
            if self.transport is not None:
                self._reset_timeout()

    async def _read_body(self) -> tuple[bytes | None, bool]:
        """The raw body up to the terminating ``.\r\n`` (excluded), and whether it was
        over ``data_size_limit`` (then its bytes were discarded while reading)."""
        reader = cast(_LimitedReader, self._reader)
        limit = self.data_size_limit or 2**31
        saved = reader._limit  # the reader's line limit; raised for the body only
        reader._limit = limit + 1024
        buf = bytearray()
        too_much = False
        try:
            while True:
                try:
                    buf += await reader.readuntil(b".\r\n")
                except asyncio.LimitOverrunError as exc:
                    chunk = await reader.read(exc.consumed)
                    too_much = True
                    buf = bytearray(chunk[-2:])  # keep only what marks a line start
                    continue
                except asyncio.IncompleteReadError:
                    return None, False
                dot = len(buf) - 3
                if dot == 0 or buf[dot - 2 : dot] == b"\r\n":
                    del buf[dot:]
                    break
                if len(buf) > limit:
                    too_much = True
                    del buf[:-2]
        finally:
            reader._limit = saved
        return (b"" if too_much else bytes(buf)), too_much

    # -- live traces (``nimbus trace-smtp-server``): nothing is built while nobody watches

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._trace_id:
            self._trace_id = f"s{next(_SESSION_IDS)}"
        super().connection_made(transport)  # again after STARTTLS: one "connected" event
        if not self._trace_opened:
            self._trace_opened = True
            if SERVER_TRACES.active:
                SERVER_TRACES.publish(self._trace("connected"))

    def _trace(self, kind: str, data: bytes | str | None = None) -> dict[str, Any]:
        peer = self.session.peer if self.session is not None else None
        addr, port = (peer[0], peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else ("", 0)
        return trace_event(kind, self._trace_id, data=data, peer=f"{addr}:{port}", peer_ip=addr)

    def data_received(self, data: bytes) -> None:
        if SERVER_TRACES.active:
            SERVER_TRACES.publish(self._trace("read", data))
        super().data_received(data)

    async def push(self, status: Any) -> None:
        if SERVER_TRACES.active:
            line = status if isinstance(status, str) else bytes(status).decode("utf-8", "replace")
            SERVER_TRACES.publish(self._trace("write", line + "\r\n"))
        await super().push(status)

    def _timeout_cb(self) -> None:  # aiosmtpd just hangs up; say why first
        transport = self.transport
        if transport is not None and not transport.is_closing():
            reply = f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n"
            _stream(transport).write(reply.encode())
        super()._timeout_cb()

    def connection_lost(self, error: Exception | None) -> None:
        if SERVER_TRACES.active:
            SERVER_TRACES.publish(self._trace("closed"))
        if self._on_close is not None:
            self._on_close()
            self._on_close = None
        super().connection_lost(error)
