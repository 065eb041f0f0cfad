"""GET /metrics: Prometheus exposition with the nimbus_ names the chart's dashboards use."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import aiohttp
import aiosmtplib
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_shutdown import ONE_CONNECTION, GatedReceiver, send
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


def unix(rfc3339: str) -> float:
    """A record's ``created_time`` (RFC 3339, microseconds) as unix seconds."""
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def gauge(samples: dict[tuple[str, tuple], float], name: str) -> dict[tuple, float]:
    """The series of one gauge, by label set."""
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def scrape_until(node, done, timeout: float = 20.0) -> dict[tuple[str, tuple], float]:
    """Scrape until ``done(samples)`` holds (routing and delivery run on their own)."""
    async with asyncio.timeout(timeout):
        while not done(samples := await scrape(node)):
            await asyncio.sleep(0.02)  # poll interval of a condition with a deadline
    return samples


async def test_autoscaling_gauges_behind_a_receiver_that_holds_data(tmp_path):
    """Four messages for a receiver that holds the first DATA on the one connection
    allowed: queued 4 (one in flight, three in the ready queue), the site's backlog 3,
    and the oldest age is no more than the time since the first was sent."""
    async with GatedReceiver() as rx:
        sink = {"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"}
        async with running_node(tmp_path, policy=ONE_CONNECTION, **sink) as node:
            started = time.time()
            for n in range(4):
                await send(node.smtp_port, f"m{n}")
            await rx.entered.wait()
            site = (("site", f"mx_list:127.0.0.1:{rx.port}"),)
            samples = await scrape_until(
                node, lambda s: gauge(s, "nimbus_site_backlog_messages").get(site) == 3
            )
            elapsed = time.time() - started
            rx.gate.set()
    assert samples[("nimbus_queued_messages", ())] == 4
    assert samples[("nimbus_spool_messages", ())] == 4
    assert sum(gauge(samples, "nimbus_ready_messages").values()) == 3
    assert 0 < samples[("nimbus_oldest_message_age_seconds", ())] <= elapsed


async def test_autoscaling_gauges_count_deferred_messages_and_their_age(tmp_path):
    """Three messages a receiver defers (451 at RCPT) wait in the scheduled queue for their
    retry: queued 3, no ready backlog left, the oldest age is the time since the earliest
    Reception record's created; once an admin request bounces them, queued and age read 0."""
    async with Receiver(rcpt=lambda address, n: "451 4.3.0 try again later") as rx:
        sink = {"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"}
        async with running_node(tmp_path, **sink) as node:
            for n in range(3):
                await send(node.smtp_port, f"d{n}")
            await node.records.wait(lambda r: r["type"] == "TransientFailure", count=3)
            before = time.time()
            deferred = await scrape_until(
                node, lambda s: not any(gauge(s, "nimbus_site_backlog_messages").values())
            )
            after = time.time()
            async with aiohttp.ClientSession() as http:  # loopback is a trusted admin host
                url = f"http://127.0.0.1:{node.http_port}/api/admin/bounce/v1"
                body = {"domain": "dst.test", "reason": "test over"}
                async with http.post(url, json=body) as resp:
                    assert resp.status == 200, await resp.text()
            empty = await scrape_until(node, lambda s: s[("nimbus_queued_messages", ())] == 0)
    oldest = min(unix(r["created_time"]) for r in node.records.of("Reception"))
    assert deferred[("nimbus_queued_messages", ())] == 3
    assert sum(gauge(deferred, "nimbus_scheduled_messages").values()) == 3
    age = deferred[("nimbus_oldest_message_age_seconds", ())]
    assert before - oldest <= age <= after - oldest
    assert empty[("nimbus_oldest_message_age_seconds", ())] == 0
