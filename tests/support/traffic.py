"""A node with real traffic for status tests: deliveries to a real receiver, and
deferred mail waiting in a scheduled queue.

    async with node_with_traffic(tmp_path, delivered=3, deferred=2) as node:
        ...  # 3 Delivery records; 2 messages for held.test deferred (451), scheduled again
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiosmtplib

from tests.support.node import running_node
from tests.support.receiver import Receiver

HELD = "held.test"


def deferring_receiver() -> Receiver:
    """A receiver that takes everything but mail for held.test, which it defers (451)."""
    return Receiver(
        rcpt=lambda addr, n: "451 4.3.0 try later" if addr.endswith(f"@{HELD}") else None
    )


@contextlib.asynccontextmanager
async def node_with_traffic(
    tmp_path, delivered: int, deferred: int, **settings: Any
) -> AsyncIterator[Any]:
    """A node whose sink is a real receiver, after ``delivered`` messages were delivered
    and ``deferred`` messages to held.test were deferred (they wait in its scheduled queue)."""
    async with deferring_receiver() as rx:
        async with running_node(
            tmp_path, **{"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}", **settings}
        ) as node:
            recipients = [f"r{i}@dst.test" for i in range(delivered)]
            recipients += [f"h{i}@{HELD}" for i in range(deferred)]
            for rcpt in recipients:
                await aiosmtplib.send(
                    b"Subject: s\r\n\r\nbody\r\n",
                    sender="a@src.test",
                    recipients=[rcpt],
                    hostname="127.0.0.1",
                    port=node.smtp_port,
                    start_tls=False,
                )
            await node.records.wait(lambda r: r["type"] == "Delivery", count=delivered)
            await node.records.wait(lambda r: r["type"] == "TransientFailure", count=deferred)
            yield node
