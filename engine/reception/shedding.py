"""Load shedding: whether the node should refuse new work right now, and why.

Exports:
    Reason        disk | inodes | memory | spool
    Readings      one sample: free space and inodes of the spool filesystem, memory in
                  use and its limit, the spool's health
    Thresholds    the ``[shedding]`` settings, parsed
    Shedding      a reason and a human detail (the readiness body, the log line)
    shed_reason(readings, thresholds) -> Shedding | None        pure; table-tested
    read_memory(cgroup_dir, proc) -> MemoryReading    cgroup v2 working set, else RSS
    own_cgroup_dir(proc, root) -> Path | None          this process's cgroup v2 directory
    Shedder       the node's sampler task: ``run()`` samples every ``interval`` seconds,
                  ``current`` is what reception reads (never sampled per message),
                  ``disk`` the last free/size bytes of the spool filesystem (metrics)

While ``current`` is set: readiness (``/api/check-liveness/v1``) answers 503 with a
JSON body naming the reason, new SMTP sessions get ``421 4.3.2``, HTTP injection gets 503
with ``Retry-After``; the ``nimbus_shedding{reason}`` gauge is 1. It clears by itself at
the first sample under the thresholds.

Memory is counted as kubelet counts it for eviction (the cgroup v2 working set):
``memory.current`` minus ``inactive_file`` from ``memory.stat``, since clean inactive
page cache is reclaimable (KumoMTA's figure included it, their issue #549). Without a
cgroup v2 ``memory.current`` the process RSS is used, and a percentage is of MemTotal.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from engine.config.settings import SheddingSettings
from engine.config.units import MemoryLimit, parse_memory_limit

__all__ = [
    "Reason",
    "Readings",
    "Thresholds",
    "Shedding",
    "MemoryReading",
    "DiskReading",
    "shed_reason",
    "read_memory",
    "own_cgroup_dir",
    "Shedder",
]

log = logging.getLogger("nimbus.shedding")

_MB = 1_000_000


class Reason(StrEnum):
    DISK = "disk"
    INODES = "inodes"
    MEMORY = "memory"
    SPOOL = "spool"


@dataclass(frozen=True, slots=True, kw_only=True)
class Readings:
    """One sample. free_inodes None: the filesystem has no inode limit (f_files 0).
    memory_limit None: no limit known. spool_problem: why the spool is unhealthy, or None."""

    free_disk: int
    free_inodes: int | None
    memory: int
    memory_limit: int | None
    spool_problem: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """0 / an empty MemoryLimit turn a check off."""

    min_free_disk: int = 0
    min_free_inodes: int = 0
    max_memory: MemoryLimit = MemoryLimit()

    @classmethod
    def from_settings(cls, s: SheddingSettings) -> Thresholds:
        return cls(
            min_free_disk=s.min_free_disk,
            min_free_inodes=s.min_free_inodes,
            max_memory=parse_memory_limit(s.max_memory),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Shedding:
    reason: Reason
    detail: str


def _memory_cap(limit: MemoryLimit, memory_limit: int | None) -> int | None:
    if limit.bytes:
        return limit.bytes
    if limit.percent is not None and memory_limit:
        return int(memory_limit * limit.percent / 100)
    return None  # off, or a percentage of no known limit


def shed_reason(r: Readings, t: Thresholds) -> Shedding | None:
    """The first reason to shed, in the order spool, disk, inodes, memory; None: take work."""
    if r.spool_problem:
        return Shedding(reason=Reason.SPOOL, detail=r.spool_problem)
    if t.min_free_disk and r.free_disk < t.min_free_disk:
        return Shedding(
            reason=Reason.DISK,
            detail=f"{r.free_disk // _MB} MB free on the spool filesystem, "
            f"below {t.min_free_disk // _MB} MB",
        )
    if t.min_free_inodes and r.free_inodes is not None and r.free_inodes < t.min_free_inodes:
        return Shedding(
            reason=Reason.INODES,
            detail=f"{r.free_inodes} inodes free on the spool filesystem, "
            f"below {t.min_free_inodes}",
        )
    cap = _memory_cap(t.max_memory, r.memory_limit)
    if cap is not None and r.memory > cap:
        return Shedding(
            reason=Reason.MEMORY,
            detail=f"{r.memory // _MB} MB in use, above {cap // _MB} MB",
        )
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskReading:
    """The spool filesystem at the last sample: bytes free to this process, and its size."""

    free: int
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryReading:
    used: int
    limit: int | None
    source: str  # "cgroup" or "rss"


def own_cgroup_dir(proc: Path = Path("/proc"), root: Path = Path("/sys/fs/cgroup")) -> Path | None:
    """This process's cgroup v2 directory (``0::/path`` in ``/proc/self/cgroup``), or None."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return root / line[3:].lstrip("/")
    return None


def _stat_field(text: str, name: str) -> int:
    """The number after ``name`` in ``name value [unit]`` lines (memory.stat, meminfo)."""
    for line in text.splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[0] == name:
            return int(parts[1])
    return 0


def read_memory(cgroup_dir: Path | None, proc: Path = Path("/proc")) -> MemoryReading:
    """Memory in use and its limit: the cgroup v2 working set (``memory.current`` minus
    ``inactive_file``) and ``memory.max`` when ``cgroup_dir`` has them, else this
    process's RSS and MemTotal. Raises OSError/ValueError when neither can be read."""
    if cgroup_dir is not None and (cgroup_dir / "memory.current").exists():
        current = int((cgroup_dir / "memory.current").read_text())
        try:
            inactive = _stat_field((cgroup_dir / "memory.stat").read_text(), "inactive_file")
        except FileNotFoundError:
            inactive = 0
        try:
            text = (cgroup_dir / "memory.max").read_text().strip()
        except FileNotFoundError:
            text = "max"
        limit = None if text == "max" else int(text)
        return MemoryReading(used=max(0, current - inactive), limit=limit, source="cgroup")
    resident_pages = int((proc / "self" / "statm").read_text().split()[1])
    total_kb = _stat_field((proc / "meminfo").read_text(), "MemTotal")
    return MemoryReading(
        used=resident_pages * os.sysconf("SC_PAGE_SIZE"),
        limit=total_kb * 1024 if total_kb else None,
        source="rss",
    )


class Shedder:
    """Samples disk, inodes, memory and the spool every ``settings.interval`` seconds.

    settings: the ``[shedding]`` settings. spool_dir: where the spool lives (its
    filesystem is measured). spool_health: an awaitable probe returning why the spool is
    unhealthy, or None. on_change: called with the new state at each transition (metrics).
    """

    def __init__(
        self,
        settings: SheddingSettings,
        *,
        spool_dir: Path,
        spool_health: Callable[[], Awaitable[str | None]],
        on_change: Callable[[Shedding | None], None] = lambda _: None,
    ) -> None:
        self._settings = settings
        self.thresholds = Thresholds.from_settings(settings)
        self._spool_dir = spool_dir
        self._spool_health = spool_health
        self._on_change = on_change
        self._cgroup = Path(settings.cgroup_dir) if settings.cgroup_dir else own_cgroup_dir()
        self.current: Shedding | None = None
        self.disk: DiskReading | None = None  # None until the first sample
        self._sampled = asyncio.Event()

    def _read_system(self) -> tuple[DiskReading, int | None, MemoryReading]:
        st = os.statvfs(self._spool_dir)
        inodes = st.f_favail if st.f_files else None  # some filesystems have no inode limit
        disk = DiskReading(free=st.f_bavail * st.f_frsize, size=st.f_blocks * st.f_frsize)
        return disk, inodes, read_memory(self._cgroup)

    async def sample(self) -> Shedding | None:
        """Take one sample, update ``current`` (logging a transition), return it."""
        disk, inodes, memory = await asyncio.to_thread(self._read_system)
        self.disk = disk
        readings = Readings(
            free_disk=disk.free,
            free_inodes=inodes,
            memory=memory.used,
            memory_limit=memory.limit,
            spool_problem=await self._spool_health(),
        )
        state = shed_reason(readings, self.thresholds)
        if state != self.current:
            self._transition(state, memory.source)
        self._sampled.set()
        return state

    def _transition(self, state: Shedding | None, memory_source: str) -> None:
        before, self.current = self.current, state
        if state is None:
            log.warning("load_shedding_stopped", extra={"was": before and before.reason.value})
        elif before is None or before.reason != state.reason:
            log.warning(
                "load_shedding_started",
                extra={
                    "reason": state.reason.value,
                    "detail": state.detail,
                    "memory_source": memory_source,
                },
            )
        self._on_change(state)

    async def run(self) -> None:
        """Sample until cancelled. A sample that fails (a file vanished) is logged and
        the last state kept; the next one tries again."""
        while True:
            try:
                await self.sample()
            except (OSError, ValueError) as exc:
                log.error("load_shedding_sample_failed", extra={"error": str(exc)})
            await asyncio.sleep(self._settings.interval)  # the sampling period

    async def wait_for(self, predicate: Callable[[Shedding | None], bool]) -> Shedding | None:
        """Wait (unbounded: callers add a timeout) until a sample satisfies ``predicate``."""
        while not predicate(self.current):
            self._sampled.clear()
            await self._sampled.wait()
        return self.current
