"""The status page over HTTP on a node in this loop: access, the JSON counts after real
traffic, escaping of user-controlled strings, and the page's security headers."""

from __future__ import annotations

from typing import Any

import aiohttp
import aiosmtplib
import pytest

from tests.support.node import running_node
from tests.support.receiver import Receiver
from tests.support.traffic import HELD, node_with_traffic

PAGES = ("/", "/status", "/api/admin/status/v1")


async def get(node: Any, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{node.http_port}{path}", **kwargs) as resp:
            body = await (resp.json() if resp.content_type == "application/json" else resp.text())
            return resp.status, body, resp.headers


@pytest.fixture
def admin_dir(tmp_path):
    directory = tmp_path / "admin"
    directory.mkdir()
    (directory / "ops").write_text("pw\n")
    return directory


async def test_untrusted_peer_without_credentials_is_401_and_with_them_200(tmp_path, admin_dir):
    """Outside trusted_hosts the page and its JSON need admin credentials (401 without)."""
    settings = {"http.trusted_hosts": ["192.0.2.0/24"], "http.admin_auth_dir": str(admin_dir)}
    async with running_node(tmp_path, **settings) as node:
        refused = [await get(node, path) for path in PAGES]
        wrong = await get(
            node, "/", headers={"Authorization": aiohttp.encode_basic_auth("ops", "nope")}
        )
        allowed = [
            await get(node, path, headers={"Authorization": aiohttp.encode_basic_auth("ops", "pw")})
            for path in PAGES
        ]
    for status, body, headers in refused:
        assert status == 401 and "trusted host" in body["error"]
        assert headers["WWW-Authenticate"] == 'Basic realm="nimbus-admin"'  # the browser asks
    assert wrong[0] == 401 and wrong[1]["error"] == "invalid admin credentials"
    assert [status for status, _, _ in allowed] == [200, 200, 200]


async def test_untrusted_peer_without_admin_users_is_403(tmp_path):
    """With no admin users configured, an untrusted peer is forbidden outright."""
    async with running_node(tmp_path, **{"http.trusted_hosts": ["192.0.2.0/24"]}) as node:
        answers = [await get(node, path) for path in PAGES]
    assert [(status, "no admin users" in body["error"]) for status, body, _ in answers] == [
        (403, True)
    ] * 3


async def test_json_counts_the_traffic(tmp_path):
    """After 3 deliveries and 2 deferrals: the rates, the held queue, its destination and
    the spool say so; the node is up and Redis/TSA are not configured."""
    async with node_with_traffic(tmp_path, delivered=3, deferred=2) as node:
        status, body, _ = await get(node, "/api/admin/status/v1")
    assert status == 200
    assert (body["node"]["id"], body["node"]["state"], body["node"]["why"]) == (
        "test-node",
        "up",
        None,
    )
    rates = {r["type"]: (r["last_1m"], r["last_5m"]) for r in body["rates"]}
    assert rates["Reception"] == (5, 5) and rates["Delivery"] == (3, 3)
    assert rates["TransientFailure"] == (2, 2)
    scheduled = body["queues"]["scheduled"]
    assert (scheduled["messages"], scheduled["queues"]) == (2, 1)
    [held] = scheduled["top"]
    assert (held["name"], held["count"], held["suspended"]) == (HELD, 2, None)
    assert held["oldest_age_seconds"] >= 0
    assert body["queues"]["destinations"] == [{"domain": HELD, "count": 2}]
    assert body["spool"]["messages"] == 2 and body["spool"]["disk_total_bytes"] > 0
    assert body["health"]["redis"]["state"] == body["health"]["tsa"]["state"] == "not configured"
    assert body["holds"] == [] and body["transfers"] == [] and body["bounces"] == []
    assert [w["name"] for w in body["node"]["workers"]] == [
        "DKIM signing processes",
        "policy handler threads",
    ]


async def test_bounces_show_by_classification(tmp_path):
    """A 550 from the receiver becomes one Bounce, counted under its classification."""
    async with Receiver(rcpt=lambda addr, n: "550 5.1.1 no such user") as rx:
        async with running_node(
            tmp_path, **{"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"}
        ) as node:
            await aiosmtplib.send(
                b"Subject: s\r\n\r\nbody\r\n",
                sender="a@src.test",
                recipients=["gone@dst.test"],
                hostname="127.0.0.1",
                port=node.smtp_port,
                start_tls=False,
            )
            [bounce] = await node.records.wait(lambda r: r["type"] == "Bounce")
            _, body, _ = await get(node, "/api/admin/status/v1")
    assert body["bounces"] == [
        {"classification": bounce["bounce_classification"], "last_5m": 1, "total": 1}
    ]


EVIL = '<img src=x onerror="alert(1)">'


async def test_html_escapes_queue_names_and_suspension_reasons(tmp_path):
    """A suspension reason and a tenant in a queue name, both markup, arrive escaped."""
    async with node_with_traffic(tmp_path, delivered=0, deferred=1) as node:
        base = f"http://127.0.0.1:{node.http_port}/api/admin"
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{base}/rebind/v1", json={"domain": HELD, "data": {"tenant": EVIL}, "reason": "t"}
            ) as resp:
                assert resp.status == 200, await resp.text()
            # Rebound, it is tried at once and deferred again, now in the tenant's queue.
            await node.records.wait(lambda r: r["type"] == "TransientFailure", count=2)
            async with http.post(
                f"{base}/suspend/v1", json={"reason": EVIL, "domain": HELD, "duration": "1h"}
            ) as resp:
                assert resp.status == 200, await resp.text()
        status, html, headers = await get(node, "/")
        _, body, _ = await get(node, "/api/admin/status/v1")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert [q["name"] for q in body["queues"]["scheduled"]["top"]] == [f"{EVIL}@{HELD}"]
    assert [h["reason"] for h in body["holds"]] == [EVIL]
    escaped = "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;"
    assert "<img" not in html
    assert f"{escaped}@{HELD}" in html  # the queue name
    assert html.count(escaped) >= 3  # queue name, its Suspended cell, the hold's reason


async def test_page_is_locked_down(tmp_path):
    """The page allows only its own nonce'd style and script and same-origin fetches."""
    async with running_node(tmp_path) as node:
        _, html, headers = await get(node, "/status")
        _, _, json_headers = await get(node, "/api/admin/status/v1")
    csp = headers["Content-Security-Policy"]
    nonce = csp.split("'nonce-", 1)[1].split("'", 1)[0]
    assert csp.startswith("default-src 'none';") and "connect-src 'self'" in csp
    assert f'<script nonce="{nonce}">' in html and f'<style nonce="{nonce}">' in html
    assert headers["Cache-Control"] == json_headers["Cache-Control"] == "no-store"


async def test_ready_queue_shows_its_suspension_state(tmp_path):
    """A suspended ready queue is listed with its site, no connections and the reason."""
    async with Receiver() as rx:
        async with running_node(
            tmp_path, **{"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"}
        ) as node:
            site = f"mx_list:127.0.0.1:{rx.port}"
            name = f"unspecified->{site}@smtp_client"
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    f"http://127.0.0.1:{node.http_port}/api/admin/suspend-ready-q/v1",
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
            _, body, _ = await get(node, "/api/admin/status/v1")
    [ready] = body["ready_queues"]
    assert (ready["name"], ready["site"], ready["connections"]) == (name, site, 0)
    assert [(s["state"], s["context"]) for s in ready["states"]] == [("suspended", "maintenance")]
    assert [(h["kind"], h["target"]) for h in body["holds"]] == [("suspend-ready-q", name)]
    assert body["queues"]["scheduled"]["messages"] == 1  # handed back until the end
