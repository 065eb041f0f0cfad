"""A scriptable SMTP receiver for integration tests (aiosmtpd in the test's loop).

    async with Receiver("127.0.0.2", port, rcpt=lambda addr, n: "451 4.3.0 later" if n == 1 else None) as rx:
        ...
        await rx.wait_for(3)          # three messages received (with a timeout)
        rx.messages[0].data           # exact bytes

``rcpt`` / ``data`` callables receive (address-or-recipients, attempt number for that
recipient starting at 1) and return a reply string to refuse, or None to accept.
It counts connections and the peak number of concurrent connections.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from aiosmtpd.smtp import SMTP, Envelope, Session

Script = Callable[[str, int], str | None]


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    peer: str
    tls: bool


class _Handler:
    def __init__(self, rx: Receiver) -> None:
        self.rx = rx

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server, session, envelope, address, options):
        self.rx.mail_froms += 1
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        self.rx.attempts[address] += 1
        if self.rx.rcpt is not None:
            reply = self.rx.rcpt(address, self.rx.attempts[address])
            if reply:
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.rx.data is not None:
            reply = self.rx.data(envelope.rcpt_tos[0], self.rx.attempts[envelope.rcpt_tos[0]])
            if reply:
                return reply
        self.rx.messages.append(
            Received(
                sender=envelope.mail_from,
                recipients=list(envelope.rcpt_tos),
                data=envelope.original_content,
                peer=str(session.peer),
                tls=session.ssl is not None,
            )
        )
        self.rx._arrived.set()
        return "250 2.0.0 queued"


class Receiver:
    """An SMTP server on ``host:port`` (port 0: any free port, see ``.port``)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        rcpt: Script | None = None,
        data: Script | None = None,
        tls_context: ssl.SSLContext | None = None,
        hostname: str = "rx.test",
    ) -> None:
        self.host, self.port = host, port
        self.rcpt, self.data = rcpt, data
        self._tls = tls_context
        self._hostname = hostname
        self.messages: list[Received] = []
        self.attempts: Counter[str] = Counter()
        self.mail_froms = 0
        self.connections = 0
        self.concurrent = 0
        self.peak_concurrent = 0
        self._arrived = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[SMTP] = set()

    def _factory(self) -> SMTP:
        rx = self

        class _Counted(SMTP):
            def connection_made(self, transport):
                if self._original_transport is None and not getattr(self, "_counted", False):
                    self._counted = True
                    rx.connections += 1
                    rx.concurrent += 1
                    rx.peak_concurrent = max(rx.peak_concurrent, rx.concurrent)
                    rx._sessions.add(self)
                super().connection_made(transport)

            def connection_lost(self, error):
                if getattr(self, "_counted", False) and self in rx._sessions:
                    rx.concurrent -= 1
                    rx._sessions.discard(self)
                super().connection_lost(error)

        return _Counted(
            _Handler(self),
            hostname=self._hostname,
            tls_context=self._tls,
            require_starttls=False,
            enable_SMTPUTF8=True,
        )

    async def start(self) -> Receiver:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for session in list(self._sessions):
                if session.transport is not None:
                    session.transport.close()
            tasks = [
                s._handler_coroutine
                for s in self._sessions
                if getattr(s, "_handler_coroutine", None) is not None
            ]
            await self._server.wait_closed()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self._server = None

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Wait until at least ``count`` messages arrived; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.messages
