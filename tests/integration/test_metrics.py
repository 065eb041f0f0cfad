"""GET /metrics: Prometheus exposition with the nimbus_ names the chart's dashboards use."""

from __future__ import annotations

import aiohttp
import aiosmtplib
from prometheus_client.parser import text_string_to_metric_families

from tests.support.node import running_node
from tests.support.receiver import Receiver


async def scrape(node) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{node.http_port}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def test_metrics_count_reception_and_delivery(tmp_path):
    """After one SMTP message is relayed, received and delivered counters read 1 and the
    gauges for spool, queues and connections are exported."""
    async with Receiver() as rx:
        async with running_node(
            tmp_path, **{"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"}
        ) as node:
            await aiosmtplib.send(
                b"Subject: m\r\n\r\nbody\r\n",
                sender="a@src.test",
                recipients=["b@dst.test"],
                hostname="127.0.0.1",
                port=node.smtp_port,
                start_tls=False,
            )
            [delivery] = await node.records.wait(lambda r: r["type"] == "Delivery")
            samples = await scrape(node)
    site = delivery["site"]
    assert samples[("nimbus_messages_received_total", (("listener", "esmtp_listener"),))] == 1
    assert samples[("nimbus_messages_delivered_total", (("queue", site),))] == 1
    assert ("nimbus_spool_messages", ()) in samples
    assert ("nimbus_spool_bytes", ()) in samples and samples[("nimbus_spool_bytes", ())] > 0
    assert samples[("nimbus_spool_commits_total", ())] >= 1
    assert (
        "nimbus_connections_open",
        (("direction", "inbound"), ("service", "esmtp_listener")),
    ) in samples
    assert samples[("nimbus_smtp_connections_total", (("listener", "esmtp_listener"),))] == 1
    assert samples[("nimbus_delivery_duration_seconds_count", ())] == 1
