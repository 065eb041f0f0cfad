"""Load shedding on a real node: short of disk or inodes on the spool filesystem (a small
tmpfs), or over its memory threshold, readiness answers 503 naming the reason, new SMTP
sessions get 421 4.3.2 and HTTP injection 503 with Retry-After; it recovers by itself."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.node import running_node

AUTH = "Basic " + base64.b64encode(b"tester:secret").decode()
WAIT = 20.0


def mount_tmpfs(path: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root (CI runs tests/run as root)")
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {done.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs with 400 inodes under tmp_path."""
    mount = tmp_path / "small"
    mount_tmpfs(mount, "size=16m,nr_inodes=400")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@contextlib.asynccontextmanager
async def node_with(tmp_path: Path, **settings: Any) -> AsyncIterator[Any]:
    auth = tmp_path / "auth"
    auth.mkdir(exist_ok=True)
    (auth / "tester").write_text("secret\n")
    base = {
        "http.auth_dir": str(auth),
        "shedding.interval": "50ms",
        "shedding.min_free_disk": 0,
        "shedding.min_free_inodes": 0,
        "shedding.max_memory": "0",
    }
    async with running_node(tmp_path, **{**base, **settings}) as node:
        yield node


async def until(node: Any, shedding: bool) -> Any:
    """Wait for the node's sampler to (stop) shed load; the state."""
    async with asyncio.timeout(WAIT):
        return await node.shedder.wait_for(lambda s: (s is not None) == shedding)


async def observe(node: Any) -> dict[str, Any]:
    """What clients see now: readiness, an SMTP greeting, an inject answer, the gauge."""
    out: dict[str, Any] = {}
    base = f"http://127.0.0.1:{node.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/check-liveness/v1") as resp:
            text = await resp.text()
            body = json.loads(text) if resp.content_type == "application/json" else text
            out["readiness"] = (resp.status, body)
        request = {
            "envelope_sender": "s@src.test",
            "content": "Subject: hi\r\n\r\nhello\r\n",
            "recipients": [{"email": "u@dst.test"}],
        }
        async with http.post(
            f"{base}/api/inject/v1", json=request, headers={"Authorization": AUTH}
        ) as resp:
            out["inject"] = (resp.status, resp.headers.get("Retry-After"), await resp.json())
        async with http.get(f"{base}/metrics") as resp:
            out["gauges"] = {
                line.split('"')[1]: float(line.split()[-1])
                for line in (await resp.text()).splitlines()
                if line.startswith("nimbus_shedding{")
            }
    reader, writer = await asyncio.open_connection("127.0.0.1", node.smtp_port)
    try:
        out["greeting"] = (await asyncio.wait_for(reader.readline(), WAIT)).decode().strip()
    finally:
        writer.close()
    return out


def shedding_body(reason: str, detail: str) -> dict[str, str]:
    return {"error": "load shedding", "reason": reason, "detail": detail}


def gauges(shedding: str | None) -> dict[str, float]:
    return {r: float(r == shedding) for r in ("disk", "inodes", "memory", "spool")}


async def test_low_disk_sheds_and_recovers_when_space_returns(small_fs, tmp_path):
    """Free space on the spool filesystem under shedding.min_free_disk: readiness 503
    "disk", SMTP 421 4.3.2, inject 503 + Retry-After; deleting the filler recovers."""
    async with node_with(
        tmp_path, **{"spool.dir": str(small_fs / "spool"), "shedding.min_free_disk": "8MB"}
    ) as node:
        before = await observe(node)
        filler = small_fs / "filler"
        filler.write_bytes(b"\0" * 10_000_000)
        state = await until(node, shedding=True)
        during = await observe(node)
        filler.unlink()
        await until(node, shedding=False)
        after = await observe(node)
    body = shedding_body("disk", state.detail)
    assert before["readiness"] == (200, "OK") and before["greeting"].startswith("220 ")
    assert state.detail.endswith("MB free on the spool filesystem, below 8 MB")
    assert during["readiness"] == (503, body)
    assert during["greeting"] == "421 4.3.2 Load shedding (disk), try again later"
    assert during["inject"] == (503, "30", body)
    assert during["gauges"] == gauges("disk")
    assert after["readiness"] == (200, "OK") and after["greeting"].startswith("220 ")
    assert after["inject"][0] == 200 and after["gauges"] == gauges(None)


async def test_few_free_inodes_sheds_and_recovers(small_fs, tmp_path):
    """Free inodes under shedding.min_free_inodes shed with reason "inodes"; removing
    the files recovers by itself."""
    async with node_with(
        tmp_path, **{"spool.dir": str(small_fs / "spool"), "shedding.min_free_inodes": 200}
    ) as node:
        files = small_fs / "many"
        files.mkdir()
        for n in range(250):
            (files / str(n)).touch()
        state = await until(node, shedding=True)
        during = await observe(node)
        for n in range(250):
            (files / str(n)).unlink()
        await until(node, shedding=False)
        after = await observe(node)
    assert state.reason == "inodes"
    assert during["readiness"] == (503, shedding_body("inodes", state.detail))
    assert during["greeting"] == "421 4.3.2 Load shedding (inodes), try again later"
    assert after["readiness"] == (200, "OK")


async def test_memory_over_threshold_sheds_from_the_first_sample(tmp_path):
    """With no cgroup v2 files the process RSS counts: a threshold below it sheds at
    once (before SMTP listens), reason "memory"."""
    async with node_with(
        tmp_path,
        **{"shedding.max_memory": "1MB", "shedding.cgroup_dir": str(tmp_path / "no-cgroup")},
    ) as node:
        state = node.shedder.current
        during = await observe(node)
    assert state is not None and state.reason == "memory"
    assert during["readiness"] == (503, shedding_body("memory", state.detail))
    assert during["greeting"] == "421 4.3.2 Load shedding (memory), try again later"
    assert during["inject"][:2] == (503, "30")


async def test_cgroup_working_set_sheds_and_recovers_as_page_cache_is_inactive(tmp_path):
    """The cgroup's working set (memory.current minus inactive_file) over 50% of
    memory.max sheds; when the same usage turns out to be inactive page cache the node
    takes work again by itself (KumoMTA counted page cache, their issue #549)."""
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.current").write_text("900000000\n")
    (cgroup / "memory.stat").write_text("anon 300000000\ninactive_file 0\n")
    (cgroup / "memory.max").write_text("1000000000\n")
    async with node_with(
        tmp_path, **{"shedding.max_memory": "50%", "shedding.cgroup_dir": str(cgroup)}
    ) as node:
        state = await until(node, shedding=True)
        during = await observe(node)
        (cgroup / "memory.stat").write_text("anon 300000000\ninactive_file 600000000\n")
        await until(node, shedding=False)
        after = await observe(node)
    assert state.detail == "900 MB in use, above 500 MB"
    assert during["readiness"] == (503, shedding_body("memory", state.detail))
    assert during["gauges"] == gauges("memory")
    assert after["readiness"] == (200, "OK") and after["greeting"].startswith("220 ")
