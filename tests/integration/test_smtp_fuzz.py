"""SMTP under fuzzing (issue 9): the seeded raw-socket fuzzer at CI size, a hypothesis
property of the protocol session over a real listener, and the defect the fuzzer found."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.fuzz_smtp import ANSWER_TIMEOUT, run
from tests.support.node import running_node
from tests.support.receiver import Receiver

REPLY = re.compile(rb"^[2-5][0-9][0-9][ -]")


async def test_fuzzer_1000_sessions(tmp_path):
    """bench/fuzz_smtp.py at n=1,000: every command answered within 5 s, exactly once;
    spooled = answered 250; nothing cut mid-DATA or smuggled is ever delivered."""
    summary = await run(1000, 9, tmp_path, timeout=60)
    assert summary.sessions == 1000
    assert summary.answers == summary.commands > 5000, summary.line()
    assert summary.max_latency < ANSWER_TIMEOUT
    assert summary.ids and summary.cut_tokens and summary.smuggled_tokens  # all were tried
    assert (summary.crashes, summary.extra_answers, summary.refusal_missed) == (0, 0, 0), (
        summary.samples
    )
    assert (summary.spool_mismatch, summary.bad_deliveries, summary.error_logs) == (0, 0, 0), (
        summary.samples
    )


@pytest.mark.parametrize(
    "command",
    [
        b"MAIL FROM:\x00\x00x",
        b"MAIL FROM:<a\x01b@src.test>",
        b"MAIL FROM:<\xff\xfe@src.test>",  # not UTF-8: surrogateescape'd by aiosmtpd
    ],
)
async def test_unsendable_sender_is_553(tmp_path, command):
    async with running_node(tmp_path) as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.smtp_port)
        await reader.readline()
        writer.write(b"EHLO c.test\r\n" + command + b"\r\nQUIT\r\n")
        replies = (await asyncio.wait_for(reader.read(), 10)).split(b"\r\n")
        writer.close()
    assert [r for r in replies if r.startswith((b"553", b"250 2.1.0"))] == [
        b"553 5.1.3 Error: malformed address"
    ]


@pytest.mark.parametrize(
    "recipient", [b"RCPT TO:\x00\x00x", b"RCPT TO:<a\x01b@dst.test>", b"RCPT TO:<r\x7f@dst.test>"]
)
async def test_control_character_recipient_is_553_not_a_retry_loop(tmp_path, recipient):
    """Found by bench/fuzz_smtp.py: RCPT TO with a NUL was accepted, spooled, and every
    delivery attempt failed with ValueError (451 4.3.0 internal error, retried forever)."""
    async with Receiver() as rx:
        settings = {"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"}
        async with running_node(tmp_path, **settings) as node:
            reader, writer = await asyncio.open_connection("127.0.0.1", node.smtp_port)
            await reader.readline()
            writer.write(b"EHLO c.test\r\nMAIL FROM:<s@src.test>\r\n" + recipient + b"\r\nQUIT\r\n")
            replies = (await asyncio.wait_for(reader.read(), 10)).split(b"\r\n")
            writer.close()
    assert b"553 5.1.3 Error: malformed address" in replies


# -- the protocol session as a property ----------------------------------------------

VERBS = st.sampled_from(
    [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"RSET", b"NOOP", b"VRFY", b"HELP", b"DATA",
     b"STARTTLS", b"AUTH", b"BDAT", b"EXPN", b"TURN", b""]
)  # fmt: skip
ARGS = st.sampled_from([b"", b" c.test", b"<s@src.test>", b"<u@dst.test>", b" PLAIN x"]) | (
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b""))
)
ENDING = st.sampled_from([b"\r\n", b"\n", b"\r\r\n"])
LINE = st.builds(lambda v, a, e: v + a + e, VERBS, ARGS, ENDING) | st.builds(
    lambda n, e: b"X" * n + e, st.integers(500, 2100), ENDING
)


def _ends(reply: bytes) -> bool:
    """After this reply the next line is not a command: 221/421 hang up, aiosmtpd's
    "502 5.5.1 Too many unrecognized commands, goodbye." too; 354 starts DATA."""
    return reply[:3] in (b"221", b"421", b"354") or reply.startswith(b"502 5.5.1 Too many")


def _exchange(port: int, lines: list[bytes]) -> list[tuple[bytes, list[bytes]]]:
    """Each line sent alone, with the replies it got (each within ANSWER_TIMEOUT)."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT) as sock:
        stream = sock.makefile("rb")
        assert stream.readline().startswith(b"220")
        for line in lines:
            sock.sendall(line)
            started, replies = time.monotonic(), []
            for _ in range(line.count(b"\n")):  # aiosmtpd ends a command at LF
                while True:
                    reply = stream.readline()
                    if not reply or reply[3:4] != b"-":
                        break
                if not reply:
                    break
                replies.append(reply)
            assert time.monotonic() - started < ANSWER_TIMEOUT
            out.append((line, replies))
            if len(replies) < line.count(b"\n") or _ends(replies[-1]):
                break  # the node hung up, or DATA began: the body is another property
    return out


async def test_every_command_line_gets_one_reply(tmp_path):
    """Any sequence of command lines (real verbs, garbage, NULs, bare CR, over-long
    lines): each LF-terminated line gets exactly one well-formed reply, in time."""
    async with running_node(tmp_path) as node:

        @given(st.lists(LINE, min_size=1, max_size=8))
        def session(lines: list[bytes]) -> None:
            for line, replies in _exchange(node.smtp_port, lines):
                # Fewer replies only when the node said goodbye first (never a silent close).
                assert len(replies) == line.count(b"\n") or (replies and _ends(replies[-1])), (
                    line,
                    replies,
                )
                assert all(REPLY.match(r) for r in replies), replies
                assert not any(r.startswith(b"500 Error: (") for r in replies), replies

        await asyncio.to_thread(session)
