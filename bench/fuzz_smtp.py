"""A seeded raw-socket SMTP fuzzer against a live node relaying to a capturing receiver.

Exports:
    SmtpFuzzSummary        sessions, answers, max reply latency, crashes, violations
    plan(rng, index)       pure: one session's actions from a seeded ``random.Random``
    fuzz(port, ...)        async: ``sessions`` seeded sessions against an SMTP port
    run(sessions, seed)    async: a node (sink mode) relaying to a Receiver, fuzzed, then
                           every reception and delivery checked against the answers given
    main()                 ``python -m bench.fuzz_smtp [--sessions 10000] [--seed 9]``

Sessions mix real commands with garbage lines, NULs, bare CR and LF, 8-bit bytes,
2,000-byte lines, DATA cut off by a closed connection, and ``<LF>.<LF>``-style
terminators followed by a second, smuggled transaction (RFC 5321 §4.1.1.4: only
``<CRLF>.<CRLF>`` ends the data; §2.3.8). The rules checked:

- every complete command line is answered within ANSWER_TIMEOUT (5 s). aiosmtpd ends
  a command line at LF (with or without CR), so each LF outside DATA is one command;
  the end of DATA is one command. A connection closed by the node without an answer
  it owed, or a ``500 Error: (SomeException)`` answer (aiosmtpd's catch-all), is a crash;
- exactly one answer per command: an extra one is a smuggled command being answered;
- what is spooled is exactly what got ``250 OK ids=...`` (Reception records = ids);
  a message cut mid-DATA or a smuggled one is never spooled nor delivered (the
  receiver's messages carry only tokens of accepted messages).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.node import running_node
from tests.support.receiver import Receiver

ANSWER_TIMEOUT = 5.0
CONCURRENCY = 25
SAMPLES = 8
_IDS = re.compile(rb"^250 OK ids=([0-9a-f ]+)")
_TOKEN = re.compile(rb"^X-Fuzz-Token: (\S+)\r$", re.MULTILINE)

# An action: ("send", bytes, answers expected) | ("data", body kind) | ("cut", bytes)
Action = tuple[str, bytes | str, int]


@dataclass(slots=True, kw_only=True)
class SmtpFuzzSummary:
    sessions: int = 0
    commands: int = 0
    answers: int = 0
    codes: dict[str, int] = field(default_factory=dict)  # answers by reply code
    max_latency: float = 0.0
    crashes: int = 0  # unanswered commands, dropped connections, aiosmtpd catch-all 500s
    extra_answers: int = 0  # answers to nothing we sent as a command: smuggling
    accepted: dict[str, str] = field(default_factory=dict)  # token -> ids
    cut_tokens: set[str] = field(default_factory=set)
    smuggled_tokens: set[str] = field(default_factory=set)
    ids: set[str] = field(default_factory=set)
    refusal_missed: int = 0  # a bare CR/LF or over-long line body answered 250
    spool_mismatch: int = 0  # Reception records not matching the 250 ids
    bad_deliveries: int = 0  # delivered: a cut, smuggled or unknown token
    error_logs: int = 0
    samples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def note(self, text: str) -> None:
        if len(self.samples) < SAMPLES:
            self.samples.append(text[:400])

    def line(self) -> str:
        return (
            f"sessions={self.sessions} commands={self.commands} answers={self.answers} "
            f"max_reply_latency={self.max_latency * 1000:.0f}ms crashes={self.crashes} "
            f"extra_answers={self.extra_answers} accepted_messages={len(self.ids)} "
            f"cut_data={len(self.cut_tokens)} smuggle_attempts={len(self.smuggled_tokens)} "
            f"refusals_missed={self.refusal_missed} "
            f"spool_mismatches={self.spool_mismatch} bad_deliveries={self.bad_deliveries} "
            f"node_error_logs={self.error_logs} seconds={self.seconds:.1f} "
            f"codes={dict(sorted(self.codes.items()))}"
        )


# -- plans (pure) -------------------------------------------------------------------

_VERBS = [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"RSET", b"NOOP", b"VRFY", b"HELP"]
_ENDINGS = [b"\r\n"] * 6 + [b"\n", b"\r\r\n", b"\n\r\n"]
_SMUGGLE = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r\n\x00.\r\n"]


def _garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))).replace(b"\n", b"")
    if kind == 1:
        return rng.choice(_VERBS) + b"\x00" * rng.randrange(1, 5) + b"x"
    if kind == 2:
        return rng.choice(_VERBS) + b" " + b"A" * 2000  # over the 512/1000-byte limits
    if kind == 3:
        return rng.choice(_VERBS) + b" a\rb"  # a bare CR inside a command
    if kind == 4:
        return b"MAIL FROM:<\xff\xfe@src.test>"  # 8-bit in an address (SMTPUTF8 not asked)
    return rng.choice([b"", b" ", b"\t", b".", b"DATA extra", b"STARTTLS", b"AUTH PLAIN x"])


def _line(body: bytes, ending: bytes) -> Action:
    data = body + ending
    return ("send", data, data.count(b"\n"))


def _body(kind: str, token: str, rng: random.Random) -> tuple[bytes, bool]:
    """(bytes sent after 354, whether they end the data): the message of one kind."""
    head = f"Subject: fuzz\r\nX-Fuzz-Token: {token}\r\n\r\n".encode()
    text = b"line one\r\n..stuffed dot\r\n" * rng.randrange(1, 4)
    if kind == "ok":
        return head + text + b".\r\n", True
    if kind == "long_line":
        return head + b"x" * 2000 + b"\r\n.\r\n", True
    if kind == "bare":
        return head + text + rng.choice([b"bare\nlf\r\n", b"bare\rcr\r\n"]) + b".\r\n", True
    if kind == "smuggle":
        second = (
            b"MAIL FROM:<smuggler@src.test>\r\nRCPT TO:<victim@dst.test>\r\nDATA\r\n"
            + f"Subject: smuggled\r\nX-Fuzz-Token: smuggled-{token}\r\n\r\nhi\r\n".encode()
        )
        return head + text[:-2] + rng.choice(_SMUGGLE) + second + b".\r\n", True
    # cut: the connection closes before <CRLF>.<CRLF>, at a nasty place.
    end = rng.choice([b"", b"\r\n.", b"\r\n.\r", b"x.\r\n", b"\n.\n", b"\r\n\r\n"])
    cut = head + text[: rng.randrange(len(text))] + end
    # A cut may not end the data by chance ("\r\n." + "\r\n\r\n"): keep what precedes.
    return cut.split(b"\r\n.\r\n", 1)[0], False


def plan(rng: random.Random, index: int) -> list[Action]:
    """One session: an optional valid envelope, then a mix of garbage and DATA."""
    actions: list[Action] = []
    if rng.random() < 0.75:
        actions.append(_line(b"EHLO fuzz.test", b"\r\n"))
        actions.append(_line(b"MAIL FROM:<s@src.test>", b"\r\n"))
        for _ in range(rng.randrange(1, 3)):
            actions.append(_line(f"RCPT TO:<r{rng.randrange(9)}@dst.test>".encode(), b"\r\n"))
    for k in range(rng.randrange(1, 6)):
        roll = rng.random()
        if roll < 0.45:
            actions.append(_line(_garbage(rng), rng.choice(_ENDINGS)))
        elif roll < 0.9:
            kind = rng.choice(["ok", "ok", "long_line", "bare", "smuggle", "smuggle", "cut"])
            actions.append(("data", f"{kind}:s{index}-{k}", 0))
            if kind == "cut":
                return actions
            if rng.random() < 0.5:  # a new envelope for the next DATA
                actions.append(_line(b"MAIL FROM:<s@src.test>", b"\r\n"))
                actions.append(_line(b"RCPT TO:<again@dst.test>", b"\r\n"))
        else:
            actions.append(("cut", rng.choice(_VERBS) + b" half a comm", 0))
            return actions
    actions.append(_line(b"QUIT", b"\r\n"))
    return actions


# -- sessions -----------------------------------------------------------------------


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(
        self, sent_at: float, summary: SmtpFuzzSummary, *, banner: bool = False
    ) -> bytes | None:
        """The next (multi-line) reply's last line, None when the node closed first."""
        async with asyncio.timeout(ANSWER_TIMEOUT):
            while True:
                line = await self.reader.readline()
                if not line:
                    return None
                if line[3:4] != b"-":
                    break
        if not banner:
            summary.answers += 1
            code = line[:3].decode(errors="replace")
            summary.codes[code] = summary.codes.get(code, 0) + 1
        summary.max_latency = max(summary.max_latency, time.monotonic() - sent_at)
        return line.rstrip(b"\r\n")

    async def exchange(self, data: bytes, answers: int, summary: SmtpFuzzSummary) -> list[bytes]:
        """Send ``data`` (``answers`` commands) and read that many replies."""
        self.writer.write(data)
        sent_at = time.monotonic()
        summary.commands += answers
        got: list[bytes] = []
        for _ in range(answers):
            line = await self.reply(sent_at, summary)
            if line is None:
                break
            got.append(line)
        return got


def _closing(line: bytes) -> bool:
    """A reply after which the node hangs up (QUIT, timeouts, too many errors)."""
    return line[:3] in (b"221", b"421") or line.startswith(b"502 5.5.1 Too many")


async def _drain(conn: _Conn, summary: SmtpFuzzSummary, where: str) -> None:
    """Anything the node sends beyond what we asked is an answer to a smuggled command."""
    try:
        async with asyncio.timeout(0.05):
            extra = await conn.reader.read(4096)
    except TimeoutError:
        return
    if extra:
        summary.extra_answers += 1
        summary.note(f"extra answer {where}: {extra[:120]!r}")


async def _session(port: int, actions: list[Action], index: int, summary: SmtpFuzzSummary) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = _Conn(reader, writer)
    try:
        banner = await conn.reply(time.monotonic(), summary, banner=True)
        if banner is None or not banner.startswith(b"220"):
            summary.crashes += 1
            summary.note(f"s{index}: banner {banner!r}")
            return
        for action in actions:
            if not await _act(conn, action, index, summary):
                return
    except TimeoutError:
        summary.crashes += 1
        summary.note(f"s{index}: no answer within {ANSWER_TIMEOUT}s")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


async def _act(conn: _Conn, action: Action, index: int, summary: SmtpFuzzSummary) -> bool:
    """Play one action; False ends the session (closed, cut, or QUIT)."""
    kind, payload, answers = action
    if kind == "cut":
        assert isinstance(payload, bytes)
        conn.writer.write(payload)
        await conn.writer.drain()
        return False
    if kind == "send":
        assert isinstance(payload, bytes)
        got = await conn.exchange(payload, answers, summary)
    else:
        assert isinstance(payload, str)
        got = await _data(conn, payload, index, summary)
        if got is None:
            return False
    for line in got:
        if line.startswith(b"500 Error: ("):  # aiosmtpd's catch-all: a handler raised
            summary.crashes += 1
            summary.note(f"s{index}: {line!r}")
        if _closing(line):
            return False
    if len(got) < answers:
        summary.crashes += 1
        summary.note(f"s{index}: closed without answering {payload!r}")
        return False
    return True


async def _data(conn: _Conn, spec: str, index: int, summary: SmtpFuzzSummary) -> list[bytes] | None:
    """DATA and, after 354, a body of the kind in ``spec``; None when the body was cut."""
    kind, token = spec.split(":", 1)
    got = await conn.exchange(b"DATA\r\n", 1, summary)
    if not got or not got[0].startswith(b"354"):
        return got
    body, complete = _body(kind, token, random.Random(token))
    if kind == "smuggle":
        summary.smuggled_tokens.add(f"smuggled-{token}")
    if not complete:
        summary.cut_tokens.add(token)
        conn.writer.write(body)
        await conn.writer.drain()
        return None
    got = await conn.exchange(body, 1, summary)
    if got and (m := _IDS.match(got[0])):
        ids = m.group(1).decode().split()
        summary.accepted[token] = " ".join(ids)
        summary.ids.update(ids)
        if kind in ("bare", "long_line"):
            summary.note(f"s{index}: a {kind} body was accepted: {got[0]!r}")
            summary.refusal_missed += 1
    # A smuggled transaction would be answered too: nothing may follow this one reply.
    await _drain(conn, summary, f"s{index} after DATA {kind}")
    return got


async def fuzz(port: int, *, sessions: int, seed: int) -> SmtpFuzzSummary:
    """``sessions`` sessions, planned from ``seed``, CONCURRENCY at a time."""
    summary = SmtpFuzzSummary()
    started = time.monotonic()
    plans: Iterator[tuple[int, list[Action]]] = (
        (i, plan(random.Random(f"{seed}-{i}"), i)) for i in range(sessions)
    )

    async def worker() -> None:
        for index, actions in plans:
            summary.sessions += 1
            await _session(port, actions, index, summary)

    async with asyncio.TaskGroup() as group:
        for _ in range(CONCURRENCY):
            group.create_task(worker())
    summary.seconds = time.monotonic() - started
    return summary


# -- a live node --------------------------------------------------------------------


class _ErrorCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _verify(summary: SmtpFuzzSummary, receptions: set[str], delivered: list[bytes]) -> None:
    summary.spool_mismatch = len(receptions ^ summary.ids)
    if summary.spool_mismatch:
        summary.note(f"spooled without 250: {sorted(receptions - summary.ids)[:3]}")
        summary.note(f"250 without spool: {sorted(summary.ids - receptions)[:3]}")
    for data in delivered:
        head = data.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        tokens = [t.decode() for t in _TOKEN.findall(head)]
        if len(tokens) != 1 or tokens[0] not in summary.accepted:
            summary.bad_deliveries += 1
            summary.note(f"delivered a message with tokens {tokens}")


async def run(sessions: int, seed: int, workdir: Path, timeout: float = 120.0) -> SmtpFuzzSummary:
    """Fuzz a node in sink mode relaying to a Receiver; then check spool and deliveries."""
    errors = _ErrorCount()
    logging.getLogger().addHandler(errors)
    try:
        async with Receiver() as rx:
            settings = {"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"}
            async with running_node(workdir, **settings) as node:
                summary = await fuzz(node.ports["smtp"], sessions=sessions, seed=seed)
                await rx.wait_for(len(summary.ids), timeout=timeout)
                records = node.records.of("Reception")
            receptions = {r["id"] for r in records}
            _verify(summary, receptions, [m.data for m in rx.messages])
    finally:
        logging.getLogger().removeHandler(errors)
    summary.error_logs = len(errors.records)
    for record in errors.records[:3]:
        summary.note(f"node error log {record.name}: {record.getMessage()}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fuzz-smtp-") as tmp:
        summary = asyncio.run(run(args.sessions, args.seed, Path(tmp), timeout=600))
    print(summary.line())
    for sample in summary.samples:
        print("  " + sample)
    bad = (
        summary.crashes
        + summary.extra_answers
        + summary.refusal_missed
        + summary.spool_mismatch
        + summary.bad_deliveries
        + summary.error_logs
    )
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
