"""The default number of workers: the cgroup CPU quota rounded down, else the CPU count."""

from __future__ import annotations

import os

import pytest

from engine.config.settings import load_settings
from engine.workers.cpu import default_workers, quota_cpus


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"cpu_max": "200000 100000\n"}, 2),
        ({"cpu_max": "250000 100000"}, 2),  # 2.5 CPUs: rounded down
        ({"cpu_max": "50000 100000"}, 1),  # half a CPU: at least one worker
        ({"cpu_max": "max 100000"}, None),  # no quota
        ({"cpu_max": "garbage"}, None),
        ({"cfs_quota": "400000\n", "cfs_period": "100000\n"}, 4),  # cgroup v1
        ({"cfs_quota": "-1", "cfs_period": "100000"}, None),  # v1: no quota
        ({}, None),
    ],
)
def test_quota_cpus(kwargs, expected):
    """cpu.max (v2) or cfs_quota_us/cfs_period_us (v1) as whole CPUs, None without a quota."""
    assert quota_cpus(**kwargs) == expected


def test_default_workers_reads_this_process_cgroup_v2(tmp_path):
    """The quota of the cgroup named in /proc/self/cgroup wins over the CPU count."""
    (tmp_path / "kubepods" / "pod1").mkdir(parents=True)
    (tmp_path / "kubepods" / "pod1" / "cpu.max").write_text("300000 100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1\n")
    assert default_workers(root=str(tmp_path), proc=str(proc)) == 3


def test_default_workers_reads_cgroup_v1(tmp_path):
    """cgroup v1: the cpu controller's cfs quota."""
    cpu = tmp_path / "cpu,cpuacct" / "docker" / "c1"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("200000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("4:cpu,cpuacct:/docker/c1\n1:memory:/docker/c1\n")
    assert default_workers(root=str(tmp_path), proc=str(proc)) == 2


def test_default_workers_without_a_quota_is_the_cpu_count(tmp_path):
    """No quota anywhere: the CPUs this process may run on."""
    (tmp_path / "cpu.max").write_text("max 100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    assert default_workers(root=str(tmp_path), proc=str(proc)) == len(os.sched_getaffinity(0))


def test_workers_setting_from_environment_and_file(tmp_path):
    """[node] workers is NIMBUS_NODE_WORKERS; 1 by default (0: auto)."""
    assert load_settings(env={}).node.workers == 1
    assert load_settings(env={"NIMBUS_NODE_WORKERS": "3"}).node.workers == 3
    config = tmp_path / "nimbus.toml"
    config.write_text('node_id = "n1"\n[node]\nworkers = 2\n')
    settings = load_settings(str(config), env={})
    assert (settings.node.workers, settings.node_id) == (2, "n1")
