"""Admin controls on a node in this loop: what operators see and what holds mail."""

from __future__ import annotations

import aiohttp
import aiosmtplib

from tests.support.node import running_node
from tests.support.receiver import Receiver


async def test_suspended_ready_queue_holds_mail_and_says_why(tmp_path):
    """A suspend-ready-q entry keeps mail queued and ready-q-states shows the reason."""
    async with Receiver() as rx:
        async with running_node(
            tmp_path, **{"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"}
        ) as node:
            name = f"unspecified->mx_list:127.0.0.1:{rx.port}@smtp_client"
            base = f"http://127.0.0.1:{node.http_port}/api/admin"
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    f"{base}/suspend-ready-q/v1",
                    json={"name": name, "reason": "maintenance", "duration": "1h"},
                ) as resp:
                    assert resp.status == 200, await resp.text()
                await aiosmtplib.send(
                    b"Subject: s\r\n\r\nbody\r\n",
                    sender="a@src.test",
                    recipients=["b@dst.test"],
                    hostname="127.0.0.1",
                    port=node.smtp_port,
                    start_tls=False,
                )
                await node.records.wait(lambda r: r["type"] == "Reception")
                async with http.get(f"{base}/ready-q-states/v1") as resp:
                    states = (await resp.json())["states_by_ready_queue"]
            scheduled = node.scheduler.messages()
    assert states[name]["suspended"]["context"] == "maintenance"
    assert [m.recipient for m in scheduled] == ["b@dst.test"] and rx.messages == []
