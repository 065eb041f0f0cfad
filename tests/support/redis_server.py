"""RedisServer: a throwaway ``redis-server`` on a free loopback port for integration tests.

Exports:
    RedisServer    async context manager; ``.url``; ``stop()`` / ``start()`` on the same
                   port (an outage and recovery); ``kill()`` (SIGKILL)

    async with RedisServer() as server:
        settings = RedisSettings(url=server.url)
        await server.stop()       # clients now get connection refused
        await server.start()      # back on the same port, with an empty dataset

The server runs without persistence (``--save '' --appendonly no``) in a temporary
directory. Readiness is a PING answered with PONG, polled until a deadline. The test
is skipped when ``redis-server`` is not installed.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import tempfile
import time

import pytest

__all__ = ["RedisServer"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A ``redis-server`` subprocess.

    ready_timeout: seconds to wait for PONG after starting before failing.
    """

    def __init__(self, *, ready_timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self._binary = binary
        self._ready_timeout = ready_timeout
        self.port = _free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="nimbus-redis-")
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        """Start the server (again, on the same port) and wait until it answers PING."""
        if self.running:
            return
        self._proc = await asyncio.create_subprocess_exec(
            self._binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir.name,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await self._wait_ready()

    async def stop(self) -> None:
        """Terminate the server (SIGTERM) and wait for it to exit."""
        await self._end(kill=False)

    async def kill(self) -> None:
        """Kill the server (SIGKILL) and wait for it to exit."""
        await self._end(kill=True)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections hang instead of being refused."""
        if self.running:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a paused server (SIGCONT)."""
        if self.running:
            self._proc.send_signal(signal.SIGCONT)

    async def command(self, *args: str) -> bytes:
        """Send one inline command and return the first reply line (for test set-up)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write((" ".join(args) + "\r\n").encode())
            await writer.drain()
            return await asyncio.wait_for(reader.readline(), 5.0)
        finally:
            writer.close()
            await writer.wait_closed()

    async def __aenter__(self) -> RedisServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()
        self._dir.cleanup()

    async def _end(self, *, kill: bool) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            if kill:
                proc.kill()
            else:
                proc.terminate()
        await asyncio.wait_for(proc.wait(), 10.0)
        self._proc = None

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._ready_timeout
        while True:
            if self._proc is not None and self._proc.returncode is not None:
                raise RuntimeError(
                    f"redis-server exited with {self._proc.returncode} (port {self.port} in use?)"
                )
            try:
                if await self.command("PING") == b"+PONG\r\n":
                    return
            except (TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"redis-server on port {self.port} not ready after {self._ready_timeout}s"
                )
            await asyncio.sleep(0.02)
