"""The node's throttle store shared by its workers: one EmbeddedStore behind a Unix socket."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from engine.config.throttle_spec import ThrottleSpec
from engine.shaping.throttle.embedded import EmbeddedStore
from engine.shaping.throttle.node_socket import SocketStore, serve_store


async def test_two_workers_share_one_connection_limit_and_one_rate():
    """Leases and GCRA buckets taken through two clients come out of one budget."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "throttle.sock"
        server = await serve_store(path, EmbeddedStore())
        a, b = SocketStore(path, 2), SocketStore(path, 2)
        try:
            assert await a.acquire_lease("k", 2, "a1", 60) is None
            assert await b.acquire_lease("k", 2, "b1", 60) is None
            assert await b.acquire_lease("k", 2, "b2", 60) is not None  # full for the node
            assert await a.count_leases("k") == 2
            await a.release_lease("k", "a1")
            assert await b.acquire_lease("k", 2, "b2", 60) is None
            assert await b.extend_lease("k", "b2", 60)
            spec = ThrottleSpec.parse("10/s,max_burst=4")
            allowed = [(await (a if i % 2 else b).throttle("r", spec)).allowed for i in range(8)]
            assert allowed.count(True) == 4
        finally:
            await a.close()
            await b.close()
            server.close()
            await server.wait_closed()


async def test_without_the_supervisor_a_worker_enforces_its_share(caplog):
    """The socket gone: each worker allows limit / workers, logged once, not shared."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SocketStore(Path(tmp) / "absent.sock", 2)
        try:
            assert await store.acquire_lease("k", 4, "x1", 60) is None
            assert await store.acquire_lease("k", 4, "x2", 60) is None
            assert await store.acquire_lease("k", 4, "x3", 60) is not None  # 4 / 2 workers
            assert store.degraded
            await store.release_lease("k", "x1")
            assert await store.count_leases("k") == 1
        finally:
            await store.close()
    assert [r.message for r in caplog.records].count("node_throttle_store_unreachable") == 1


async def test_warmup_window_counters_are_one_count_for_the_node_and_persist(tmp_path):
    """IP warm-up's fixed-window counters through two workers' clients: one budget, kept in
    the supervisor's counts file (a restarted supervisor continues the count); without the
    socket a worker counts its share."""
    counts = tmp_path / "warmup.db"
    path = tmp_path / "throttle.sock"
    expires = time.time() + 3600
    server = await serve_store(path, EmbeddedStore(counts_file=counts))
    a, b = SocketStore(path, 2), SocketStore(path, 2)
    try:
        got = [await (a if i % 2 else b).count_window("w", 3, expires) for i in range(5)]
        assert [w.allowed for w in got] == [True, True, True, False, False]
        assert await b.window_count("w") == 3
    finally:
        await a.close()
        await b.close()
        server.close()
        await server.wait_closed()
    server = await serve_store(path, EmbeddedStore(counts_file=counts))
    c = SocketStore(path, 2)
    try:
        assert await c.window_count("w") == 3  # the file kept it
    finally:
        await c.close()
        server.close()
        await server.wait_closed()
    lone = SocketStore(tmp_path / "absent.sock", 2)
    try:
        assert [(await lone.count_window("v", 4, expires)).allowed for _ in range(3)] == [
            True,
            True,
            False,
        ]  # 4 / 2 workers
    finally:
        await lone.close()
