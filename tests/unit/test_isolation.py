"""The tests/unit guard (conftest.py) refuses sockets and processes."""

import asyncio
import socket
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest


def test_socket_connect_is_refused() -> None:
    """Connecting a TCP socket raises, even to a loopback address."""
    with socket.socket() as sock, pytest.raises(RuntimeError, match="tests/unit must not"):
        sock.connect(("127.0.0.1", 9))


def test_socket_bind_is_refused() -> None:
    """Binding (a server, a UDP client) raises."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        pytest.raises(RuntimeError, match="tests/unit must not"),
    ):
        sock.bind(("127.0.0.1", 0))


def test_subprocess_is_refused() -> None:
    """subprocess.run goes through Popen, which raises."""
    with pytest.raises(RuntimeError, match="tests/unit must not"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


async def test_asyncio_subprocess_is_refused() -> None:
    """asyncio.create_subprocess_exec raises."""
    with pytest.raises(RuntimeError, match="tests/unit must not"):
        await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")


def test_process_pool_is_refused() -> None:
    """A ProcessPoolExecutor cannot start its workers."""
    with (
        ProcessPoolExecutor(max_workers=1) as pool,
        pytest.raises(RuntimeError, match="tests/unit must not"),
    ):
        pool.submit(int, "1").result(timeout=5)


async def test_event_loop_still_runs() -> None:
    """The loop's self-pipe (socketpair) is allowed: asyncio itself works."""
    assert await asyncio.sleep(0, result=42) == 42
