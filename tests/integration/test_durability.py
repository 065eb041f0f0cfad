"""Durability across crashes and restarts of a real ``nimbus mta`` process.

Every message acknowledged with ``250 OK ids=<id>`` must be delivered eventually,
whatever happens to the process afterwards (duplicates are allowed, losses are not).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import aiosmtplib

from tests.support.node import NimbusProcess, write_policy
from tests.support.node import nimbus_process as nimbus
from tests.support.peers import free_port
from tests.support.receiver import Receiver

FAST_RETRY = """
def register(nimbus):
    @nimbus.on("get_queue_config")
    def queue(domain, tenant, campaign, routing_domain):
        return nimbus.QueueConfig(retry_interval={retry}, max_retry_interval={cap})
"""

TRACE_ID = re.compile(rb"\(Nimbus\) with ESMTP\w* id (\S+)")


def node_env(
    tmp_path: Path, sink_port: int, *, retry: float = 1.0, cap: float | None = 1.0
) -> dict[str, str]:
    policy = write_policy(tmp_path / "policy", FAST_RETRY.format(retry=retry, cap=cap))
    return {
        "NIMBUS_SINK_ENABLED": "true",
        "NIMBUS_SINK_ENDPOINT": f"127.0.0.1:{sink_port}",
        "NIMBUS_POLICY_DIR": str(policy),
        "NIMBUS_SMTP_HOSTNAME": "mta.test",
        "NIMBUS_DELIVERY_SHUTDOWN_DEADLINE": "5s",
    }


def message(subject: str, lines: int = 16) -> bytes:
    return (
        f"From: s@src.test\r\nTo: u@dst.test\r\nSubject: {subject}\r\n\r\n".encode()
        + (b"x" * 76 + b"\r\n") * lines
    )


def ack_id(reply: str) -> str:
    """The spool id from a ``250 OK ids=<id>`` DATA reply."""
    assert reply.startswith("OK ids="), reply
    return reply.removeprefix("OK ids=").split()[0]


async def send(port: int, subject: str) -> str:
    """Send one message; returns its id from the DATA reply."""
    _, reply = await aiosmtplib.send(
        message(subject),
        sender="s@src.test",
        recipients=["u@dst.test"],
        hostname="127.0.0.1",
        port=port,
        start_tls=False,
    )
    return ack_id(reply)


def delivered_ids(rx: Receiver) -> set[str]:
    """Spool ids of everything ``rx`` received, from the Received header Nimbus prepends."""
    ids = set()
    for m in rx.messages:
        found = TRACE_ID.search(m.data)
        assert found, m.data[:300]
        ids.add(found.group(1).decode())
    return ids


async def wait_delivered(rx: Receiver, ids: set[str], timeout: float = 60.0) -> None:
    """Wait until ``rx`` has received every id in ``ids`` (TimeoutError otherwise)."""
    async with asyncio.timeout(timeout):
        while not ids <= delivered_ids(rx):
            await rx.wait_for(len(rx.messages) + 1, timeout=timeout)


def stderr_event(proc: NimbusProcess, event: str) -> list[dict]:
    return [line for line in proc.stderr_lines if line.get("event") == event]


def spool_rows(spool_dir: Path, table: str = "messages") -> list[sqlite3.Row]:
    conn = sqlite3.connect(spool_dir / "spool.db")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(f"SELECT * FROM {table}").fetchall()
    finally:
        conn.close()


async def inject_until_killed(
    proc: NimbusProcess, kill_after: int, *, senders: int = 20
) -> set[str]:
    """Send from ``senders`` concurrent sessions; SIGKILL ``proc`` after ``kill_after`` acks.

    Returns every id acknowledged with 250, including replies read after the kill.
    """
    acked: set[str] = set()
    enough = asyncio.Event()

    async def sender(n: int) -> None:
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=proc.smtp_port, start_tls=False, timeout=10
        )
        try:
            await smtp.connect()
            for i in range(10_000):
                _, reply = await smtp.sendmail(
                    "s@src.test", ["u@dst.test"], message(f"kill9 {n}-{i}")
                )
                acked.add(ack_id(reply))
                if len(acked) >= kill_after:
                    enough.set()
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, OSError):
            return  # the process died under us
        finally:
            smtp.close()

    tasks = [asyncio.create_task(sender(n)) for n in range(senders)]
    try:
        waiting = asyncio.create_task(enough.wait())
        await asyncio.wait([waiting, *tasks], timeout=60, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        assert enough.is_set(), f"only {len(acked)} acks before the senders stopped"
        for task in tasks:
            if task.done():
                task.result()  # a sender's own failure
        proc.kill9()
        await proc.wait()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return acked


async def test_kill9_mid_stream_loses_no_acknowledged_message_queued_for_retry(tmp_path):
    """SIGKILL during concurrent injection (sink down) loses none of the acknowledged messages:
    the restarted node recovers them from the spool and delivers every one."""
    port = free_port()  # nothing listens here until the restart
    env = node_env(tmp_path, port)
    proc = await NimbusProcess.start(tmp_path, env)
    try:
        acked = await inject_until_killed(proc, kill_after=300)
    finally:
        proc.kill9()
        await proc.wait()
    assert proc.proc.returncode == -9
    async with Receiver("127.0.0.1", port) as rx:
        async with nimbus(tmp_path, env) as restarted:
            [recovered] = stderr_event(restarted, "spool_recovered")
            await wait_delivered(rx, acked)
    assert len(acked) >= 300
    assert recovered["messages"] >= len(acked)
    assert recovered["quarantined"] == 0


async def test_kill9_mid_stream_loses_no_acknowledged_message_while_delivering(tmp_path):
    """SIGKILL while messages are both arriving and being delivered loses none of the
    acknowledged ones (some may be delivered twice)."""
    async with Receiver("127.0.0.1", 0) as rx:
        env = node_env(tmp_path, rx.port)
        proc = await NimbusProcess.start(tmp_path, env)
        try:
            acked = await inject_until_killed(proc, kill_after=300)
        finally:
            proc.kill9()
            await proc.wait()
        async with nimbus(tmp_path, env):
            await wait_delivered(rx, acked)
    assert len(acked) >= 300
    assert acked <= delivered_ids(rx)


async def test_restart_preserves_attempt_count_and_due_time(tmp_path):
    """A deferred message's attempt count and due time survive a SIGTERM restart: the next
    attempt is numbered after the persisted count and does not start before the persisted due."""
    async with Receiver(
        "127.0.0.1", 0, rcpt=lambda addr, n: "451 4.3.0 try later" if n <= 2 else None
    ) as rx:
        env = node_env(tmp_path, rx.port, retry=1.5, cap=None)
        async with nimbus(tmp_path, env) as first:
            id = await send(first.smtp_port, "deferred")
            await first.wait_records(
                lambda r: (
                    r["type"] == "TransientFailure" and r["id"] == id and r["num_attempts"] == 2
                ),
                count=1,
            )
            first.terminate()
            assert await first.wait() == 0
        [row] = spool_rows(tmp_path / "spool")
        async with nimbus(tmp_path, env) as second:
            [delivery] = await second.wait_records(
                lambda r: r["type"] == "Delivery" and r["id"] == id, count=1
            )
    assert (row["id"], row["attempts"]) == (id, 2)
    assert delivery["num_attempts"] == 3
    assert delivery["timestamp"] >= int(row["due"])  # record timestamps are whole seconds
    assert rx.attempts["u@dst.test"] == 3


async def test_corrupt_spool_entry_is_quarantined_and_the_rest_delivered(tmp_path):
    """A spool row whose envelope can't be decoded is moved to the quarantine table and
    logged at start; the node starts anyway and delivers every other message."""
    port = free_port()  # sink down while the messages are spooled
    env = node_env(tmp_path, port)
    async with nimbus(tmp_path, env) as first:
        ids = [await send(first.smtp_port, f"corrupt {i}") for i in range(5)]
        first.terminate()
        assert await first.wait() == 0
    bad = ids[2]
    conn = sqlite3.connect(tmp_path / "spool" / "spool.db")
    with conn:
        conn.execute("UPDATE messages SET envelope = ? WHERE id = ?", ('{"sender": ', bad))
    conn.close()
    async with Receiver("127.0.0.1", port) as rx:
        async with nimbus(tmp_path, env) as second:
            logged = stderr_event(second, "spool_entry_quarantined")
            [recovered] = stderr_event(second, "spool_recovered")
            await wait_delivered(rx, set(ids) - {bad})
            second.terminate()
            assert await second.wait() == 0
    assert [(line["id"], line["level"]) for line in logged] == [(bad, "error")]
    assert (recovered["messages"], recovered["quarantined"]) == (4, 1)
    [quarantined] = spool_rows(tmp_path / "spool", "quarantine")
    assert quarantined["id"] == bad and quarantined["reason"].startswith("JSONDecodeError")
    assert bad not in delivered_ids(rx)
    assert spool_rows(tmp_path / "spool") == []
