"""Faults on the accept path: a bad policy value or a stuck spool writer costs one request a
451 / an HTTP error, never the node."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import threading

import aiohttp

from tests.support.node import running_node
from tests.support.receiver import Receiver

AUTH = {"Authorization": aiohttp.encode_basic_auth("alice", "s3cret")}
IDS = re.compile(rb"250 OK ids=[0-9a-f]{32}")

BAD_META_POLICY = """
def register(nimbus):
    @nimbus.on("smtp_server_message_received")
    def received(msg, conn_meta):
        if msg.get_first_named_header_value("Subject") == "bad":
            msg.set_meta("x_tags", {1, 2})
        if msg.get_first_named_header_value("Subject") == "in-place":
            msg.meta["x_raw"] = b"bytes"  # past set_meta's check

    @nimbus.on("http_message_generated")
    def generated(msg, auth_info):
        if msg.get_first_named_header_value("Subject") == "bad":
            msg.set_meta("x_tags", {1, 2})
"""


async def smtp_data(port: int, subject: str) -> bytes:
    """One transaction over raw streams; the DATA reply line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                return line.rstrip(b"\r\n")

    try:
        async with asyncio.timeout(15):
            assert (await reply()).startswith(b"220")
            for command in (b"EHLO c.test\r\n", b"MAIL FROM:<a@src.test>\r\n"):
                writer.write(command)
                assert (await reply()).startswith(b"250")
            writer.write(b"RCPT TO:<b@dst.test>\r\n")
            assert (await reply()).startswith(b"250")
            writer.write(b"DATA\r\n")
            assert (await reply()).startswith(b"354")
            writer.write(f"Subject: {subject}\r\n\r\nbody\r\n.\r\n".encode())
            return await reply()
    finally:
        writer.close()
        await writer.wait_closed()


def sink(rx: Receiver) -> dict:
    return {"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"}


async def test_non_json_meta_in_smtp_policy_is_451_and_the_next_message_is_accepted(
    tmp_path, caplog
):
    """set_meta with a set in smtp_server_message_received: 451 4.3.0 and a log line naming
    the event and key; the next message is accepted and delivered."""
    caplog.set_level(logging.ERROR, logger="nimbus")
    async with Receiver() as rx:
        async with running_node(tmp_path, policy=BAD_META_POLICY, **sink(rx)) as node:
            bad = await smtp_data(node.smtp_port, "bad")
            in_place = await smtp_data(node.smtp_port, "in-place")
            good = await smtp_data(node.smtp_port, "good")
            await rx.wait_for(1)
    assert bad.startswith(b"451 4.3.0"), bad
    assert in_place.startswith(b"451 4.3.0"), in_place
    assert IDS.match(good), good
    failed = [r for r in caplog.records if r.getMessage() == "policy_handler_failed"]
    assert [r.__dict__["event_name"] for r in failed] == ["smtp_server_message_received"]
    assert "meta 'x_tags' is a set" in str(failed[0].exc_info[1])
    not_json = [r for r in caplog.records if r.getMessage() == "policy_meta_not_json"]
    assert [r.__dict__["event_name"] for r in not_json] == ["smtp_server_message_received"]
    assert "meta 'x_raw' is a bytes" in not_json[0].__dict__["error"]


async def test_non_json_meta_in_http_policy_fails_the_recipient_and_the_node_goes_on(
    tmp_path, auth_dir
):
    """set_meta with a set in http_message_generated: that recipient fails with a JSON reason
    naming the key; the next request is accepted and delivered."""
    async with Receiver() as rx:
        async with running_node(
            tmp_path, policy=BAD_META_POLICY, **sink(rx), **{"http.auth_dir": str(auth_dir)}
        ) as node:
            url = f"http://127.0.0.1:{node.http_port}/api/inject/v1"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
                results = []
                for subject in ("bad", "good"):
                    body = {
                        "envelope_sender": "a@src.test",
                        "recipients": [{"email": "b@dst.test"}],
                        "content": f"Subject: {subject}\r\n\r\nhi\r\n",
                    }
                    async with http.post(url, json=body, headers=AUTH) as resp:
                        results.append((resp.status, await resp.json()))
            await rx.wait_for(1)
    (bad_status, bad), (good_status, good) = results
    assert bad_status == 200 and bad["success_count"] == 0 and bad["fail_count"] == 1, bad
    assert "451 4.3.0" in bad["errors"][0] and "x_tags" in bad["errors"][0], bad
    assert good_status == 200 and good["success_count"] == 1, good


class Blocker:
    """A spool op that holds the writer thread until released: a stuck disk."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: sqlite3.Connection) -> None:
        self.started.set()
        self.release.wait(30)


async def test_stuck_spool_writer_gives_451_and_503_within_the_write_timeout(tmp_path, auth_dir):
    """With the spool writer blocked, SMTP DATA gets 451 4.3.0 and an inject 503 with a JSON
    reason, each within spool.write_timeout (plus slack), not a hang; once the writer moves
    on, the node accepts again and the late commits are still delivered."""
    timeout = 0.5
    async with Receiver() as rx:
        async with running_node(
            tmp_path,
            **sink(rx),
            **{"http.auth_dir": str(auth_dir), "spool.write_timeout": timeout},
        ) as node:
            blocker = Blocker()
            node.spool._writer.submit_nowait(blocker)
            assert await asyncio.to_thread(blocker.started.wait, 10)
            loop = asyncio.get_running_loop()
            started = loop.time()
            smtp_reply = await smtp_data(node.smtp_port, "stuck")
            smtp_seconds = loop.time() - started
            body = {
                "envelope_sender": "a@src.test",
                "recipients": [{"email": "b@dst.test"}],
                "content": "Subject: stuck\r\n\r\nhi\r\n",
            }
            url = f"http://127.0.0.1:{node.http_port}/api/inject/v1"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
                started = loop.time()
                async with http.post(url, json=body, headers=AUTH) as resp:
                    http_status, http_body = resp.status, await resp.json()
                http_seconds = loop.time() - started
                blocker.release.set()
                after = await smtp_data(node.smtp_port, "after")
            await rx.wait_for(3)  # the two late commits and the one after
    assert smtp_reply.startswith(b"451 4.3.0"), smtp_reply
    assert http_status == 503 and "spool.write_timeout" in http_body["error"], http_body
    assert timeout <= smtp_seconds < timeout + 2.0, smtp_seconds
    assert timeout <= http_seconds < timeout + 2.0, http_seconds
    assert IDS.match(after), after
