"""Spool micro-benchmark: what a durable save costs, alone and with group commit.

    python -m bench.spool_bench [--messages 3000] [--size 4096] [--writers 1,20,100]

For each writer count, ``writers`` tasks save ``messages`` messages in total, each
save awaited (as the SMTP/HTTP listeners do before replying). Reports saves/s,
fsynced commits/s and requests per commit. Results go to stdout as a table.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

from engine.config.settings import SpoolSettings
from engine.records import Message, new_message_id
from engine.storage.spool import Spool


async def trial(writers: int, messages: int, size: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        commits = 0

        def on_commit(_: int) -> None:
            nonlocal commits
            commits += 1

        spool = Spool(SpoolSettings(dir=tmp, min_free_space=0), on_commit=on_commit)
        await spool.recover()
        body = b"x" * size
        per_writer = messages // writers

        async def writer() -> None:
            for _ in range(per_writer):
                now = time.time()
                msg = Message(
                    id=new_message_id(),
                    sender="a@b.test",
                    recipient="c@d.test",
                    queue="d.test",
                    created=now,
                    due=now,
                    size=size,
                )
                await spool.save([(msg, body)])

        started = time.perf_counter()
        cpu0 = time.process_time()
        await asyncio.gather(*(writer() for _ in range(writers)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        await spool.close()
        total = per_writer * writers
        return {
            "writers": writers,
            "saves_per_s": total / elapsed,
            "commits_per_s": commits / elapsed,
            "per_commit": total / max(commits, 1),
            "cpu_ms_per_save": cpu * 1000 / total,
        }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--writers", default="1,20,100")
    args = parser.parse_args()
    print(
        f"{'writers':>8} {'saves/s':>9} {'commits/s':>10} {'saves/commit':>13} {'CPU ms/save':>12}"
    )
    for w in (int(x) for x in args.writers.split(",")):
        r = await trial(w, args.messages, args.size)
        print(
            f"{r['writers']:>8} {r['saves_per_s']:>9.0f} {r['commits_per_s']:>10.0f} "
            f"{r['per_commit']:>13.1f} {r['cpu_ms_per_save']:>12.3f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
