"""CPU and memory of processes and of the whole box, sampled with psutil.

Exports:
    CpuSample                    CPU seconds of a process tree and how many processes it had
    tree_cpu(pid)                root + live children, each including its reaped children
    tree_rss_kb(pid)             resident memory of root + live children
    rss_kb(pid), thread_count(pid)   one process
    process_cpu_seconds(pid)     one process (None once it is gone)
    box_busy_seconds()           non-idle CPU time of the whole machine
    gone_or_zombie(pid), cmdline(pid), child_cmdlines(pid)

psutil replaces the hand-written /proc parsing (``/proc/PID/stat``, ``/proc/stat``,
``/proc/PID/status``): the same kernel counters, in seconds instead of jiffies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psutil

from bench.support import BenchError

__all__ = [
    "CpuSample",
    "tree_cpu",
    "tree_rss_kb",
    "rss_kb",
    "thread_count",
    "process_cpu_seconds",
    "box_busy_seconds",
    "gone_or_zombie",
    "cmdline",
    "child_cmdlines",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuSample:
    """utime+stime+cutime+cstime (seconds) summed over a process tree at one moment."""

    seconds: float
    processes: int


def _total(times: Any) -> float:
    # Children a process has already reaped are in its children_* times, so the sum stays
    # monotonic while processes come and go (Postfix daemons exit after max_use/max_idle).
    return times.user + times.system + times.children_user + times.children_system


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of one process including its reaped children; None if it is gone."""
    try:
        return _total(psutil.Process(pid).cpu_times())
    except psutil.Error:
        return None


def tree_cpu(root_pid: int) -> CpuSample:
    """CPU of root and its live children (each including its own reaped children).

    Raises BenchError if root is gone: a tree without its root cannot be measured.
    """
    try:
        root = psutil.Process(root_pid)
        total = _total(root.cpu_times())
        children = root.children()
    except psutil.Error:
        raise BenchError(f"process {root_pid} is gone") from None
    n = 1
    for child in children:
        try:
            total += _total(child.cpu_times())
            n += 1
        except psutil.Error:  # exited between listing and reading: counted by root later
            continue
    return CpuSample(seconds=total, processes=n)


def tree_rss_kb(root_pid: int) -> int:
    """Resident KiB of root and its live children (0 for any that is gone)."""
    try:
        procs = [psutil.Process(root_pid)]
        procs += procs[0].children()
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total // 1024


def rss_kb(pid: int) -> int | None:
    """Resident KiB of one process, None if it is gone."""
    try:
        return int(psutil.Process(pid).memory_info().rss // 1024)
    except psutil.Error:
        return None


def thread_count(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).num_threads())
    except psutil.Error:
        return None


def box_busy_seconds() -> float:
    """Non-idle CPU seconds of the machine: user+nice+system+irq+softirq (no idle/iowait/steal)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq


def gone_or_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def cmdline(pid: int) -> str:
    """The process's command line joined by spaces ('' if it is gone)."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def child_cmdlines(pid: int) -> list[str]:
    """Command lines of the live children of ``pid``."""
    try:
        children = psutil.Process(pid).children()
    except psutil.Error:
        return []
    return [c for c in (cmdline(child.pid) for child in children) if c]
