"""The spool's filesystem really fills up (a size-limited tmpfs) while mail is arriving:
SMTP answers 452 4.3.1 and HTTP 503 while it is full, nothing acknowledged is lost, the
node (and its log writer) stays up, and acceptance resumes by itself once space returns."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest

from tests.support.node import running_node

BODY = (b"y" * 76 + b"\r\n") * 260  # about 20 KB
AUTH = "Basic " + base64.b64encode(b"tester:secret").decode()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs mounted under tmp_path (needs root; skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root (CI runs tests/run as root)")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full (ENOSPC); the bytes written."""
    chunk = b"\0" * 65536
    written = 0
    with open(path, "wb", buffering=0) as fh:
        while True:
            try:
                written += fh.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        for size in (4096, 512, 1):  # the last partial blocks too
            while True:
                try:
                    written += fh.write(b"\0" * size)
                except OSError:
                    break
    return written


@contextlib.asynccontextmanager
async def node_on(fs: Path, tmp_path: Path) -> AsyncIterator[Any]:
    auth = tmp_path / "auth"
    auth.mkdir(exist_ok=True)
    (auth / "tester").write_text("secret\n")
    async with running_node(
        tmp_path,
        **{
            "spool.dir": str(fs / "spool"),
            "log.dir": str(fs / "logs"),
            "spool.min_free_space": 0,  # let SQLite itself hit ENOSPC
            "shedding.min_free_disk": 0,  # refuse per message (452), don't shed sessions
            "shedding.min_free_inodes": 0,
            "http.auth_dir": str(auth),
            "sink.enabled": True,
            "sink.endpoint": "127.0.0.1:9",  # nothing listens: messages stay spooled
        },
    ) as node:
        yield node


async def send(
    port: int,
    n: int,
    acked: list[str],
    refused: list[tuple[int, str]],
    on_ack: Callable[[], None] = lambda: None,
) -> None:
    """One session sending ``n`` messages; 250 ids go to ``acked``, refusals to ``refused``."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=20)
    await smtp.connect()
    try:
        for i in range(n):
            message = f"Subject: load {i}\r\n\r\n".encode() + BODY
            try:
                _, reply = await smtp.sendmail("s@src.test", ["u@dst.test"], message)
            except aiosmtplib.SMTPResponseException as exc:
                refused.append((exc.code, exc.message))
                await smtp.rset()
                continue
            acked.append(reply.removeprefix("OK ids=").split()[0])
            on_ack()
    finally:
        smtp.close()


async def inject(port: int) -> tuple[int, Any]:
    request = {
        "envelope_sender": "s@src.test",
        "content": "Subject: http\r\n\r\n" + BODY.decode(),
        "recipients": [{"email": "u@dst.test"}],
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"http://127.0.0.1:{port}/api/inject/v1", json=request, headers={"Authorization": AUTH}
        ) as resp:
            return resp.status, await resp.json()


def spooled_ids(spool: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{spool / 'spool.db'}?mode=ro", uri=True)
    try:
        return {id for (id,) in conn.execute("SELECT id FROM messages")}
    finally:
        conn.close()


async def test_disk_full_during_load_refuses_keeps_and_resumes(small_fs, tmp_path):
    """Filling the spool's filesystem while four sessions send: refusals are 452 4.3.1,
    HTTP is 503, every acknowledged message is spooled, the node stays up, and mail is
    accepted again as soon as the filler is deleted."""
    filler = small_fs / "filler"
    async with node_on(small_fs, tmp_path) as node:
        acked: list[str] = []
        refused: list[tuple[int, str]] = []
        loaded = asyncio.Event()

        def on_ack() -> None:
            if len(acked) >= 20:
                loaded.set()

        senders = [
            asyncio.create_task(send(node.smtp_port, 100, acked, refused, on_ack)) for _ in range(4)
        ]
        async with asyncio.timeout(30):
            await loaded.wait()  # under load: fill while the sessions keep sending
        await asyncio.to_thread(fill, filler)
        await asyncio.gather(*senders)
        # Full now: one more on a fresh session, and one over HTTP.
        after: list[tuple[int, str]] = []
        await send(node.smtp_port, 1, [], after)
        http_full = await inject(node.http_port)
        stored = spooled_ids(small_fs / "spool")
        filler.unlink()
        resumed: list[str] = []
        await send(node.smtp_port, 1, resumed, [])
        http_resumed = await inject(node.http_port)
        dropped = node.logs.dropped
    assert {(code, text.split()[0]) for code, text in refused + after} == {(452, "4.3.1")}
    assert after and acked and refused, (len(acked), len(refused))
    assert set(acked) <= stored
    assert http_full == (503, {"error": "disk is too full"})
    assert len(resumed) == 1
    assert http_resumed[0] == 200 and http_resumed[1]["success_count"] == 1
    assert dropped > 0  # the log writer shared the full disk: records were counted, not fatal
