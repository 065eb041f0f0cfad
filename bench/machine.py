"""Facts about the machine and the software under test, printed in every report.

Exports:
    MachineFacts        CPUs, memory, kernel, Python, Postfix and nimbus versions, git revision
    machine_facts()     gather them (versions by asking the tools themselves)
    REPO                the repository root (policy/, BENCHMARKS.md, bench/results/)
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.support import BenchError, run

__all__ = ["MachineFacts", "machine_facts", "REPO"]

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineFacts:
    nproc: int | None
    cpu_model: str
    kernel: str
    mem_gib: float
    python: str
    postfix: str
    nimbus: str
    git: str
    hostname: str


def _cpu_model() -> str:
    # psutil has no CPU model name; /proc/cpuinfo is where the kernel says it.
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def _output(cmd: list[str], timeout: float) -> str:
    """stdout of a version query, '' if the tool is missing or fails."""
    try:
        return run(cmd, check=False, timeout=timeout, cwd=REPO).stdout.strip()
    except (BenchError, OSError):
        return ""


def machine_facts() -> MachineFacts:
    return MachineFacts(
        nproc=os.cpu_count(),
        cpu_model=_cpu_model(),
        kernel=platform.release(),
        mem_gib=round(psutil.virtual_memory().total / 2**30, 1),
        python=platform.python_version(),
        postfix=_output(["postconf", "-d", "-h", "mail_version"], 10),
        nimbus=_output([sys.executable, "-c", "import engine; print(engine.__version__)"], 20),
        git=_output(["git", "-C", str(REPO), "describe", "--always", "--dirty"], 10),
        hostname=socket.gethostname(),
    )
