"""The unit-test guard: tests/unit opens no sockets and starts no processes.

While a unit test is set up, runs and is torn down, these raise ``UnitTestIsolation``:

    socket.socket.connect / connect_ex / bind / sendto   (TCP, UDP, DNS, servers)
    subprocess.Popen, asyncio.create_subprocess_exec / _shell
    multiprocessing processes (ProcessPoolExecutor), os.fork, os.posix_spawn[p]

Nothing is allowed through: a test that needs a socket or a process belongs in
tests/integration. ``socket.socketpair`` stays available because every asyncio loop
makes one for its self-pipe (it neither binds nor connects). The guard is installed
per test phase through ``pytest_runtest_setup/call/teardown``, which pytest calls
only for items under this directory, so integration tests in the same run are not
affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing.process
import os
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest


class UnitTestIsolation(RuntimeError):
    """A unit test tried to open a socket or start a process."""


def _refuse(what: str) -> Any:
    def refuse(*args: object, **kwargs: object) -> Any:
        raise UnitTestIsolation(
            f"tests/unit must not {what}: use the fakes in tests/support/fakes.py, "
            "or move the test to tests/integration"
        )

    return refuse


_GUARDED: list[tuple[Any, str, str]] = [
    (socket.socket, "connect", "connect a socket"),
    (socket.socket, "connect_ex", "connect a socket"),
    (socket.socket, "bind", "bind a socket"),
    (socket.socket, "sendto", "send a datagram"),
    (subprocess.Popen, "__init__", "start a process"),
    (asyncio, "create_subprocess_exec", "start a process"),
    (asyncio, "create_subprocess_shell", "start a process"),
    (multiprocessing.process.BaseProcess, "start", "start a process"),
    (os, "fork", "fork"),
    (os, "posix_spawn", "start a process"),
    (os, "posix_spawnp", "start a process"),
]


@contextlib.contextmanager
def _isolated() -> Iterator[None]:
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in _GUARDED]
    try:
        for owner, name, what in _GUARDED:
            setattr(owner, name, _refuse(what))
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _isolated():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _isolated():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    with _isolated():
        yield
