"""A pooled connection the peer closed is not a delivery attempt (issue 9, defect 1).

Each test delivers a first message, so the node keeps the connection pooled (idle for up
to the path's ``idle_timeout``), then makes that connection die: the receiver restarts,
closes it on its own idle timeout, or closes the transport when the second transaction
reaches a chosen command (MAIL, RCPT, DATA, or after the final dot). The second message
must then be delivered at once on a fresh connection (the queue's retry interval is
300 s, so a TransientFailure would hold it for minutes), with ``num_attempts`` 1 and no
TransientFailure record; only a fresh connection failing the same way is a
TransientFailure.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support.node import running_node
from tests.support.receiver import Receiver

RETRY_INTERVAL = 300.0
POLICY = f"""
def register(nimbus):
    @nimbus.on("get_queue_config")
    def queue(domain, tenant, campaign, routing_domain):
        return nimbus.QueueConfig(retry_interval={RETRY_INTERVAL}, max_age=3600)
"""
PROMPT = 10.0
"""Seconds within which the second message must be delivered (the retry interval is 300)."""


def node_for(tmp_path, port: int):
    return running_node(
        tmp_path,
        policy=POLICY,
        **{"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{port}"},
    )


async def inject(node, recipient: str) -> None:
    await aiosmtplib.send(
        f"Subject: {recipient}\r\n\r\nhello\r\n".encode(),
        sender="s@src.test",
        recipients=[recipient],
        hostname="127.0.0.1",
        port=node.smtp_port,
        start_tls=False,
    )


async def delivered(node, recipient: str, timeout: float = PROMPT) -> dict:
    [record] = await node.records.wait(
        lambda r: r["type"] == "Delivery" and r["recipient"] == recipient, timeout=timeout
    )
    return record


def stale_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "pooled_connection_stale"]


class Dropper:
    """An aiosmtpd receiver whose first connection dies at ``phase`` of its second
    transaction (``MAIL``, ``RCPT``, ``DATA``, or ``DOT``: after the final dot, the
    message stored but not acknowledged). ``always``: every transaction after the first
    message dies at ``phase``, on whatever connection (a peer that always drops)."""

    def __init__(self, phase: str, *, always: bool = False) -> None:
        self.phase = phase
        self.always = always
        self.connections = 0
        self.mail_commands = 0
        self.received: list[str] = []
        self.dropped = 0
        self._sessions: list[SMTP] = []
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    def _drops(self, session_index: int, transaction: int, phase: str) -> bool:
        if phase != self.phase:
            return False
        if self.always:
            return bool(self.received)
        return session_index == 1 and transaction == 2 and self.dropped == 0

    def _factory(self) -> SMTP:
        rx = self
        rx.connections += 1
        index = rx.connections

        class Handler:
            async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope):
                rx.received.append(envelope.rcpt_tos[0])
                if rx._drops(index, proto.transactions, "DOT"):
                    rx.dropped += 1
                    server.transport.close()  # stored, but the 250 never leaves
                return "250 2.0.0 queued"

        class Dropping(SMTP):
            transactions = 0

            async def _maybe_drop(self, phase: str) -> bool:
                if rx._drops(index, self.transactions, phase):
                    rx.dropped += 1
                    self.transport.close()
                    return True
                return False

            async def smtp_MAIL(self, arg: str) -> None:
                self.transactions += 1
                rx.mail_commands += 1
                if not await self._maybe_drop("MAIL"):
                    await super().smtp_MAIL(arg)

            async def smtp_RCPT(self, arg: str) -> None:
                if not await self._maybe_drop("RCPT"):
                    await super().smtp_RCPT(arg)

            async def smtp_DATA(self, arg: str) -> None:
                if not await self._maybe_drop("DATA"):
                    await super().smtp_DATA(arg)

        proto = Dropping(Handler(), hostname="rx.test")
        rx._sessions.append(proto)
        return proto

    async def __aenter__(self) -> Dropper:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for session in self._sessions:
            if session.transport is not None:
                session.transport.close()
        await self._server.wait_closed()


async def test_receiver_restart_between_messages_delivers_at_once(tmp_path, caplog):
    """The receiver restarts (every session closed, the same port listening again) while
    the connection is pooled: the next message goes out at once on a new connection."""
    caplog.set_level(logging.INFO, logger="nimbus.ready")
    async with Receiver() as rx, node_for(tmp_path, rx.port) as node:
        await inject(node, "a@dst.test")
        await delivered(node, "a@dst.test")
        await rx.stop()
        await rx.start()  # same port
        started = time.monotonic()
        await inject(node, "b@dst.test")
        second = await delivered(node, "b@dst.test")
        elapsed = time.monotonic() - started
    assert elapsed < PROMPT
    assert second["num_attempts"] == 1
    assert node.records.of("TransientFailure") == []
    assert [m.recipients for m in rx.messages] == [["a@dst.test"], ["b@dst.test"]]
    assert rx.connections == 2
    assert [getattr(r, "phase", None) for r in stale_lines(caplog)] == ["idle"]


async def test_receiver_idle_timeout_shorter_than_ours_delivers_at_once(tmp_path):
    """aiosmtpd closes idle sessions after 0.3 s (with its 421), sooner than our 5 s
    idle_timeout: the next message is not deferred."""

    closed = asyncio.Event()

    sessions: list[SMTP] = []

    class Quick(SMTP):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sessions.append(self)
            super().connection_made(transport)

        def connection_lost(self, error: Exception | None) -> None:
            super().connection_lost(error)
            closed.set()

    class Handler:
        def __init__(self) -> None:
            self.received: list[str] = []

        async def handle_DATA(self, server, session, envelope):
            self.received.append(envelope.rcpt_tos[0])
            return "250 2.0.0 queued"

    handler = Handler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Quick(handler, hostname="rx.test", timeout=0.3), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with node_for(tmp_path, port) as node:
            await inject(node, "a@dst.test")
            await delivered(node, "a@dst.test")
            async with asyncio.timeout(5):
                await closed.wait()  # the receiver timed the pooled session out
            await inject(node, "b@dst.test")
            second = await delivered(node, "b@dst.test")
    finally:
        server.close()
        for session in sessions:
            if session.transport is not None:
                session.transport.close()
        await server.wait_closed()
    assert second["num_attempts"] == 1
    assert node.records.of("TransientFailure") == []
    assert handler.received == ["a@dst.test", "b@dst.test"]


@pytest.mark.parametrize(
    ("phase", "logged", "copies"),
    [
        ("MAIL", "MAIL FROM", 1),
        ("RCPT", "RCPT TO", 1),
        ("DATA", "DATA", 1),
        # After the dot the first copy may have been delivered: retried at once, and the
        # duplicate accepted (as Postfix does).
        ("DOT", "end-of-data", 2),
    ],
)
async def test_pooled_connection_closed_at_phase_is_retried_at_once(
    tmp_path, caplog, phase, logged, copies
):
    caplog.set_level(logging.INFO, logger="nimbus.ready")
    async with Dropper(phase) as rx, node_for(tmp_path, rx.port) as node:
        await inject(node, "a@dst.test")
        await delivered(node, "a@dst.test")
        started = time.monotonic()
        await inject(node, "b@dst.test")
        second = await delivered(node, "b@dst.test")
        elapsed = time.monotonic() - started
    assert rx.dropped == 1
    assert elapsed < PROMPT
    assert second["num_attempts"] == 1
    assert node.records.of("TransientFailure") == []
    assert rx.received == ["a@dst.test"] + ["b@dst.test"] * copies
    assert rx.connections == 2  # the pooled one, then one fresh connection
    [line] = stale_lines(caplog)
    assert getattr(line, "phase", None) == logged


async def test_fresh_connection_dropping_too_is_one_transient_failure(tmp_path):
    """A peer that drops every transaction after the first message: one immediate retry
    on a fresh connection, then an ordinary TransientFailure (no spinning)."""
    async with Dropper("MAIL", always=True) as rx, node_for(tmp_path, rx.port) as node:
        await inject(node, "a@dst.test")
        await delivered(node, "a@dst.test")
        await inject(node, "b@dst.test")
        [failure] = await node.records.wait(
            lambda r: r["type"] == "TransientFailure", timeout=PROMPT
        )
    assert failure["recipient"] == "b@dst.test"
    assert failure["num_attempts"] == 1
    assert rx.mail_commands == 3  # a, then b on the pooled and on the fresh connection
    assert rx.connections == 2
