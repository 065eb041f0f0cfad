"""The load generator: Postfix's ``smtp-source`` against the MTA under test.

Exports:
    SENDER, RECIPIENT        the envelope of every message
    source_command(...)      pure: the smtp-source command line for one trial
    LoadGenerator            a running smtp-source: when it exited, and the CPU it used

smtp-source speaks HELO without PIPELINING and opens one connection per message unless
``-d`` (reuse sessions); ``-l`` is the payload size in bytes (80-character lines).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench.support import BenchError, log, stop_process

__all__ = ["SENDER", "RECIPIENT", "source_command", "LoadGenerator"]

SENDER = "bench@source.example"
RECIPIENT = "user@sink.example"


def source_command(
    *, sessions: int, messages: int, size: int | str, port: int | str, reuse_sessions: bool
) -> list[str]:
    """smtp-source: ``sessions`` in parallel, ``messages`` of ``size`` bytes to 127.0.0.1:port."""
    return [
        "smtp-source",
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        str(size),
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        *(["-d"] if reuse_sessions else []),
        f"127.0.0.1:{port}",
    ]


def _children_cpu_seconds() -> float:
    # smtp-source is our child: once reaped, its CPU is in our children's times.
    t = os.times()
    return t.children_user + t.children_system


class LoadGenerator:
    """One smtp-source run; its output goes to ``out_path`` (removed if empty).

    ``exited_at`` is the monotonic time its exit was first seen, ``cpu_seconds`` the CPU
    it used (our reaped children's CPU between start and that moment).
    """

    def __init__(self, cmd: list[str], out_path: Path):
        self.cmd = cmd
        self.out_path = out_path
        self.exited_at: float | None = None
        self.cpu_seconds = 0.0
        self._cpu0 = 0.0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._cpu0 = _children_cpu_seconds()
        with open(self.out_path, "wb") as out:
            self._proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    def poll(self) -> bool:
        """True once smtp-source has exited (its exit time and CPU are then recorded)."""
        assert self._proc is not None
        if self.exited_at is None and self._proc.poll() is not None:
            self._exited()
        return self.exited_at is not None

    def wait(self, timeout: float) -> float:
        """Wait for the exit; return its time. BenchError if it takes over ``timeout`` s."""
        assert self._proc is not None
        if self.exited_at is None:
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise BenchError(
                    f"sink has all messages but smtp-source has not exited after {timeout}s"
                ) from None
            self._exited()
        assert self.exited_at is not None
        return self.exited_at

    def _exited(self) -> None:
        assert self._proc is not None
        self.exited_at = time.monotonic()
        self.cpu_seconds = _children_cpu_seconds() - self._cpu0
        if self._proc.returncode != 0:
            log(
                f"warning: smtp-source exited rc={self._proc.returncode} (see {self.out_path.name})"
            )

    def output(self) -> str:
        """What smtp-source printed; the file is removed if it printed nothing."""
        text = self.out_path.read_text(errors="replace")
        if not text.strip():
            self.out_path.unlink()
        return text.strip()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            stop_process(self._proc, "smtp-source", term_timeout=5)
