"""The sink's SMTP listener: accept (or script a refusal for) every recipient, discard every body.

Exports:
    SinkListener     start(host, port) -> (host, port) / close(); open session count
    SinkHandler      the aiosmtpd handler: EHLO (adds PIPELINING) and RCPT (the decision)
    SinkMetrics      the sink's counters, served from a Prometheus registry of their own

Each recipient is answered at RCPT time (RFC 5321 §4.1.1.3), so one transaction can get a
different reply per recipient, as from a real mailbox provider. With no responses file
every recipient gets ``250 2.0.0 OK``; otherwise ``Responses.decide`` picks the reply and
its delay. A 421 reply closes the connection afterwards (RFC 5321 §3.8), as mailbox
providers do. DATA bodies are read in bulk (engine.reception.smtp's reader), counted and
dropped; the DATA reply is always ``250 2.0.0 OK discarded``.

Metrics (counted per recipient, as each KumoMTA message has one recipient):
    nimbus_sink_messages_total{result="accepted|deferred|bounced"}   accepted: at end of DATA;
                                                 deferred (4xx) / bounced (5xx): at RCPT
    nimbus_sink_connections_total    nimbus_sink_bytes_total (DATA bytes, as received)
    nimbus_sink_reloads_total{result="ok|error"}

Speed: the per-message cost of aiosmtpd is mostly its address parser (~0.2 ms per
MAIL/RCPT), replaced here by a regex for plain ``<local@domain>``; replies skip aiosmtpd's
debug log and the idle timer is re-armed lazily instead of per command.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from engine.reception.smtp_session import SmtpSession

from .responses import ACCEPT, Responses

__all__ = ["SinkListener", "SinkHandler", "SinkMetrics"]

log = logging.getLogger("nimbus.sink")

_ACCEPTED = ACCEPT.reply()

GetResponses = Callable[[], "Responses | None"]


class SinkMetrics(Collector):
    """The sink's counters, read by a registry of their own at scrape time.

    Plain integers on the hot path (no lock, no label lookup per recipient); ``registry``
    serves them as Prometheus counters.
    """

    def __init__(self) -> None:
        self.accepted = self.deferred = self.bounced = 0
        self.connections = self.bytes = 0
        self.reloads = {"ok": 0, "error": 0}
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def counts(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "deferred": self.deferred,
            "bounced": self.bounced,
            "connections": self.connections,
            "bytes": self.bytes,
        }

    def collect(self) -> Iterable[CounterMetricFamily]:
        messages = CounterMetricFamily(
            "nimbus_sink_messages", "Recipients answered by the sink, by result", labels=["result"]
        )
        for result in ("accepted", "deferred", "bounced"):
            messages.add_metric([result], getattr(self, result))
        yield messages
        yield CounterMetricFamily(
            "nimbus_sink_connections", "SMTP connections accepted", value=self.connections
        )
        yield CounterMetricFamily(
            "nimbus_sink_bytes", "DATA bytes received and discarded", value=self.bytes
        )
        reloads = CounterMetricFamily(
            "nimbus_sink_reloads", "Responses file reloads, by result", labels=["result"]
        )
        for result, n in self.reloads.items():
            reloads.add_metric([result], n)
        yield reloads


class _SinkSession(SmtpSession):
    """An aiosmtpd session that discards DATA and can hang up after a 421 RCPT reply."""

    _dir_cache = None  # this class's own (see SmtpSession.__dir__)
    hang_up = False  # set by the handler when its reply was 421

    def __init__(self, *args: Any, metrics: SinkMetrics, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._metrics = metrics

    async def push(self, status: str | bytes) -> None:
        # aiosmtpd's push, without its debug log call per reply.
        data = status.encode("utf-8") if isinstance(status, str) else status
        self._writer.write(data + b"\r\n")
        await self._writer.drain()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Push the idle deadline back. aiosmtpd cancels and re-creates a timer on every
        command; here one timer per session re-arms itself for the time left."""
        self._deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or self._deadline < handle.when():
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(self._deadline, self._idle_check)

    def _idle_check(self) -> None:
        if self.loop.time() >= self._deadline:
            self._timeout_cb()
        else:
            self._timeout_handle = self.loop.call_at(self._deadline, self._idle_check)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        await super().smtp_RCPT(arg)
        if self.hang_up and self.transport is not None:
            # As aiosmtpd's QUIT: stop reading (pipelined commands are dropped) and close.
            assert self._handler_coroutine is not None
            self._handler_coroutine.cancel()
            self.transport.close()
            await asyncio.sleep(0)  # the cancellation lands here, before any further command

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA (RFC 5321 §4.1.1.4): read the body in bulk, count it, drop it."""
        envelope = self.envelope  # kept: _set_post_data_state below starts a new one
        assert envelope is not None  # aiosmtpd makes one per session before any command
        body, too_much = await self._begin_data(arg)
        if body is None:
            return  # refused before 354, or the connection was lost mid-DATA
        self._set_post_data_state()
        if too_much:
            await self.push("552 5.3.4 Error: Too much mail data")
            return
        metrics = self._metrics
        metrics.accepted += len(envelope.rcpt_tos)
        metrics.bytes += len(body)
        await self.push("250 2.0.0 OK discarded")


class SinkHandler:
    """aiosmtpd handler hooks: EHLO (PIPELINING) and RCPT (the scripted reply)."""

    def __dir__(self) -> list[str]:
        # aiosmtpd finds hooks with dir() on every session; list just ours.
        return ["handle_EHLO", "handle_RCPT"]

    def __init__(self, *, metrics: SinkMetrics, responses: GetResponses) -> None:
        self._metrics = metrics
        self._responses = responses

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd handles pipelined input but doesn't advertise it (RFC 2920).
        return [responses[0], "250-PIPELINING", *responses[1:]]

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        responses = self._responses()
        if responses is None:
            envelope.rcpt_tos.append(address)
            return _ACCEPTED
        rand = random.random
        decision = responses.decide(address, rand=rand(), rand2=rand(), rand3=rand())
        if decision.delay:
            await asyncio.sleep(decision.delay)
        if decision.accepted:
            envelope.rcpt_tos.append(address)
        elif decision.code < 500:
            self._metrics.deferred += 1
            if decision.code == 421 and isinstance(server, _SinkSession):
                server.hang_up = True
        else:
            self._metrics.bounced += 1
        return decision.reply()


# aiosmtpd inspects handle_EHLO's signature per session; make that a lookup. (The ignore:
# functions take any attribute at runtime, but the typed Callable declares no __signature__.)
SinkHandler.handle_EHLO.__signature__ = inspect.signature(SinkHandler.handle_EHLO)  # type: ignore[attr-defined]


class SinkListener:
    """One SMTP listening socket for the sink, and its open sessions."""

    def __init__(
        self,
        *,
        hostname: str,
        responses: GetResponses,
        metrics: SinkMetrics,
        max_message_size: int,
        idle_timeout: float,
    ) -> None:
        self._hostname = hostname
        self._metrics = metrics
        self._handler = SinkHandler(metrics=metrics, responses=responses)
        self._max_size = max_message_size
        self._timeout = idle_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[_SinkSession] = set()

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    def _protocol(self) -> asyncio.BaseProtocol:
        self._metrics.connections += 1
        session = _SinkSession(
            self._handler,
            hostname=self._hostname,
            ident="ESMTP Nimbus sink",
            loop=self._loop,
            data_size_limit=self._max_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=self._timeout,
            on_close=_nothing,
            metrics=self._metrics,
        )
        session._on_close = functools.partial(self._sessions.discard, session)
        self._sessions.add(session)
        return session

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the bound (host, port) (port 0 picks a free one)."""
        loop = self._loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, host, port, backlog=1024, reuse_address=True
        )
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def close(self, timeout: float = 5.0) -> None:
        """Stop listening, hang up on open sessions (their clients will retry), and wait up
        to ``timeout`` seconds for their handlers to end and the server to let go of them."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = []
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
            if session._handler_coroutine is not None:
                tasks.append(session._handler_coroutine)
        try:
            async with asyncio.timeout(timeout):
                if tasks:
                    await asyncio.wait(tasks)
                if server is not None:
                    await server.wait_closed()
        except TimeoutError:
            log.warning("sink listener closed with sessions still open")


def _nothing() -> None:
    pass
