"""Memory per queued message: what a node holds in RAM for each message it has spooled.

    python -m bench.memory_bench [--messages 100000]

Builds the records a node keeps for a waiting message exactly as SMTP reception
makes them (Message with the reception meta, in the scheduler's heap and index, and
its id and creation time in the spool's held index) and reports traced bytes per
message. Bodies are never in memory (they stay in the spool), so the message size
does not matter here.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

from engine.queues.scheduled import Scheduler
from engine.records import Message, new_message_id
from engine.storage.held import HeldMessages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    n = parser.parse_args().messages
    scheduler = Scheduler(lambda m: None)
    held = HeldMessages()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    now = time.time()
    for i in range(n):
        meta = {
            "reception_protocol": "ESMTP",
            "received_from": f"10.1.2.3:{40000 + i % 20000}",
            "received_via": "0.0.0.0:2525",
            "hostname": "mta-0.nimbus",
            "ehlo_domain": "client.example.com",
        }
        msg = Message(
            id=new_message_id(),
            sender="bounces+1234@sender.example.com",
            recipient=f"user{i}@example.net",
            queue="example.net",
            meta=meta,
            created=now,
            due=now + 600 + i,
            size=4096,
        )
        scheduler.insert(msg)
        held.add(msg.id, msg.created)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(
        f"{n} queued messages: {(after - before) / n:.0f} bytes per message "
        f"({(after - before) / 2**20:.1f} MiB total)"
    )


if __name__ == "__main__":
    main()
