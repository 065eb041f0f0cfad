"""What ``nimbus_oldest_message_age_seconds`` costs: the spool's held index against a scan.

    python -m bench.held_bench [--messages 100000]

``HeldMessages`` (``engine/storage/held.py``) is updated on every save and removal and
read on every scrape. This times, for ``messages`` held: ``add`` and ``discard`` per
message, ``oldest`` on a scrape (with nothing stale, and amortized while messages are
removed in random order, a scrape every 1,000 removals), and for comparison the scan it
avoids: ``min(created)`` over that many ``Message`` records. Results go to stdout.
"""

from __future__ import annotations

import argparse
import random
import time

from engine.records import Message, new_message_id
from engine.storage.held import HeldMessages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    n = parser.parse_args().messages
    now = time.time()
    ids = [new_message_id() for _ in range(n)]
    held = HeldMessages()
    started = time.perf_counter()
    for i, id in enumerate(ids):
        held.add(id, now + i * 0.001)
    add = (time.perf_counter() - started) / n
    started = time.perf_counter()
    for _ in range(1000):
        held.oldest()
    oldest = (time.perf_counter() - started) / 1000
    gone = ids[:]
    random.Random(1).shuffle(gone)
    worst, started = 0.0, time.perf_counter()
    for k in range(0, n, 1000):
        held.discard(gone[k : k + 1000])
        began = time.perf_counter()
        held.oldest()
        worst = max(worst, time.perf_counter() - began)
    discard = (time.perf_counter() - started) / n
    records = [
        Message(
            id=id, sender="s@a.test", recipient="r@b.test", queue="b.test", created=now, due=now
        )
        for id in ids
    ]
    started = time.perf_counter()
    min(m.created for m in records)
    scan = time.perf_counter() - started
    print(
        f"{n} held: add {add * 1e6:.2f} us/message, discard (+ a scrape per 1000) "
        f"{discard * 1e6:.2f} us/message, oldest {oldest * 1e6:.2f} us per scrape "
        f"(worst while removing {worst * 1e3:.2f} ms); a scan instead: {scan * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
