"""TSA overrides applied by a node, and policy-configured webhook log hooks end to end."""

from __future__ import annotations

import asyncio
import time

import aiosmtplib
from aiohttp import web

from engine.shaping.overlay import ConfigOverride
from tests.support.node import running_node
from tests.support.receiver import Receiver


async def send(node, recipient: str) -> None:
    await aiosmtplib.send(
        b"Subject: o\r\n\r\nbody\r\n",
        sender="a@src.test",
        recipients=[recipient],
        hostname="127.0.0.1",
        port=node.smtp_port,
        start_tls=False,
    )


async def test_tsa_set_config_override_changes_the_egress_path(tmp_path):
    """A SetConfig override (enable_tls=Required) in the overlay applies to new deliveries:
    a receiver without STARTTLS now gets a TLS-required transient failure, not the mail."""
    async with Receiver() as rx:
        async with running_node(
            tmp_path, **{"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"}
        ) as node:
            await send(node, "first@dst.test")
            await node.records.wait(lambda r: r["type"] == "Delivery")
            node.overlay.upsert(
                ConfigOverride(
                    id="tsa-1",
                    expires=time.time() + 60,
                    domain="dst.test",
                    name="enable_tls",
                    value="Required",
                    reason="test rule",
                )
            )
            await send(node, "second@dst.test")
            [fail] = await node.records.wait(lambda r: r["type"] == "TransientFailure")
    assert [m.recipients for m in rx.messages] == [["first@dst.test"]]
    assert fail["recipient"] == "second@dst.test"
    assert "TLS" in fail["response"]["content"]


async def test_policy_log_hook_receives_matching_records(tmp_path):
    """nimbus.configure_log_hook POSTs the hook's record types as JSON arrays."""
    received: list[dict] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.extend(await request.json())
        arrived.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    policy = f"""
    def register(nimbus):
        nimbus.configure_log_hook(name="webhook", url="http://127.0.0.1:{port}/hook",
                                  record_types=["Delivery"], max_latency=0.1)
    """
    try:
        async with Receiver() as rx:
            async with running_node(
                tmp_path,
                policy=policy,
                **{"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"},
            ) as node:
                await send(node, "hooked@dst.test")
                async with asyncio.timeout(15):
                    await arrived.wait()
    finally:
        await runner.cleanup()
    assert [(r["type"], r["recipient"]) for r in received] == [("Delivery", "hooked@dst.test")]


SELECTION_POLICY = """
from engine.config.throttle_spec import ThrottleSpec

def register(nimbus):
    @nimbus.on("get_egress_pool")
    def pool(name):
        return nimbus.EgressPool(name=name, entries=(("src-a", 1), ("src-b", 1)))

    @nimbus.on("get_egress_source")
    def source(name):
        return nimbus.EgressSource(name=name)

    @nimbus.on("get_egress_path_config")
    def path(routing_domain, egress_source, site_name):
        return nimbus.EgressPathConfig(source_selection_rate=ThrottleSpec.parse("1/min"))
"""


async def test_source_selection_rate_moves_on_to_the_next_source_then_waits(tmp_path):
    """With source_selection_rate 1/min, a second message takes the pool's other source and
    a third, with both spent, stays scheduled instead of being sent."""
    async with Receiver() as rx:
        async with running_node(
            tmp_path,
            policy=SELECTION_POLICY,
            **{"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"},
        ) as node:
            for n in range(2):
                await send(node, f"u{n}@dst.test")
                await node.records.wait(lambda r: r["type"] == "Delivery", count=n + 1)
            await send(node, "u2@dst.test")
            await node.records.wait(lambda r: r["type"] == "Reception", count=3)
            async with asyncio.timeout(10):
                while not node.scheduler.messages():
                    await asyncio.sleep(0.02)  # routing hands it back asynchronously
            waiting = node.scheduler.messages()
    sources = sorted(r["egress_source"] for r in node.records.of("Delivery"))
    assert sources == ["src-a", "src-b"]
    assert [m.recipient for m in waiting] == ["u2@dst.test"]
    assert len(rx.messages) == 2
