"""Suppression check micro-benchmark: what the reception check costs per message.

    python -m bench.suppression_bench [--checks 20000] [--entries 100000] [--runs 3]
                                      [--redis-url redis://127.0.0.1:6379/0]

Runs ``Suppressions.check`` (what both listeners call per recipient) for unique
recipients that are not on the list (the common case) and for listed ones, with:
disabled; the node-local list (``LocalStore``: a dict, ``--entries`` entries loaded);
and, with ``--redis-url`` (or a redis-server on PATH, started on a free port), Redis
with the lookup cache hit, and missed (one HGETALL per message). Reports wall and CPU
microseconds per check, median over runs. The machine is shared: compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

from engine.config.settings import RedisSettings, SuppressionSettings
from engine.policy.events import Registry
from engine.suppression.entries import Reason, Suppression
from engine.suppression.redis_store import RedisSuppressionStore
from engine.suppression.service import Suppressed, Suppressions
from engine.suppression.store import LocalStore, SuppressionStore


async def _time(s: Suppressions, recipients: list[str], registry: Registry) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for rcpt in recipients:
        try:
            await s.check(rcpt, "tenant", registry)
        except Suppressed:
            pass
    n = len(recipients)
    return (time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6


def _entries(n: int) -> list[Suppression]:
    now = time.time()
    return [
        Suppression(recipient=f"listed{i}@dest.test", reason=Reason.BOUNCE, created=now)
        for i in range(n)
    ]


async def _case(
    name: str, store: SuppressionStore, args: argparse.Namespace, *, enabled: bool, warm: bool
) -> None:
    settings = SuppressionSettings(enabled=enabled, cache_size=2 * args.checks)
    s = Suppressions(settings, store)
    registry = Registry()
    rows = {"not listed": [], "listed": []}
    for run in range(args.runs):
        fresh = [f"r{run}-{i}@dest.test" for i in range(args.checks)]
        listed = [f"listed{i % max(args.entries, 1)}@dest.test" for i in range(args.checks)]
        for label, recipients in (("not listed", fresh), ("listed", listed)):
            if warm:
                await _time(s, recipients, registry)  # fill the cache
            rows[label].append(await _time(s, recipients, registry))
    for label, samples in rows.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        print(f"{name:<28} {label:<11} {wall:8.2f} us wall {cpu:8.2f} us CPU per check")


async def _wait_for_redis(url: str, timeout: float = 10.0) -> None:
    """Until the new server answers PING (a deadline, no fixed sleep)."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if await client.ping():
                    return
            except OSError:
                pass
            except Exception:  # redis ConnectionError while it starts
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not answer PING")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        local = LocalStore(Path(tmp) / "suppression.db")
        await local.open()
        await local.add(_entries(args.entries))
        await _case("disabled", local, args, enabled=False, warm=False)
        await _case("local (SQLite + dict)", local, args, enabled=True, warm=False)
        await local.close()
        proc = None
        url = args.redis_url
        if not url and shutil.which("redis-server"):
            port = _free_port()
            proc = await asyncio.create_subprocess_exec(
                "redis-server",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                stdout=asyncio.subprocess.DEVNULL,
            )
            url = f"redis://127.0.0.1:{port}/0"
            await _wait_for_redis(url)
        if url:
            try:
                redis = RedisSuppressionStore(RedisSettings(url=url, key_prefix="bench"))
                for start in range(0, args.entries, 1000):
                    await redis.add(_entries(args.entries)[start : start + 1000])
                await _case("redis, cache hit", redis, args, enabled=True, warm=True)
                nocache = RedisSuppressionStore(RedisSettings(url=url, key_prefix="bench"))
                args_miss = argparse.Namespace(**{**vars(args), "checks": args.checks // 10})
                s = SuppressionSettings(enabled=True, cache_size=0)
                await _case_nocache(nocache, s, args_miss)
                await redis.close()
                await nocache.close()
            finally:
                if proc is not None:
                    proc.terminate()
                    await proc.wait()


async def _case_nocache(
    store: SuppressionStore, settings: SuppressionSettings, args: argparse.Namespace
) -> None:
    s = Suppressions(settings, store)
    samples = []
    for run in range(args.runs):
        samples.append(
            await _time(s, [f"m{run}-{i}@dest.test" for i in range(args.checks)], Registry())
        )
    wall = statistics.median(w for w, _ in samples)
    cpu = statistics.median(c for _, c in samples)
    label = f"{'redis, cache miss':<28} {'not listed':<11}"
    print(f"{label} {wall:8.2f} us wall {cpu:8.2f} us CPU per check")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=20000, help="checks per case and run")
    parser.add_argument("--entries", type=int, default=100000, help="entries on the list")
    parser.add_argument("--runs", type=int, default=3, help="runs; the median is reported")
    parser.add_argument("--redis-url", default="", help="an existing Redis (default: start one)")
    asyncio.run(main(parser.parse_args()))
