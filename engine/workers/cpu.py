"""How many engine workers a node runs when ``node.workers`` is 0 (the default).

Exports:
    quota_cpus(cpu_max=None, cfs_quota=None, cfs_period=None) -> int | None   (pure)
    default_workers(root="/sys/fs/cgroup", proc="/proc/self/cgroup") -> int

The CPU quota of the process's cgroup, rounded down and at least 1 (a pod limited to
2.5 CPUs runs 2 workers), else ``os.cpu_count()``. cgroup v2 writes ``"<quota> <period>"``
to ``cpu.max`` (``"max <period>"``: no quota); v1 has ``cpu.cfs_quota_us`` (-1: none) and
``cpu.cfs_period_us``. ``os.sched_getaffinity`` bounds the CPU count (a taskset or cpuset).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["quota_cpus", "default_workers"]


def quota_cpus(
    cpu_max: str | None = None, cfs_quota: str | None = None, cfs_period: str | None = None
) -> int | None:
    """Whole CPUs of a cgroup quota, at least 1; None when there is none.

    cpu_max: the text of a v2 ``cpu.max``; cfs_quota / cfs_period: the v1 files' texts.
    """
    quota = period = None
    if cpu_max is not None:
        parts = cpu_max.split()
        if len(parts) == 2 and parts[0] != "max":
            quota, period = parts
    elif cfs_quota is not None and cfs_period is not None:
        quota, period = cfs_quota.strip(), cfs_period.strip()
    try:
        q, p = int(quota or "-1"), int(period or "0")
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return max(1, q // p)


def _cgroup_dirs(root: Path, proc: Path) -> tuple[Path | None, Path | None]:
    """(the v2 directory, the v1 cpu controller directory) of this process, if found."""
    v2 = v1 = None
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        rel = path.lstrip("/")
        if hier == "0" and controllers == "":
            v2 = root / rel
        elif "cpu" in controllers.split(","):
            for name in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
                if (root / name).is_dir():
                    v1 = root / name / rel
                    break
    return v2, v1


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def default_workers(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> int:
    """Workers for ``node.workers = 0``: the quota of this process's cgroup (or of its
    root, as a container sees it), else the CPUs this process may run on."""
    v2, v1 = _cgroup_dirs(Path(root), Path(proc))
    for directory in (v2, Path(root)):
        if directory is not None and (text := _read(directory / "cpu.max")) is not None:
            if (cpus := quota_cpus(cpu_max=text)) is not None:
                return cpus
    if v1 is not None:
        cpus = quota_cpus(
            cfs_quota=_read(v1 / "cpu.cfs_quota_us"), cfs_period=_read(v1 / "cpu.cfs_period_us")
        )
        if cpus is not None:
            return cpus
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
