"""DATA transfer details: transparency (dot-stuffing), pipelining after the dot, edge bodies."""

from __future__ import annotations

import asyncio

import aiosmtplib

from tests.support.node import running_node
from tests.support.receiver import Receiver


async def dialogue(port: int, payload: bytes, replies: int) -> list[bytes]:
    """Send ``payload`` in one write after the greeting; return ``replies`` reply lines."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(10):
            await reader.readline()  # 220
            writer.write(payload)
            await writer.drain()
            out = []
            while len(out) < replies:
                line = await reader.readline()
                if not line:
                    break
                if line[3:4] == b"-":
                    continue  # multi-line EHLO reply
                out.append(line.rstrip(b"\r\n"))
            return out
    finally:
        writer.close()
        await writer.wait_closed()


def sink(rx: Receiver) -> dict:
    return {"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"}


async def test_dot_stuffed_lines_arrive_unstuffed_and_restuffed_correctly(tmp_path):
    """Lines starting with '.' survive both hops exactly (RFC 5321 §4.5.2, both directions)."""
    body = b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n"
    stuffed = b"Subject: dots\r\n\r\n..leading dot\r\n...two dots\r\n..\r\nend\r\n"
    async with Receiver() as rx:
        async with running_node(tmp_path, **sink(rx)) as node:
            replies = await dialogue(
                node.smtp_port,
                b"EHLO c.test\r\nMAIL FROM:<a@src.test>\r\n"
                b"RCPT TO:<b@dst.test>\r\nDATA\r\n" + stuffed + b".\r\n",
                replies=5,
            )
            [msg] = await rx.wait_for(1)
    assert replies[-1].startswith(b"250 OK ids=")
    assert msg.data.endswith(body)  # after our Received: header


async def test_pipelined_command_after_the_dot_is_kept(tmp_path):
    """A second transaction sent right behind the terminating dot (RFC 2920) is answered."""
    async with Receiver() as rx:
        async with running_node(tmp_path, **sink(rx)) as node:
            txn = (
                b"MAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n"
                b"Subject: p\r\n\r\nbody\r\n.\r\n"
            )
            replies = await dialogue(
                node.smtp_port, b"EHLO c.test\r\n" + txn + txn + b"QUIT\r\n", replies=10
            )
            await rx.wait_for(2)
    codes = [r[:3] for r in replies]
    assert codes == [b"250", b"250", b"250", b"354", b"250", b"250", b"250", b"354", b"250", b"221"]


async def test_empty_body_is_accepted(tmp_path):
    """A DATA with no content at all (just the dot) is a valid, empty message."""
    async with Receiver() as rx:
        async with running_node(tmp_path, **sink(rx)) as node:
            replies = await dialogue(
                node.smtp_port,
                b"EHLO c.test\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n.\r\n",
                replies=5,
            )
            [msg] = await rx.wait_for(1)
    assert replies[-1].startswith(b"250 OK ids=")
    assert msg.data.startswith(b"Received: ")


async def test_line_ending_with_a_dot_does_not_end_the_message(tmp_path):
    """A line that merely ends in '.' is body, not the terminator."""
    async with Receiver() as rx:
        async with running_node(tmp_path, **sink(rx)) as node:
            replies = await dialogue(
                node.smtp_port,
                b"EHLO c.test\r\nMAIL FROM:<a@src.test>\r\n"
                b"RCPT TO:<b@dst.test>\r\nDATA\r\nSubject: s\r\n\r\n"
                b"Sentence one.\r\nSentence two.\r\n.\r\n",
                replies=5,
            )
            [msg] = await rx.wait_for(1)
    assert replies[-1].startswith(b"250 OK ids=")
    assert msg.data.endswith(b"\r\n\r\nSentence one.\r\nSentence two.\r\n")


async def test_null_reverse_path_is_relayed_as_the_null_reverse_path(tmp_path):
    """``MAIL FROM:<>`` (a bounce, a DSN) is stored with an empty sender and relayed as
    ``MAIL FROM:<>``; it was kept as the text "<>" and relayed as ``<<>>``, which receivers
    refuse, so every relayed bounce was deferred until it expired."""
    async with Receiver() as rx:
        async with running_node(tmp_path, **sink(rx)) as node:
            replies = await dialogue(
                node.smtp_port,
                b"EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n"
                b"Subject: bounce\r\n\r\nx\r\n.\r\n",
                replies=5,
            )
            [msg] = await rx.wait_for(1)
            [reception] = node.records.of("Reception")
    assert replies[-1].startswith(b"250 OK ids=")
    assert msg.sender == "<>"  # what aiosmtpd makes of MAIL FROM:<>
    assert reception["sender"] == ""


async def test_a_refused_copy_refuses_the_whole_data_and_stores_nothing(tmp_path):
    """One DATA, three recipients, the policy refuses one: the single reply is that
    refusal, and no copy is spooled (a 5xx must not stand for mail that goes out anyway);
    the same recipients one at a time: two are taken."""
    policy = """
        def register(nimbus):
            @nimbus.on("smtp_server_message_received")
            def check(msg, conn_meta):
                if msg.recipient().startswith("no@"):
                    nimbus.reject(550, "5.7.1 not this one")
    """
    async with (
        Receiver() as rx,
        running_node(
            tmp_path,
            policy=policy,
            **{"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"},
        ) as node,
    ):
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=node.smtp_port) as smtp:
            await smtp.mail("a@src.test")
            for rcpt in ("yes1@dst.test", "no@dst.test", "yes2@dst.test"):
                await smtp.rcpt(rcpt)
            refused = None
            try:
                await smtp.data(b"Subject: x\r\n\r\nbody\r\n")
            except aiosmtplib.SMTPDataError as exc:
                refused = (exc.code, exc.message)
            for rcpt in ("yes1@dst.test", "no@dst.test", "yes2@dst.test"):
                try:
                    await smtp.sendmail("a@src.test", [rcpt], b"Subject: y\r\n\r\nbody\r\n")
                except aiosmtplib.SMTPDataError:
                    pass
        await rx.wait_for(2)
        receptions = node.records.of("Reception")
    assert refused == (550, "5.7.1 not this one")
    assert sorted(r["recipient"] for r in receptions) == ["yes1@dst.test", "yes2@dst.test"]
    assert all("Subject: y" in m.data.decode() for m in rx.messages)
