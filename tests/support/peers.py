"""Real SMTP peers from Postfix (smtp-sink, smtp-source) and loopback helpers.

    port = free_port()
    async with SmtpSink(port, dump=tmp_path / "dump") as sink: ...
    await smtp_source(port, messages=1000, sessions=20, size=4096)

Tests needing these tools are skipped (with the reason) when they are not installed;
CI installs them (.ci/run).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import pytest

POSTFIX_BIN = ["/usr/sbin", "/usr/bin"]


def tool(name: str) -> str:
    """The path of a Postfix/Debian tool, or skip the test with a clear reason."""
    path = shutil.which(name, path=":".join(POSTFIX_BIN + ["/usr/local/bin"]))
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install postfix swaks; see .ci/run)")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` right now (bind-then-release)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_on(*hosts: str) -> int:
    """A port free on every one of ``hosts`` (for several MX hosts on one port)."""
    for _ in range(50):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no common free port on {hosts}")


async def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on host:port."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


class SmtpSink:
    """Postfix ``smtp-sink`` on 127.0.0.1:port; ``dump`` writes received mail to a file."""

    def __init__(
        self,
        port: int,
        *,
        dump: Path | None = None,
        extra: list[str] | None = None,
        backlog: int = 256,
    ) -> None:
        self.port = port
        self.dump = dump
        self._args = [tool("smtp-sink"), "-u", "nobody", *(extra or [])]
        if dump is not None:
            # smtp-sink drops privileges to nobody before writing the dump.
            dump.parent.mkdir(parents=True, exist_ok=True)
            dump.parent.chmod(0o777)
            self._args += ["-D", str(dump)]
        self._args += [f"127.0.0.1:{port}", str(backlog)]
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> SmtpSink:
        self.proc = await asyncio.create_subprocess_exec(
            *self._args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        await wait_listening("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()

    def dumped_messages(self) -> list[bytes]:
        """Messages in the -D dump file (each starts with an X-Client-Addr line)."""
        if self.dump is None or not self.dump.exists():
            return []
        parts = self.dump.read_bytes().split(b"X-Client-Addr:")
        return [b"X-Client-Addr:" + p for p in parts[1:]]


async def smtp_source(
    port: int,
    *,
    messages: int,
    sessions: int = 20,
    size: int = 4096,
    sender: str = "src@source.test",
    recipient: str = "user@sink.test",
    timeout: float = 120.0,
) -> None:
    """Run Postfix ``smtp-source`` against 127.0.0.1:port; raises on a non-zero exit."""
    proc = await asyncio.create_subprocess_exec(
        tool("smtp-source"),
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        str(size),
        "-f",
        sender,
        "-t",
        recipient,
        "-M",
        "source.test",
        f"127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"smtp-source exited {proc.returncode}: {err.decode()[-500:]}")
