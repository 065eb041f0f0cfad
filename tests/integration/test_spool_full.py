"""A full spool (``spool.max_size``) refuses new mail with a temporary error and keeps
everything it already acknowledged."""

from __future__ import annotations

import base64
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib

from tests.support.node import running_node
from tests.support.peers import free_port
from tests.support.receiver import Receiver

FAST_RETRY = """
def register(nimbus):
    @nimbus.on("get_queue_config")
    def queue(domain, tenant, campaign, routing_domain):
        return nimbus.QueueConfig(retry_interval=1, max_retry_interval=1)
"""

TRACE_ID = re.compile(rb"\(Nimbus\) with ESMTP\w* id (\S+)")
BODY = (b"x" * 76 + b"\r\n") * 520  # about 40 KB


@contextlib.asynccontextmanager
async def node_at(tmp_path: Path, sink_port: int) -> AsyncIterator[Any]:
    """A node with a 300 KB spool cap delivering to 127.0.0.1:sink_port."""
    auth = tmp_path / "auth"
    auth.mkdir(exist_ok=True)
    (auth / "tester").write_text("secret\n")
    async with running_node(
        tmp_path,
        policy=FAST_RETRY,
        **{
            "spool.max_size": "300KB",
            "http.auth_dir": str(auth),
            "sink.enabled": True,
            "sink.endpoint": f"127.0.0.1:{sink_port}",
        },
    ) as node:
        yield node


async def fill(node: Any) -> tuple[list[str], aiosmtplib.SMTPResponseException]:
    """Send 40 KB messages on one session until DATA is refused.

    Returns the acknowledged ids and the refusal.
    """
    acked: list[str] = []
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=node.smtp_port, start_tls=False, timeout=10)
    await smtp.connect()
    try:
        for i in range(60):
            message = f"Subject: fill {i}\r\n\r\n".encode() + BODY
            try:
                _, reply = await smtp.sendmail("s@src.test", ["u@dst.test"], message)
            except aiosmtplib.SMTPResponseException as exc:
                return acked, exc
            acked.append(reply.removeprefix("OK ids=").split()[0])
        raise AssertionError(f"the spool never filled up ({len(acked)} messages accepted)")
    finally:
        smtp.close()


def spooled_ids(tmp_path: Path) -> set[str]:
    conn = sqlite3.connect(tmp_path / "spool" / "spool.db")
    try:
        return {id for (id,) in conn.execute("SELECT id FROM messages")}
    finally:
        conn.close()


async def test_data_is_refused_452_when_the_spool_is_full(tmp_path):
    """When the spool reaches max_size, DATA is answered 452 4.3.1 and every message
    acknowledged before that is still spooled."""
    async with node_at(tmp_path, free_port()) as node:
        acked, refusal = await fill(node)
        count = node.spool.count
        stored = spooled_ids(tmp_path)
    assert (refusal.code, refusal.message.split()[0]) == (452, "4.3.1")
    assert len(acked) >= 3
    assert count == len(acked)
    assert stored == set(acked)


async def test_http_inject_is_503_disk_too_full_when_the_spool_is_full(tmp_path):
    """With the spool full, HTTP injection answers 503 {"error": "disk is too full"}."""
    async with node_at(tmp_path, free_port()) as node:
        acked, _ = await fill(node)
        request = {
            "envelope_sender": "s@src.test",
            "template_dialect": "Static",
            "content": "Subject: http\r\n\r\n" + BODY.decode(),
            "recipients": [{"email": "u@dst.test"}],
        }
        auth = "Basic " + base64.b64encode(b"tester:secret").decode()
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"http://127.0.0.1:{node.http_port}/api/inject/v1",
                json=request,
                headers={"Authorization": auth},
            ) as resp:
                status, body = resp.status, await resp.json()
        count = node.spool.count
    assert (status, body) == (503, {"error": "disk is too full"})
    assert count == len(acked)


async def test_node_stays_up_when_the_spool_is_full(tmp_path):
    """A full spool refuses messages but the node keeps serving: liveness is OK and new SMTP
    sessions are greeted."""
    async with node_at(tmp_path, free_port()) as node:
        await fill(node)
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{node.http_port}/api/check-liveness/v1"
            async with http.get(url) as resp:
                liveness = (resp.status, await resp.text())
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=node.smtp_port, start_tls=False, timeout=10
        )
        greeting = await smtp.connect()
        ehlo = await smtp.ehlo()
        await smtp.quit()
    assert liveness == (200, "OK")
    assert greeting.code == 220 and ehlo.code == 250


async def test_messages_acknowledged_before_the_spool_filled_are_delivered(tmp_path):
    """Everything acknowledged while the spool filled up reaches the receiver once it is up
    (after a restart of the node on the same spool)."""
    port = free_port()  # nothing listens while the spool fills
    async with node_at(tmp_path, port) as node:
        acked, _ = await fill(node)
    async with Receiver("127.0.0.1", port) as rx:
        async with node_at(tmp_path, port) as node:
            await node.records.wait(lambda r: r["type"] == "Delivery", count=len(acked))
            remaining = node.spool.count
    delivered = {TRACE_ID.search(m.data).group(1).decode() for m in rx.messages}
    assert delivered == set(acked)
    assert remaining == 0
