"""Orderly shutdown (STYLE.md §6): stop listeners, 421 4.3.2 to new work, drain in-flight
deliveries within the deadline, keep the rest spooled for the next start."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiosmtplib
from aiosmtpd.smtp import SMTP

from tests.support.node import NimbusProcess, running_node, write_policy
from tests.support.node import nimbus_process as nimbus

DEADLINE = 10.0

ONE_CONNECTION = """
def register(nimbus):
    @nimbus.on("get_egress_path_config")
    def path(routing_domain, source, site):
        return nimbus.EgressPathConfig(connection_limit=1, enable_tls=nimbus.TlsMode.DISABLED)
"""

TRACE_ID = re.compile(rb"\(Nimbus\) with ESMTP\w* id (\S+)")


class GatedReceiver:
    """An SMTP server in the test's loop whose DATA replies wait until ``gate`` is set.

    ``entered`` is set when the first DATA arrives; ``entered_ids`` lists the Nimbus ids of
    messages whose DATA arrived, ``ids`` those accepted (after the gate).
    """

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.entered_ids: list[str] = []
        self.ids: list[str] = []
        self.port = 0
        self._arrived = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[SMTP] = set()

    async def handle_DATA(self, server: SMTP, session: object, envelope: object) -> str:
        found = TRACE_ID.search(envelope.original_content)  # type: ignore[attr-defined]
        id = found.group(1).decode() if found else "?"
        self.entered_ids.append(id)
        self.entered.set()
        await self.gate.wait()
        self.ids.append(id)
        self._arrived.set()
        return "250 2.0.0 queued"

    def _factory(self) -> SMTP:
        rx = self

        class _Tracked(SMTP):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                rx._sessions.add(self)
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                rx._sessions.discard(self)
                super().connection_lost(error)

        return _Tracked(self, hostname="rx.test", enable_SMTPUTF8=True)

    async def wait_ids(self, ids: set[str], timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not ids <= set(self.ids):
                self._arrived.clear()
                await self._arrived.wait()

    async def __aenter__(self) -> GatedReceiver:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.gate.set()
        assert self._server is not None
        self._server.close()
        tasks = [
            s._handler_coroutine
            for s in self._sessions
            if getattr(s, "_handler_coroutine", None) is not None
        ]
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        await self._server.wait_closed()
        await asyncio.gather(*tasks, return_exceptions=True)


def message(subject: str) -> bytes:
    return f"From: s@src.test\r\nTo: u@dst.test\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()


async def send(port: int, subject: str) -> str:
    """Send one message; returns its id from the ``250 OK ids=<id>`` DATA reply."""
    _, reply = await aiosmtplib.send(
        message(subject),
        sender="s@src.test",
        recipients=["u@dst.test"],
        hostname="127.0.0.1",
        port=port,
        start_tls=False,
    )
    assert reply.startswith("OK ids="), reply
    return reply.removeprefix("OK ids=").split()[0]


def process_env(tmp_path: Path, sink_port: int) -> dict[str, str]:
    policy = write_policy(tmp_path / "policy", ONE_CONNECTION)
    return {
        "NIMBUS_SINK_ENABLED": "true",
        "NIMBUS_SINK_ENDPOINT": f"127.0.0.1:{sink_port}",
        "NIMBUS_POLICY_DIR": str(policy),
        "NIMBUS_SMTP_HOSTNAME": "mta.test",
        "NIMBUS_DELIVERY_SHUTDOWN_DEADLINE": f"{DEADLINE}s",
    }


async def stderr_event(proc: NimbusProcess, event: str, timeout: float = 20.0) -> dict:
    """Wait for the process's first diagnostic line with this ``event``."""
    async with asyncio.timeout(timeout):
        while True:
            for line in proc.stderr_lines:
                if line.get("event") == event:
                    return line
            await asyncio.sleep(0.02)  # tailing the stderr pipe: a poll interval, not a guess


def spooled_ids(tmp_path: Path) -> set[str]:
    conn = sqlite3.connect(tmp_path / "spool" / "spool.db")
    try:
        return {id for (id,) in conn.execute("SELECT id FROM messages")}
    finally:
        conn.close()


async def first_reply(port: int) -> str | None:
    """The first line a new connection to ``port`` gets, or None when it is refused."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return None
    try:
        async with asyncio.timeout(10):
            line = await reader.readline()
            rest = await reader.read()  # the server hangs up after its reply
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert rest == b"", rest
    return line.decode()


# -- a real process and SIGTERM --------------------------------------------------------


async def test_sigterm_while_idle_exits_zero_within_the_deadline(tmp_path):
    """An idle node exits with status 0 well within the shutdown deadline after SIGTERM."""
    async with GatedReceiver() as rx:
        async with nimbus(tmp_path, process_env(tmp_path, rx.port)) as proc:
            started = time.monotonic()
            proc.terminate()
            rc = await proc.wait(timeout=DEADLINE + 5)
            took = time.monotonic() - started
        stopped = [line for line in proc.stderr_lines if line.get("event") == "stopped"]
    assert rc == 0
    assert took < DEADLINE
    assert [line["spooled"] for line in stopped] == [0]


async def test_new_connection_after_sigterm_is_refused_or_gets_421(tmp_path):
    """Once shutdown has begun, a new SMTP connection is refused or answered 421 4.3.2, so no
    new message can be accepted."""
    async with GatedReceiver() as rx:
        async with nimbus(tmp_path, process_env(tmp_path, rx.port)) as proc:
            id = await send(proc.smtp_port, "in flight")  # holds the drain open at the gate
            await rx.entered.wait()
            proc.terminate()
            await stderr_event(proc, "shutting_down")
            reply = await first_reply(proc.smtp_port)
            rx.gate.set()
            assert await proc.wait() == 0
    assert reply is None or reply.startswith("421 4.3.2"), reply
    assert rx.ids == [id]
    receptions = [r for r in proc.records() if r["type"] == "Reception"]
    assert [r["id"] for r in receptions] == [id]


async def test_in_flight_delivery_completes_before_exit(tmp_path):
    """A delivery in progress at SIGTERM is finished (Delivery record) before the node exits 0."""
    async with GatedReceiver() as rx:
        async with nimbus(tmp_path, process_env(tmp_path, rx.port)) as proc:
            ids = [await send(proc.smtp_port, f"m{i}") for i in range(5)]
            await rx.entered.wait()
            proc.terminate()
            await stderr_event(proc, "shutting_down")
            rx.gate.set()
            rc = await proc.wait()
    [in_flight] = rx.entered_ids[:1]
    deliveries = [r for r in proc.records() if r["type"] == "Delivery"]
    assert rc == 0
    assert in_flight == ids[0]
    assert in_flight in {r["id"] for r in deliveries}
    assert in_flight not in spooled_ids(tmp_path)


async def test_messages_not_started_at_sigterm_stay_spooled(tmp_path):
    """Messages waiting for a connection at SIGTERM are not started during the drain: they
    are left in the spool and only the in-flight one is delivered."""
    async with GatedReceiver() as rx:
        async with nimbus(tmp_path, process_env(tmp_path, rx.port)) as proc:
            ids = [await send(proc.smtp_port, f"m{i}") for i in range(5)]
            await rx.entered.wait()
            proc.terminate()
            await stderr_event(proc, "shutting_down")
            rx.gate.set()
            assert await proc.wait() == 0
    deliveries = [r["id"] for r in proc.records() if r["type"] == "Delivery"]
    assert deliveries == ids[:1]
    assert spooled_ids(tmp_path) == set(ids[1:])


async def test_nothing_acknowledged_is_lost_across_a_sigterm_restart(tmp_path):
    """Every message acknowledged before SIGTERM is delivered by the restarted node."""
    async with GatedReceiver() as rx:
        env = process_env(tmp_path, rx.port)
        async with nimbus(tmp_path, env) as proc:
            ids = [await send(proc.smtp_port, f"m{i}") for i in range(5)]
            await rx.entered.wait()
            proc.terminate()
            await stderr_event(proc, "shutting_down")
            rx.gate.set()
            assert await proc.wait() == 0
        async with nimbus(tmp_path, env):
            await rx.wait_ids(set(ids))
    assert set(rx.ids) == set(ids)


# -- in-process: the drain seen from clients ---------------------------------------------


@contextlib.asynccontextmanager
async def draining_node(tmp_path: Path) -> AsyncIterator[tuple[object, aiosmtplib.SMTP]]:
    """A node whose shutdown is held in its drain by a gated delivery, plus an SMTP session
    (after EHLO) that was opened before ``stop()``."""
    async with GatedReceiver() as rx:
        async with running_node(
            tmp_path,
            policy=ONE_CONNECTION,
            **{
                "sink.enabled": True,
                "sink.endpoint": f"127.0.0.1:{rx.port}",
                "delivery.shutdown_deadline": DEADLINE,
            },
        ) as node:
            await send(node.smtp_port, "in flight")
            await rx.entered.wait()
            session = aiosmtplib.SMTP(
                hostname="127.0.0.1", port=node.smtp_port, start_tls=False, timeout=10
            )
            await session.connect()
            await session.ehlo()
            try:
                node.stop()
                yield node, session
            finally:
                session.close()
                rx.gate.set()


async def test_open_session_gets_421_at_next_mail_after_stop(tmp_path):
    """A session opened before shutdown is answered 421 4.3.2 at its next MAIL FROM."""
    async with draining_node(tmp_path) as (node, session):
        reply = await session.execute_command(b"MAIL", b"FROM:<s@src.test>")
    assert (reply.code, reply.message.split()[0]) == (421, "4.3.2")


async def test_liveness_is_503_shutting_down_during_the_drain(tmp_path):
    """While in-flight deliveries drain, the liveness check answers 503 "shutting down"."""
    async with draining_node(tmp_path) as (node, _):
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{node.http_port}/api/check-liveness/v1"
            async with http.get(url) as resp:
                status, text = resp.status, await resp.text()
    assert (status, text) == (503, "shutting down")


async def test_session_still_open_when_the_listener_closes_is_hung_up(tmp_path):
    """A session left open through the drain is hung up when the SMTP listener closes, so
    the node's shutdown leaves no connection behind (it used to wait for the idle timer)."""
    async with running_node(tmp_path) as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.smtp_port)
        try:
            greeting = await reader.readline()
            node.stop()
            async with asyncio.timeout(DEADLINE):
                rest = await reader.read()  # returns at EOF, once the node hangs up
        finally:
            writer.close()
    assert greeting.startswith(b"220")
    assert rest == b""
