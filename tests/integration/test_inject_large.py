"""Large and partly bad injections: the loop stays responsive while thousands of recipients
are built, the recipient limit is a 413, and a bad recipient fails alone (KumoMTA)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp

from tests.support.node import running_node
from tests.support.receiver import Receiver

AUTH = {"Authorization": aiohttp.encode_basic_auth("alice", "s3cret")}


def node_for(tmp_path, rx: Receiver, auth_dir, **settings):
    return running_node(
        tmp_path,
        **{
            "http.auth_dir": str(auth_dir),
            "sink.enabled": True,
            "sink.endpoint": f"127.0.0.1:{rx.port}",
            "delivery.shutdown_deadline": 1.0,
            **settings,
        },
    )


def request(recipients: list[dict]) -> dict:
    return {
        "envelope_sender": "bounce@src.test",
        "content": {
            "subject": "Hi {{ name }}",
            "from": {"email": "news@src.test", "name": "News"},
            "text_body": "Hello {{ name }}, your code is {{ code }}.",
            "html_body": "<p>Hello {{ name }}, your code is <b>{{ code }}</b>.</p>",
        },
        "substitutions": {"code": "X1"},
        "recipients": recipients,
    }


class StallProbe:
    """Ticks every ``interval`` seconds on the loop and keeps the worst lateness: how long
    the loop was held by something else."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.worst = 0.0
        self.worst_at = 0.0  # seconds after the probe started

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            expected = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            late = loop.time() - expected
            if late > self.worst:
                self.worst, self.worst_at = late, expected - started


async def timed(coro) -> float:
    started = time.perf_counter()
    await coro
    return time.perf_counter() - started


async def liveness(http: aiohttp.ClientSession, port: int) -> None:
    async with http.get(f"http://127.0.0.1:{port}/api/check-liveness/v1") as resp:
        assert resp.status == 200 and await resp.text() == "OK"


async def banner(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert (await reader.readline()).startswith(b"220 ")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_5000_recipient_injection_leaves_the_loop_responsive(tmp_path, auth_dir):
    """While a 5,000-recipient templated injection is built and spooled, liveness and an SMTP
    banner each answer within 0.5 s, and the loop is never held for 0.5 s."""
    n = 5000
    body = request([{"email": f"u{i}@dst.test", "name": f"User {i}"} for i in range(n)])
    probe = StallProbe()
    liveness_times: list[float] = []
    banner_times: list[float] = []
    async with Receiver() as rx:
        async with node_for(tmp_path, rx, auth_dir) as node:
            url = f"http://127.0.0.1:{node.http_port}/api/inject/v1"
            timeout = aiohttp.ClientTimeout(total=300)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                probing = asyncio.create_task(probe.run())
                started = time.perf_counter()
                post = asyncio.create_task(http.post(url, json=body, headers=AUTH))
                try:
                    while not post.done():
                        liveness_times.append(await timed(liveness(http, node.http_port)))
                        banner_times.append(await timed(banner(node.smtp_port)))
                        await asyncio.wait({post}, timeout=0.2)
                    async with await post as resp:
                        status, result = resp.status, await resp.json()
                    elapsed = time.perf_counter() - started
                finally:
                    probing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await probing
                    post.cancel()
    print(
        f"\n{n} recipients in {elapsed:.1f}s; max loop stall {probe.worst * 1000:.0f} ms "
        f"at {probe.worst_at:.1f}s; "
        f"liveness max {max(liveness_times) * 1000:.0f} ms over {len(liveness_times)}; "
        f"banner max {max(banner_times) * 1000:.0f} ms over {len(banner_times)}"
    )
    assert status == 200 and result["success_count"] == n and result["fail_count"] == 0
    assert len(liveness_times) >= 3 and len(banner_times) >= 3  # probed during the request
    assert max(liveness_times) < 0.5 and max(banner_times) < 0.5
    assert probe.worst < 0.5


async def test_more_recipients_than_the_limit_is_413_naming_the_limit(tmp_path, auth_dir):
    """10,001 recipients (the default limit is 10,000) get 413 with a JSON reason naming the
    limit and its setting; nothing is spooled."""
    body = request([{"email": f"u{i}@dst.test"} for i in range(10_001)])
    async with Receiver() as rx:
        async with node_for(tmp_path, rx, auth_dir) as node:
            url = f"http://127.0.0.1:{node.http_port}/api/inject/v1"
            async with aiohttp.ClientSession() as http:
                async with http.post(url, json=body, headers=AUTH) as resp:
                    status, result = resp.status, await resp.json()
            receptions = node.records.of("Reception")
    assert status == 413
    assert result["field"] == "recipients"
    assert "limit of 10000" in result["error"] and "http.max_recipients" in result["error"]
    assert receptions == []


async def test_invalid_recipients_fail_alone_and_the_others_are_delivered(tmp_path, auth_dir):
    """3 good and 2 invalid recipients: 200, success_count 3, fail_count 2, exactly the two
    listed with why; the 3 are spooled (Reception) and delivered."""
    good = ["a@dst.test", "b@dst.test", "c@dst.test"]
    bad = ["not-an-address", "a..b@dst.test"]
    recipients = [good[0], bad[0], good[1], bad[1], good[2]]
    body = request([{"email": r} for r in recipients])
    async with Receiver() as rx:
        async with node_for(tmp_path, rx, auth_dir) as node:
            url = f"http://127.0.0.1:{node.http_port}/api/inject/v1"
            async with aiohttp.ClientSession() as http:
                async with http.post(url, json=body, headers=AUTH) as resp:
                    status, result = resp.status, await resp.json()
            await rx.wait_for(3)
            receptions = node.records.of("Reception")
    assert status == 200, result
    assert result["success_count"] == 3 and result["fail_count"] == 2
    assert result["failed_recipients"] == bad
    assert result["errors"][0].startswith("not-an-address: recipients[1].email: expected an")
    assert result["errors"][1].startswith("a..b@dst.test: recipients[3].email: not usable in")
    assert sorted(r["recipient"] for r in receptions) == good
    assert sorted(m.recipients[0] for m in rx.messages) == good
