"""smtp-source -> nimbus -> smtp-sink: the basic relay path with real Postfix peers."""

from __future__ import annotations

from collections import Counter

from tests.support.node import running_node
from tests.support.peers import SmtpSink, free_port, smtp_source


async def test_thousand_messages_relayed_with_records_one_to_one(tmp_path):
    """1,000 messages from smtp-source all reach smtp-sink; Reception and Delivery match 1:1."""
    sink_port = free_port()
    async with SmtpSink(sink_port):
        async with running_node(
            tmp_path, **{"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{sink_port}"}
        ) as node:
            await smtp_source(node.smtp_port, messages=1000, sessions=20, size=4096)
            delivered = await node.records.wait(
                lambda r: r["type"] == "Delivery", count=1000, timeout=60
            )
            received = node.records.of("Reception")
    assert len(received) == 1000
    assert len(delivered) == 1000
    assert Counter(r["id"] for r in received) == Counter(r["id"] for r in delivered)
    assert {r["response"]["code"] for r in delivered} == {250}
    assert node.records.of("TransientFailure") == [] and node.records.of("Bounce") == []
