"""Process and port plumbing that every part of the benchmark shares.

Exports:
    BenchError          a trial or setup step failed; the message says what and where to look
    log(msg)            a timestamped progress line on stdout
    run(cmd, ...)       a command with a timeout; BenchError naming the command if it fails
    wait_until(...)     poll a condition until a deadline (other processes: no event to await)
    stop_process(...)   SIGTERM, wait, SIGKILL: only the process we started, by its pid
    stop_and_reap(...)  the same for a child we must reap ourselves, returning its peak RSS
    free_port(), port_open(port), smtp_banner_ok(port)   127.0.0.1 only
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "BenchError",
    "log",
    "run",
    "wait_until",
    "stop_process",
    "stop_and_reap",
    "free_port",
    "port_open",
    "smtp_banner_ok",
]


class BenchError(RuntimeError):
    """A trial or setup step failed; the message says what and where to look."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(
    cmd: list[str], timeout: float = 60, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to completion, capturing its output as text.

    timeout: seconds before the command counts as hung (BenchError).
    check: a non-zero exit is a BenchError carrying the command's stdout and stderr.
    """
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise BenchError(f"command timed out after {timeout}s: {' '.join(cmd)}") from None
    if check and cp.returncode != 0:
        raise BenchError(
            f"command failed (rc={cp.returncode}): {' '.join(cmd)}\n"
            f"stdout: {cp.stdout.strip()}\nstderr: {cp.stderr.strip()}"
        )
    return cp


def wait_until(
    pred: Callable[[], bool],
    deadline_s: float,
    what: str,
    interval: float = 0.05,
    alive: Callable[[], str | None] | None = None,
) -> None:
    """Return once ``pred()`` is true; BenchError after ``deadline_s`` seconds.

    what: named in the timeout error. alive: returns why waiting is pointless (the
    process we wait for exited), checked on every round; that reason is raised at once.
    """
    end = time.monotonic() + deadline_s
    while True:
        if pred():
            return
        if alive is not None:
            dead = alive()
            if dead:
                raise BenchError(f"{what}: {dead}")
        if time.monotonic() > end:
            raise BenchError(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes], name: str, term_timeout: float = 10) -> None:
    """SIGTERM, wait, then SIGKILL: only the process we started, by its pid."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=term_timeout)
    except subprocess.TimeoutExpired:
        log(f"warning: {name} (pid {proc.pid}) ignored SIGTERM for {term_timeout}s; SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def stop_and_reap(
    proc: subprocess.Popen[bytes], name: str, term_timeout: float
) -> tuple[int | None, int | None]:
    """Stop a child like ``stop_process`` but reap it with wait4 to read its rusage.

    Returns (exit code, peak RSS in KiB): ``ru_maxrss`` of wait4 is the kernel's own
    high-water mark of the child (max with its reaped children, which are smaller here),
    so it cannot miss a short spike the way a sampled maximum can. (None, None) if the
    child was already reaped elsewhere.
    """
    if proc.returncode is not None:
        return proc.returncode, None
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + term_timeout
    while True:
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return proc.poll(), None
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss  # KiB on Linux
        if time.monotonic() > end:
            log(f"warning: {name} (pid {proc.pid}) ignored SIGTERM for {term_timeout}s; SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            end = time.monotonic() + 10
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def smtp_banner_ok(port: int) -> bool:
    """True when something on 127.0.0.1:port answers with a 220 banner (then QUIT)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(5)
            banner = s.recv(512)
            with contextlib.suppress(OSError):
                s.sendall(b"QUIT\r\n")
                s.recv(512)
            return banner.startswith(b"220")
    except OSError:
        return False
