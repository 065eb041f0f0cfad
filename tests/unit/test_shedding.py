"""Load shedding: the pure decision (tables), and memory read from a fake cgroup or /proc."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from engine.config.settings import SheddingSettings
from engine.config.units import MemoryLimit
from engine.reception.shedding import (
    MemoryReading,
    Readings,
    Reason,
    Shedder,
    Thresholds,
    own_cgroup_dir,
    read_memory,
    shed_reason,
)

MB = 1_000_000
GB = 1_000_000_000
OK = Readings(free_disk=10 * GB, free_inodes=100_000, memory=500 * MB, memory_limit=2 * GB)
T = Thresholds(min_free_disk=100 * MB, min_free_inodes=1000, max_memory=MemoryLimit(percent=90.0))


def readings(**changes: Any) -> Readings:
    return dataclasses.replace(OK, **changes)


@pytest.mark.parametrize(
    "sample, thresholds, reason",
    [
        (readings(), T, None),
        (readings(free_disk=99 * MB), T, Reason.DISK),
        (readings(free_disk=100 * MB), T, None),  # at the threshold: still taking work
        (readings(free_disk=0), Thresholds(), None),  # 0: check off
        (readings(free_inodes=999), T, Reason.INODES),
        (readings(free_inodes=None), T, None),  # no inode limit on this filesystem
        (readings(memory=1_800_000_001), T, Reason.MEMORY),  # above 90% of 2 GB
        (readings(memory=1_800_000_000), T, None),
        (readings(memory=10 * GB, memory_limit=None), T, None),  # % of no known limit
        (
            readings(memory=3 * GB, memory_limit=None),
            Thresholds(max_memory=MemoryLimit(bytes=2 * GB)),
            Reason.MEMORY,
        ),
        (readings(spool_problem="spool is not open"), T, Reason.SPOOL),
        # Several at once: spool, then disk, then inodes, then memory.
        (readings(spool_problem="x", free_disk=0), T, Reason.SPOOL),
        (readings(free_disk=0, free_inodes=0, memory=10 * GB), T, Reason.DISK),
        (readings(free_inodes=0, memory=10 * GB), T, Reason.INODES),
    ],
)
def test_shed_reason(sample, thresholds, reason):
    """The first reason to shed, or None, for each reading against the thresholds."""
    got = shed_reason(sample, thresholds)
    assert (got.reason if got else None) == reason


def test_shedding_detail_names_the_figures():
    """The detail (readiness body, log line) names the reading and the threshold."""
    got = shed_reason(readings(free_disk=42 * MB), T)
    assert got is not None and got.detail == ("42 MB free on the spool filesystem, below 100 MB")


def cgroup(tmp_path: Path, current: int, inactive: int, limit: str) -> Path:
    d = tmp_path / "cgroup"
    d.mkdir(exist_ok=True)
    (d / "memory.current").write_text(f"{current}\n")
    (d / "memory.stat").write_text(
        f"anon 1000\nfile {inactive + 5}\nactive_file 5\ninactive_file {inactive}\n"
    )
    (d / "memory.max").write_text(f"{limit}\n")
    return d


@pytest.mark.parametrize(
    "current, inactive, limit, used, expected_limit",
    [
        (800 * MB, 300 * MB, "1000000000", 500 * MB, GB),  # working set, as kubelet counts
        (800 * MB, 0, "max", 800 * MB, None),  # no limit set on the cgroup
        (100 * MB, 300 * MB, "max", 0, None),  # never negative
    ],
)
def test_cgroup_working_set_is_current_minus_inactive_file(
    tmp_path, current, inactive, limit, used, expected_limit
):
    """memory.current minus memory.stat inactive_file, with memory.max as the limit."""
    d = cgroup(tmp_path, current, inactive, limit)
    assert read_memory(d) == MemoryReading(used=used, limit=expected_limit, source="cgroup")


def test_without_a_cgroup_memory_is_the_process_rss(tmp_path):
    """No memory.current: RSS from /proc/self/statm, the limit from MemTotal."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "statm").write_text("5000 1000 300 10 0 900 0\n")
    (proc / "meminfo").write_text("MemTotal:        2048 kB\nMemFree:  1 kB\n")
    reading = read_memory(tmp_path / "no-such-cgroup", proc)
    assert reading.source == "rss"
    assert reading.limit == 2048 * 1024
    assert reading.used == 1000 * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0::/kubepods/pod1/c1\n", "kubepods/pod1/c1"),
        ("4:memory:/x\n0::/\n", ""),
        ("4:memory:/x\n", None),  # cgroup v1 only
    ],
)
def test_own_cgroup_dir_is_the_unified_hierarchy_entry(tmp_path, text, expected):
    """The cgroup v2 directory comes from the ``0::`` line of /proc/self/cgroup."""
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "cgroup").write_text(text)
    root = tmp_path / "sys"
    got = own_cgroup_dir(tmp_path, root)
    assert got == (None if expected is None else root / expected)


async def test_sampler_sheds_and_recovers_with_the_fake_cgroup(tmp_path):
    """The sampler reads the fake cgroup each sample: over 50% of memory.max sheds
    (memory), and reclaimable page cache growing brings it back under by itself."""
    d = cgroup(tmp_path, 800 * MB, 0, "1000000000")
    changes = []
    health: list[str | None] = [None]

    async def spool_health() -> str | None:
        return health[0]

    shedder = Shedder(
        SheddingSettings(min_free_disk=0, min_free_inodes=0, max_memory="50%", cgroup_dir=str(d)),
        spool_dir=tmp_path,
        spool_health=spool_health,
        on_change=changes.append,
    )
    first = await shedder.sample()
    (d / "memory.stat").write_text("inactive_file 400000000\n")
    second = await shedder.sample()
    health[0] = "spool writer did not commit within 5s"
    third = await shedder.sample()
    assert first is not None and first.reason == Reason.MEMORY
    assert first.detail == "800 MB in use, above 500 MB"
    assert second is None
    assert third is not None and third.reason == Reason.SPOOL
    assert [c.reason if c else None for c in changes] == [Reason.MEMORY, None, Reason.SPOOL]


async def test_sampler_keeps_the_spool_filesystem_free_and_size(tmp_path):
    """After a sample, ``disk`` holds the spool filesystem's free and total bytes (the
    nimbus_spool_disk_* gauges); before the first sample it is None."""

    async def healthy() -> str | None:
        return None

    shedder = Shedder(
        SheddingSettings(min_free_disk=0, min_free_inodes=0, max_memory="0"),
        spool_dir=tmp_path,
        spool_health=healthy,
    )
    assert shedder.disk is None
    await shedder.sample()
    st = os.statvfs(tmp_path)
    assert shedder.disk is not None
    assert shedder.disk.size == st.f_blocks * st.f_frsize
    assert 0 < shedder.disk.free <= shedder.disk.size
