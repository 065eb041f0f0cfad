"""Scale-in transfer benchmark: how fast two stopping nodes hand their spools to a peer.

    .venv/bin/python -m bench.xfer_bench                 # 3,000 messages, 3 trials
    .venv/bin/python -m bench.xfer_bench --messages 600 --trials 1 --markdown ''

Per trial: three ``nimbus mta`` processes on loopback (cluster secret, peers = the other
two), a receiver in this process answering every RCPT ``451``; the messages are injected
over SMTP into nodes 1 and 2 (half each) and wait until each has one TransientFailure
(one attempt made); then nodes 1 and 2 get SIGTERM at the same moment. Measured: the
seconds from SIGTERM until both have exited, each node's ``scale_in_done`` seconds, the
transfer rate (messages moved / the slower node's seconds), and the checks: every id on
node 0 (0 lost), none left on 1 and 2, duplicates (ids both on node 0 and left behind),
and the attempt count kept (every XferIn record says ``num_attempts >= 1``).
Writes its section into BENCHMARKS.md (between the xfer_bench markers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiosmtplib

from tests.support.node import NimbusProcess
from tests.support.peers import free_port
from tests.support.receiver import Receiver

SECRET = "bench-cluster-secret-0123456789"
BEGIN = "<!-- BEGIN xfer_bench.py results (generated; replaced on every run) -->"
END = "<!-- END xfer_bench.py results -->"
BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


async def _inject(port: int, count: int, tag: str) -> None:
    async def session(first: int, last: int) -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as smtp:
            for i in range(first, last):
                await smtp.sendmail(
                    "bench@src.test",
                    [f"{tag}-{i}@dst.test"],
                    f"Subject: {i}\r\n\r\n" + ("x" * 76 + "\r\n") * 52,
                )

    step = max(1, count // 10)
    await asyncio.gather(*(session(i, min(i + step, count)) for i in range(0, count, step)))


def _ids(spool: Path) -> set[str]:
    conn = sqlite3.connect(spool / "spool.db")
    try:
        return {row[0] for row in conn.execute("SELECT id FROM messages")}
    finally:
        conn.close()


async def trial(messages: int, workdir: Path) -> dict:
    per_node = messages // 2
    async with Receiver(rcpt=lambda a, n: "451 4.3.0 later") as rx:
        ports = [free_port() for _ in range(3)]
        nodes: list[NimbusProcess] = []
        try:
            for i, port in enumerate(ports):
                d = workdir / f"mta-{i}"
                d.mkdir(parents=True)
                peers = ",".join(f"http://127.0.0.1:{p}" for j, p in enumerate(ports) if j != i)
                nodes.append(
                    await NimbusProcess.start(
                        d,
                        {
                            "NIMBUS_NODE_ID": f"mta-{i}",
                            "NIMBUS_HTTP_LISTEN": f"127.0.0.1:{port}",
                            "NIMBUS_SINK_ENABLED": "true",
                            "NIMBUS_SINK_ENDPOINT": f"127.0.0.1:{rx.port}",
                            "NIMBUS_CLUSTER_SECRET": SECRET,
                            "NIMBUS_CLUSTER_PEERS": peers,
                            "NIMBUS_LOG_LEVEL": "info",
                        },
                    )
                )
            await asyncio.gather(*(_inject(nodes[i].smtp_port, per_node, f"n{i}") for i in (1, 2)))
            for i in (1, 2):
                await nodes[i].wait_records(
                    lambda r: r["type"] == "TransientFailure", per_node, timeout=300
                )
            started = time.monotonic()
            for i in (1, 2):
                nodes[i].terminate()
            codes = [await nodes[i].wait(timeout=180) for i in (1, 2)]
            wall = time.monotonic() - started
        finally:
            for node in nodes:
                node.kill9()
                await node.wait()
    sent = {r["id"] for i in (1, 2) for r in nodes[i].records() if r["type"] == "Reception"}
    on_0 = _ids(workdir / "mta-0" / "spool")
    left = _ids(workdir / "mta-1" / "spool") | _ids(workdir / "mta-2" / "spool")
    xfer_in = [r for r in nodes[0].records() if r["type"] == "XferIn"]
    done = [
        ln for i in (1, 2) for ln in nodes[i].stderr_lines if ln.get("event") == "scale_in_done"
    ]
    seconds = max((d.get("seconds", 0.0) for d in done), default=0.0)
    moved = sum(d.get("moved", 0) for d in done)
    return {
        "messages": len(sent),
        "moved": moved,
        "wall_seconds": round(wall, 3),
        "transfer_seconds": seconds,
        "rate": round(moved / seconds, 1) if seconds else 0.0,
        "lost": len(sent - on_0 - left),
        "left": len(left),
        "duplicates": len(on_0 & left),
        "attempts_kept": all(r["num_attempts"] >= 1 for r in xfer_in) and len(xfer_in) == moved,
        "exit_codes": codes,
    }


def markdown(results: list[dict], messages: int) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [
        f"| {i + 1} | {r['messages']:,} | {r['moved']:,} | {r['transfer_seconds']:.2f} | "
        f"{r['wall_seconds']:.2f} | {r['rate']:,.0f} | {r['lost']} | {r['duplicates']} | "
        f"{r['left']} | {'yes' if r['attempts_kept'] else 'NO'} | {r['exit_codes']} |"
        for i, r in enumerate(results)
    ]
    med_t = statistics.median(r["transfer_seconds"] for r in results)
    med_r = statistics.median(r["rate"] for r in results)
    return "\n".join(
        [
            BEGIN,
            f"## Scale-in transfer: two nodes stopped at once ({when}, bench/xfer_bench.py)",
            "",
            f"{messages:,} messages of 4 KB, queued behind a receiver answering 451 on two of "
            "three `nimbus mta` nodes (one attempt made each); both get SIGTERM at the same "
            "moment and hand their spools to the third (the other stopping node answers 503 "
            "`stopping` and is left out). Transfer = the slower node's `scale_in_done` seconds; "
            "wall = SIGTERM until both exited (drain included).",
            "",
            "| trial | messages | moved | transfer s | wall s | msgs/s | lost | duplicates "
            "| left behind | attempts kept | exit codes |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Median: {med_t:.2f} s to transfer, {med_r:,.0f} messages/s. Machine: "
            f"{os.cpu_count()} CPUs, load generator, receiver and all three nodes on the box.",
            END,
        ]
    )


def write_section(text: str, path: Path) -> None:
    old = path.read_text()
    if BEGIN in old and END in old:
        head, _, rest = old.partition(BEGIN)
        _, _, tail = rest.partition(END)
        new = head + text + tail
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


async def main_async(args: argparse.Namespace) -> list[dict]:
    results = []
    for n in range(args.trials):
        with tempfile.TemporaryDirectory(prefix="xfer-bench-", dir=args.workdir) as tmp:
            result = await trial(args.messages, Path(tmp))
        print(json.dumps({"trial": n + 1, **result}), flush=True)
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000, help="messages moved per trial")
    parser.add_argument("--trials", type=int, default=3, help="trials (median reported)")
    parser.add_argument("--workdir", default=None, help="temp directories here (default /tmp)")
    parser.add_argument(
        "--markdown", default=str(BENCHMARKS), help="file to write the section into ('' = none)"
    )
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    text = markdown(results, args.messages)
    print(text)
    if args.markdown:
        write_section(text, Path(args.markdown))


if __name__ == "__main__":
    main()
