"""Policy dispatch micro-benchmark: what one dispatch costs by where its handler runs.

    python bench/policy_dispatch_bench.py [--dispatches 20000] [--concurrency 1,50] [--runs 3]

For each handler kind (none registered, inline plain function, coroutine, plain function
in the policy thread pool, and the bundled policy's ``smtp_server_message_received``
handler inline and in the pool) ``concurrency`` tasks run ``dispatches`` dispatches in
total through ``Registry.dispatch`` (timeout, result check and all). Reports wall and
CPU microseconds per dispatch (CPU: this process, all threads), median over runs. The
machine is shared: compare rows of one run, not numbers across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from engine.policy.events import SMTP_SERVER_MAIL_FROM, SMTP_SERVER_MESSAGE_RECEIVED, Registry
from engine.policy.loader import load_policy
from engine.policy.message import PolicyMessage

BODY = b"From: a@src.test\r\nTo: b@dst.test\r\nSubject: bench\r\n\r\n" + b"x" * 4000 + b"\r\n"


def plain(sender: str, meta: dict) -> None:
    return None


async def coroutine(sender: str, meta: dict) -> None:
    return None


def kinds(pool: ThreadPoolExecutor) -> dict[str, tuple[Registry, Any, Any]]:
    """name -> (registry, event, argument factory)."""
    mail_args = lambda: ("a@src.test", {})  # noqa: E731
    msg_args = lambda: (PolicyMessage("id", "a@src.test", "b@dst.test", BODY, {}), {})  # noqa: E731
    out: dict[str, tuple[Registry, Any, Any]] = {
        "no handler": (Registry(), SMTP_SERVER_MAIL_FROM, mail_args)
    }
    for name, fn, inline in (
        ("inline plain", plain, True),
        ("coroutine", coroutine, False),
        ("plain in pool", plain, False),
    ):
        reg = Registry(executor=pool)
        reg.on("smtp_server_mail_from", inline=inline)(fn)
        out[name] = (reg, SMTP_SERVER_MAIL_FROM, mail_args)
    # The bundled policy's message handler (queues.toml tenant/campaign, DKIM request),
    # registered both ways.
    bundled = load_policy("policy", executor=pool)
    (handler,) = bundled._handlers[SMTP_SERVER_MESSAGE_RECEIVED.name]
    for name, inline in (("inline", True), ("in pool", False)):
        reg = Registry(executor=pool)
        reg.on("smtp_server_message_received", inline=inline)(handler.fn)
        out[f"bundled message_received {name}"] = (reg, SMTP_SERVER_MESSAGE_RECEIVED, msg_args)
    return out


async def trial(
    reg: Registry, event: Any, make_args: Any, n: int, tasks: int
) -> tuple[float, float]:
    async def worker(count: int) -> None:
        for _ in range(count):
            await reg.dispatch(event, *make_args())

    wall, cpu = time.perf_counter(), time.process_time()
    async with asyncio.TaskGroup() as tg:
        for i in range(tasks):
            tg.create_task(worker(n // tasks + (i < n % tasks)))
    return (time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6


async def main(args: argparse.Namespace) -> None:
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="nimbus-policy")
    print(f"{'handler':34} {'tasks':>5} {'wall us':>9} {'cpu us':>9}")
    for name, (reg, event, make_args) in kinds(pool).items():
        for tasks in args.concurrency:
            runs = [
                await trial(reg, event, make_args, args.dispatches, tasks) for _ in range(args.runs)
            ]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            print(f"{name:34} {tasks:>5} {wall:>9.1f} {cpu:>9.1f}")
    pool.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dispatches", type=int, default=20000)
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 50]
    )
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
