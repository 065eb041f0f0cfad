"""The receiving end: Postfix's ``smtp-sink`` and its live message counter.

Exports:
    SINK_COMMAND          the command line (with SINKPORT), as the report prints it
    parse_counter(buf)    pure: the highest ``mesg=N`` in complete updates, and the rest
    Sink                  a running smtp-sink whose ``-c`` counter a thread follows

``smtp-sink -c`` prints its counters on stdout, separated by carriage returns (one update
per received DATA). The count reaching N is what ends a trial, for every MTA alike.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from pathlib import Path

from bench.sampling import process_cpu_seconds
from bench.support import port_open, stop_process, wait_until

__all__ = ["SINK_COMMAND", "sink_command", "parse_counter", "Sink"]

_COUNTER = re.compile(rb"mesg=(\d+)")


def sink_command(port: int | str) -> list[str]:
    return ["smtp-sink", "-c", "-m", "1024", "-u", "nobody", f"127.0.0.1:{port}", "1024"]


SINK_COMMAND = " ".join(sink_command("SINKPORT"))


def parse_counter(buf: bytes) -> tuple[int | None, bytes]:
    """(highest count in the complete updates of ``buf`` or None, the incomplete tail).

    An update is complete once a CR or LF follows it; the tail is kept for the next read,
    so a number split across two reads is never taken for a smaller one.
    """
    cut = max(buf.rfind(b"\r"), buf.rfind(b"\n"))
    if cut < 0:
        return None, buf
    found = _COUNTER.findall(buf[:cut])
    return (max(int(x) for x in found) if found else None), buf[cut + 1 :]


class Sink:
    """smtp-sink with a thread that follows its ``-c`` counter (``mesg=N``) on stdout.

    port: where it listens on 127.0.0.1. target: the count that sets ``reached``.
    outdir: where its stderr goes (``sink-PORT.stderr``, removed if empty).
    """

    def __init__(self, port: int, target: int, outdir: Path):
        self.port = port
        self.target = target
        self.count = 0
        self.reached_at: float | None = None  # monotonic time the counter reached target
        self.last_change = time.monotonic()
        self.reached = threading.Event()
        self.stderr_path = outdir / f"sink-{port}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            sink_command(port),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
        )
        self._thread = threading.Thread(target=self._reader, name=f"sink-{port}", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        tail = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            now = time.monotonic()
            n, tail = parse_counter(tail + chunk)
            if n is None:
                continue
            if n != self.count:
                self.count = n
                self.last_change = now
            if n >= self.target and self.reached_at is None:
                self.reached_at = now
                self.reached.set()

    def wait_listening(self, deadline: float = 10) -> None:
        wait_until(
            lambda: port_open(self.port),
            deadline,
            f"smtp-sink on 127.0.0.1:{self.port}",
            alive=lambda: (
                f"smtp-sink exited rc={self.proc.returncode}; see {self.stderr_path}"
                if self.proc.poll() is not None
                else None
            ),
        )

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc, "smtp-sink", term_timeout=5)
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        self._stderr.close()
        if self.stderr_path.exists() and not self.stderr_path.read_bytes().strip():
            self.stderr_path.unlink()
