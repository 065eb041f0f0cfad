"""The control plane's security on a real node: admin audit records, basic-auth brake."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from engine.admin import cli as admin_cli
from tests.support.node import running_node

ADMIN = {"Authorization": aiohttp.encode_basic_auth("ops", "adm1n-pw")}
WRONG = {"Authorization": aiohttp.encode_basic_auth("ops", "not-it")}


def admin_dir(tmp_path):
    directory = tmp_path / "admin-users"
    directory.mkdir()
    (directory / "ops").write_text("adm1n-pw\n")
    return directory


async def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    local: str = "127.0.0.1",
) -> tuple[int, Any, dict[str, str]]:
    connector = aiohttp.TCPConnector(local_addr=(local, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["json"] = body
        async with http.request(method, f"http://127.0.0.1:{port}{path}", **kwargs) as resp:
            text = await resp.text()
            is_json = resp.content_type == "application/json"
            return resp.status, (json.loads(text) if is_json else text), dict(resp.headers)


def audits(node) -> list[dict[str, Any]]:
    return node.records.of("AdminAudit")


async def audited(node, count: int) -> list[dict[str, Any]]:
    return await node.records.wait(lambda r: r["type"] == "AdminAudit", count=count, timeout=10)


async def test_each_mutating_endpoint_is_audited_once(tmp_path):
    """Every POST/DELETE of the admin API leaves one AdminAudit record naming who, where,
    what and the result; a trusted host is ``trusted host``."""
    async with running_node(tmp_path) as node:
        port = node.http_port
        steps: list[tuple[str, str, dict[str, Any]]] = [
            ("POST", "/api/admin/bounce/v1", {"domain": "gone.test", "reason": "typo domain"}),
            ("POST", "/api/admin/suspend/v1", {"domain": "slow.test", "reason": "asked"}),
            ("POST", "/api/admin/suspend-ready-q/v1", {"name": "x->y@smtp_client", "reason": "r"}),
            (
                "POST",
                "/api/admin/rebind/v1",
                {"domain": "a.test", "reason": "m", "data": {"k": "v"}},
            ),
        ]
        ids = []
        for method, path, body in steps:
            status, answer, _ = await call(port, method, path, body)
            assert status == 200, answer
            ids.append(answer.get("id"))
        for (_, path, _), id in zip(steps[:3], ids[:3], strict=True):
            status, _, _ = await call(port, "DELETE", path, {"id": id})
            assert status == 200
        # Emitted before the answer is sent, so every record is there already.
        records = audits(node)
        assert len(records) == 7
        expected = [(m, p, b) for m, p, b in steps] + [
            ("DELETE", p, {"id": id}) for (_, p, _), id in zip(steps[:3], ids[:3], strict=True)
        ]
        for record, (method, path, body) in zip(records, expected, strict=True):
            assert record["meta"] == {
                "admin_user": "trusted host",
                "admin_endpoint": f"{method} {path}",
                "admin_params": body,
            }
            assert record["peer_address"] == {"name": "", "addr": "127.0.0.1"}
            assert record["response"]["code"] == 200
            assert record["response"]["content"] == "OK"
            assert record["response"]["command"] == f"{method} {path}"
            assert record["nodeid"] == "test-node"
            assert record["event_time"].endswith("Z") and record["timestamp"] > 0
        segments = list((tmp_path / "logs").iterdir())
        assert segments  # the log writer has opened its segment
    on_disk = [
        json.loads(line)
        for f in (tmp_path / "logs").iterdir()
        for line in f.read_text().splitlines()
    ]
    assert sum(r["type"] == "AdminAudit" for r in on_disk) == 7


async def test_refused_and_failed_requests_are_audited_with_their_result(tmp_path):
    """401 (wrong password), 403 (no admin users), 400 (bad field) and 404 are recorded with
    status and reason; the authenticated user is named, a refused one is anonymous."""
    async with running_node(tmp_path, **{"http.trusted_hosts": ["10.255.0.0/16"]}) as node:
        status, _, _ = await call(node.http_port, "POST", "/api/admin/suspend/v1", {"reason": "r"})
        assert status == 403
        [record] = await audited(node, 1)
        assert record["response"]["code"] == 403
        assert "no admin users are configured" in record["response"]["content"]
        assert record["meta"]["admin_user"] == "anonymous"
    async with running_node(
        tmp_path / "b",
        **{
            "http.trusted_hosts": ["10.255.0.0/16"],
            "http.admin_auth_dir": str(admin_dir(tmp_path)),
        },
    ) as node:
        port = node.http_port
        path = "/api/admin/bounce/v1"
        assert (await call(port, "POST", path, {"reason": "r"}, headers=WRONG))[0] == 401
        assert (await call(port, "POST", path, {"domain": "x.test"}, headers=ADMIN))[0] == 400
        assert (await call(port, "DELETE", path, {"id": "nope"}, headers=ADMIN))[0] == 404
        wrong, bad, unknown = await audited(node, 3)
        assert (wrong["response"]["code"], wrong["meta"]["admin_user"]) == (401, "anonymous")
        assert wrong["response"]["content"] == "invalid admin credentials"
        assert wrong["meta"]["admin_params"] == {"reason": "r"}
        assert (bad["response"]["code"], bad["meta"]["admin_user"]) == (400, "ops")
        assert bad["response"]["content"] == "reason: is required"
        assert (unknown["response"]["code"], unknown["meta"]["admin_user"]) == (404, "ops")
        assert unknown["response"]["content"] == "id: no entry with id nope"


async def test_gets_are_not_audited(tmp_path):
    """Read-only requests leave no AdminAudit record; the next POST is the only one."""
    async with running_node(tmp_path) as node:
        port = node.http_port
        for path in (
            "/api/admin/bounce/v1",
            "/api/admin/suspend/v1",
            "/api/admin/queue-summary/v1",
            "/api/admin/ready-q-states/v1",
        ):
            assert (await call(port, "GET", path))[0] == 200
        await call(port, "POST", "/api/admin/suspend/v1", {"domain": "d.test", "reason": "r"})
        [record] = await audited(node, 1)
        assert record["meta"]["admin_endpoint"] == "POST /api/admin/suspend/v1"


async def test_cli_verb_is_audited(tmp_path):
    """``nimbus suspend`` goes through the API, so it is audited with its parameters."""
    async with running_node(tmp_path) as node:
        argv = ["suspend", "--endpoint", f"http://127.0.0.1:{node.http_port}"]
        argv += ["--domain", "cli.test", "--reason", "from the cli"]
        assert await asyncio.to_thread(admin_cli.main, argv) == 0
        [record] = await audited(node, 1)
        params = record["meta"]["admin_params"]
        assert (params["domain"], params["reason"]) == ("cli.test", "from the cli")


# -- basic-auth brake ------------------------------------------------------------------

INJECT = {
    "envelope_sender": "a@src.test",
    "content": "Subject: x\r\n\r\nbody\r\n",
    "recipients": [{"email": "b@dst.test"}],
}


async def test_repeated_bad_basic_auth_is_slowed_for_that_peer_only(tmp_path, auth_dir):
    """10 wrong passwords from one peer are 401, the 11th is 429 with Retry-After and a JSON
    reason (for the admin API too); good credentials from another peer still work; after
    refill the first peer is served again."""
    settings = {
        "http.auth_dir": str(auth_dir),
        "http.admin_auth_dir": str(admin_dir(tmp_path)),
        "http.trusted_hosts": ["10.255.0.0/16"],
        "http.auth_failure_burst": 10,
        "http.auth_failure_refill": "10s",
        "sink.enabled": True,
        "sink.endpoint": "127.0.0.1:9",
    }
    good = {"Authorization": aiohttp.encode_basic_auth("alice", "s3cret")}
    bad = {"Authorization": aiohttp.encode_basic_auth("alice", "guess")}
    async with running_node(tmp_path, **settings) as node:
        port = node.http_port
        for _ in range(10):
            status, _, _ = await call(port, "POST", "/api/inject/v1", INJECT, headers=bad)
            assert status == 401
        status, body, headers = await call(port, "POST", "/api/inject/v1", INJECT, headers=bad)
        assert status == 429
        assert 1 <= int(headers["Retry-After"]) <= 10
        assert "too many failed authentication attempts" in body["error"]
        # Even good credentials wait: otherwise the guessing would go on.
        assert (await call(port, "POST", "/api/inject/v1", INJECT, headers=good))[0] == 429
        status, body, headers = await call(
            port, "POST", "/api/admin/suspend/v1", {"reason": "r"}, headers=ADMIN
        )
        assert status == 429 and "Retry-After" in headers
        # Another peer is not affected, and a success takes nothing from it.
        for _ in range(12):
            status, body, _ = await call(
                port, "POST", "/api/inject/v1", INJECT, headers=good, local="127.0.0.2"
            )
            assert status == 200, body


async def test_peer_recovers_after_refill(tmp_path, auth_dir):
    """With a fast refill the blocked peer is served again; found by polling, never sleep."""
    settings = {
        "http.auth_dir": str(auth_dir),
        "http.auth_failure_burst": 3,
        "http.auth_failure_refill": "200ms",
        "sink.enabled": True,
        "sink.endpoint": "127.0.0.1:9",
    }
    good = {"Authorization": aiohttp.encode_basic_auth("alice", "s3cret")}
    bad = {"Authorization": aiohttp.encode_basic_auth("alice", "guess")}
    async with running_node(tmp_path, **settings) as node:
        port = node.http_port
        statuses = [
            (await call(port, "POST", "/api/inject/v1", INJECT, headers=bad))[0] for _ in range(4)
        ]
        assert statuses[:3] == [401, 401, 401] and statuses[3] == 429
        seen = set()
        async with asyncio.timeout(10):
            while True:
                status, _, _ = await call(port, "POST", "/api/inject/v1", INJECT, headers=good)
                seen.add(status)
                if status == 200:
                    break
        assert seen <= {429, 200}


async def test_oversized_body_is_audited_as_413(tmp_path):
    """A body over the size cap is refused by aiohttp while read: still one record, 413."""
    async with running_node(tmp_path, **{"http.max_request_size": 1000}) as node:
        body = {"domain": "big.test", "reason": "x" * 5000}
        status, _, _ = await call(node.http_port, "POST", "/api/admin/suspend/v1", body)
        assert status == 413
        [record] = audits(node)
        assert (record["response"]["code"], record["meta"]["admin_user"]) == (413, "trusted host")
        assert record["meta"]["admin_params"] == {}
