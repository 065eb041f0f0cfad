"""The admin HTTP API and the admin CLI against a real aiohttp server on 127.0.0.1:0.

The node's side is faked: AdminApi gets callables that record their calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from engine.admin import cli as admin_cli
from engine.admin.entries import Criteria
from engine.admin.http import add_admin_routes
from engine.admin.state import AdminApi
from engine.config.settings import HttpSettings, Settings

MESSAGE = {
    "id": "m1",
    "message": {
        "sender": "a@x.com",
        "recipient": "b@y.com",
        "meta": {},
        "data": None,
        "due": "2030-01-01T00:00:00Z",
        "num_attempts": 0,
        "scheduling": None,
    },
}
SUMMARY = {
    "scheduled": [
        {"name": "example.com", "count": 3},
        {"name": "big:tenant@example.org", "count": 1200},
    ],
    "ready": [
        {
            "name": "unspecified->mx.example.com@smtp_client",
            "site": "mx.example.com",
            "count": 2,
            "connections": 1,
        }
    ],
}


class FakeNode:
    """The node's callables for AdminApi; each records how it was called."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def bounce_now(self, entry):
        self.calls.append(("bounce_now", entry))
        return {"example.com": 3}

    def rebind(self, criteria, data, reason, trigger):
        self.calls.append(("rebind", (criteria, data, reason, trigger)))
        return 2

    async def inspect_message(self, id, want_body):
        self.calls.append(("inspect_message", (id, want_body)))
        return MESSAGE if id == "m1" else None

    def inspect_sched_q(self, name, want_body, limit):
        self.calls.append(("inspect_sched_q", (name, want_body, limit)))
        if name != "example.com":
            return None
        return {
            "queue_name": name,
            "queue_config": {},
            "num_scheduled": 3,
            "delayed_metric": 3,
            "last_changed": "2030-01-01T00:00:00Z",
            "now": "2030-01-01T00:00:00Z",
            "messages": [MESSAGE][:limit],
        }

    def ready_q_states(self, queues):
        self.calls.append(("ready_q_states", queues))
        return {"q1": {"connection_limited": {"context": "limit 1", "since": "x"}}}

    def queue_summary(self):
        return SUMMARY

    def api(self) -> AdminApi:
        return AdminApi(
            bounce_now=self.bounce_now,
            rebind=self.rebind,
            inspect_message=self.inspect_message,
            inspect_sched_q=self.inspect_sched_q,
            ready_q_states=self.ready_q_states,
            queue_summary=self.queue_summary,
        )


class Server:
    def __init__(self, url: str, node: FakeNode, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.node = node
        self.session = session

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": headers}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.url + path, **kwargs) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None)


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Server]:
    node = FakeNode()
    app = web.Application()
    add_admin_routes(app, admin=node.api(), settings=settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as session:
            yield Server(f"http://{host}:{port}", node, session)
    finally:
        await runner.cleanup()


@pytest.fixture
def admin_dir(tmp_path):
    """An admin-users directory with user ops, password pw."""
    directory = tmp_path / "admin"
    directory.mkdir()
    (directory / "ops").write_text("pw\n")
    return directory


@pytest.fixture
async def trusted():
    """A server whose trusted hosts (the default) include 127.0.0.1."""
    async with serve(Settings()) as server:
        yield server


@pytest.fixture
async def untrusted(admin_dir):
    """A server that does not trust 127.0.0.1 but has admin user ops:pw."""
    settings = Settings(
        http=HttpSettings(trusted_hosts=["10.255.0.0/16"], admin_auth_dir=str(admin_dir))
    )
    async with serve(settings) as server:
        yield server


# -- bounce ------------------------------------------------------------------------


async def test_bounce_post_list_cancel(trusted):
    """POST bounces now and returns the id; GET lists it; DELETE cancels it."""
    status, body = await trusted.call(
        "POST", "/api/admin/bounce/v1", {"domain": "example.com", "reason": "bad send"}
    )
    assert status == 200
    assert body == {"id": body["id"], "bounced": {"example.com": 3}, "total_bounced": 3}
    [(name, entry)] = trusted.node.calls
    assert (name, entry.domain, entry.reason) == ("bounce_now", "example.com", "bad send")
    status, listed = await trusted.call("GET", "/api/admin/bounce/v1")
    assert status == 200
    assert [(e["id"], e["domain"], e["total_bounced"]) for e in listed] == [
        (body["id"], "example.com", 3)
    ]
    status, _ = await trusted.call("DELETE", "/api/admin/bounce/v1", {"id": body["id"]})
    assert status == 200
    assert (await trusted.call("GET", "/api/admin/bounce/v1"))[1] == []


async def test_bounce_cancel_unknown_id_is_404(trusted):
    """DELETE of an id that isn't active answers 404 naming the id field."""
    status, body = await trusted.call("DELETE", "/api/admin/bounce/v1", {"id": "nope"})
    assert (status, body["field"]) == (404, "id")


async def test_bounce_missing_reason_is_400_naming_it(trusted):
    """A bounce without a reason is refused, naming the field."""
    status, body = await trusted.call("POST", "/api/admin/bounce/v1", {"domain": "x.com"})
    assert (status, body["field"]) == (400, "reason")
    assert trusted.node.calls == []


async def test_bounce_unknown_field_is_400(trusted):
    """A misspelt criterion is refused instead of bouncing everything."""
    status, body = await trusted.call(
        "POST", "/api/admin/bounce/v1", {"domian": "x.com", "reason": "r"}
    )
    assert (status, body["field"]) == (400, "domian")
    assert trusted.node.calls == []


async def test_bad_json_is_400(trusted):
    """A body that isn't JSON is refused with a JSON error."""
    status, body = await trusted.call(
        "POST", "/api/admin/bounce/v1", raw=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert status == 400 and "malformed JSON" in body["error"]


async def test_bad_duration_is_400_naming_it(trusted):
    """An unparseable duration names the duration field."""
    status, body = await trusted.call(
        "POST", "/api/admin/suspend/v1", {"reason": "r", "duration": "soon"}
    )
    assert (status, body["field"]) == (400, "duration")


# -- suspend -----------------------------------------------------------------------


async def test_suspend_post_list_cancel(trusted):
    """Suspensions are added, listed with time left, and cancelled."""
    status, body = await trusted.call(
        "POST", "/api/admin/suspend/v1", {"tenant": "t", "reason": "warmup", "duration": "1h"}
    )
    assert status == 200 and set(body) == {"id"}
    _, listed = await trusted.call("GET", "/api/admin/suspend/v1")
    assert [(e["id"], e["tenant"], e["duration"]) for e in listed] == [(body["id"], "t", "1h")]
    assert (await trusted.call("DELETE", "/api/admin/suspend/v1", {"id": body["id"]}))[0] == 200
    assert (await trusted.call("DELETE", "/api/admin/suspend/v1", {"id": body["id"]}))[0] == 404


async def test_suspend_ready_q_post_list_cancel(trusted):
    """A ready-queue suspension is added, listed with its expiry, and cancelled."""
    name = "unspecified->mx.example.com@smtp_client"
    status, body = await trusted.call(
        "POST", "/api/admin/suspend-ready-q/v1", {"name": name, "reason": "maint"}
    )
    assert status == 200
    _, listed = await trusted.call("GET", "/api/admin/suspend-ready-q/v1")
    assert [(e["name"], e["reason"]) for e in listed] == [(name, "maint")]
    assert listed[0]["expires"].endswith("Z")
    status, _ = await trusted.call("DELETE", "/api/admin/suspend-ready-q/v1", {"id": body["id"]})
    assert status == 200


async def test_suspend_ready_q_needs_name(trusted):
    """A ready-queue suspension without a name is refused, naming the field."""
    status, body = await trusted.call("POST", "/api/admin/suspend-ready-q/v1", {"reason": "r"})
    assert (status, body["field"]) == (400, "name")


# -- rebind, inspection, states, summary -------------------------------------------


async def test_rebind(trusted):
    """Rebind hands the parsed request to the node and answers {}."""
    status, body = await trusted.call(
        "POST",
        "/api/admin/rebind/v1",
        {"domain": "example.com", "reason": "reroute", "data": {"routing_domain": "relay.x"}},
    )
    assert (status, body) == (200, {})
    assert trusted.node.calls == [
        (
            "rebind",
            (Criteria(domain="example.com"), {"routing_domain": "relay.x"}, "reroute", False),
        )
    ]


async def test_rebind_without_data_is_400(trusted):
    """Rebind needs data."""
    status, body = await trusted.call("POST", "/api/admin/rebind/v1", {"reason": "r"})
    assert (status, body["field"]) == (400, "data")


async def test_inspect_message(trusted):
    """inspect-message passes id and want_body; unknown ids are 404."""
    status, body = await trusted.call("GET", "/api/admin/inspect-message/v1?id=m1&want_body=true")
    assert (status, body) == (200, MESSAGE)
    assert trusted.node.calls == [("inspect_message", ("m1", True))]
    status, body = await trusted.call("GET", "/api/admin/inspect-message/v1?id=zz")
    assert (status, body["field"]) == (404, "id")


@pytest.mark.parametrize(("query", "field"), [("", "id"), ("?id=m1&want_body=maybe", "want_body")])
async def test_inspect_message_bad_query(trusted, query, field):
    """A missing id or a non-boolean want_body is a 400 naming the parameter."""
    status, body = await trusted.call("GET", "/api/admin/inspect-message/v1" + query)
    assert (status, body["field"]) == (400, field)


async def test_inspect_sched_q(trusted):
    """inspect-sched-q passes queue name, want_body and limit."""
    status, body = await trusted.call(
        "GET", "/api/admin/inspect-sched-q/v1?queue_name=example.com&limit=1"
    )
    assert status == 200 and body["num_scheduled"] == 3 and len(body["messages"]) == 1
    assert trusted.node.calls == [("inspect_sched_q", ("example.com", False, 1))]


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ("?queue_name=example.com&limit=lots", 400, "limit"),
        ("?queue_name=example.com&limit=-2", 400, "limit"),
        ("?limit=1", 400, "queue_name"),
        ("?queue_name=unknown.example", 404, "queue_name"),
    ],
)
async def test_inspect_sched_q_errors(trusted, query, status, field):
    """Bad parameters are 400 and an unknown queue is 404, each naming the parameter."""
    got, body = await trusted.call("GET", "/api/admin/inspect-sched-q/v1" + query)
    assert (got, body["field"]) == (status, field)


async def test_ready_q_states(trusted):
    """ready-q-states splits the comma-separated queues and wraps the node's answer."""
    status, body = await trusted.call("GET", "/api/admin/ready-q-states/v1?queues=q1,q2")
    assert status == 200
    assert body == {
        "states_by_ready_queue": {
            "q1": {"connection_limited": {"context": "limit 1", "since": "x"}}
        }
    }
    assert trusted.node.calls == [("ready_q_states", ["q1", "q2"])]


async def test_queue_summary(trusted):
    """queue-summary returns the node's queues marked with admin suspensions."""
    await trusted.call("POST", "/api/admin/suspend/v1", {"domain": "example.org", "reason": "hold"})
    status, body = await trusted.call("GET", "/api/admin/queue-summary/v1")
    assert status == 200
    assert [(q["name"], q["suspended"]) for q in body["scheduled"]] == [
        ("example.com", None),
        ("big:tenant@example.org", "hold"),
    ]
    assert body["ready"][0]["connections"] == 1


# -- access ------------------------------------------------------------------------


async def test_untrusted_peer_without_credentials_is_401(untrusted):
    """Outside trusted_hosts, no credentials gets a 401 with a JSON reason."""
    status, body = await untrusted.call("GET", "/api/admin/bounce/v1")
    assert status == 401 and "trusted host" in body["error"]


async def test_untrusted_peer_with_wrong_credentials_is_401(untrusted):
    """Wrong admin credentials get a 401."""
    status, body = await untrusted.call(
        "GET",
        "/api/admin/bounce/v1",
        headers={"Authorization": aiohttp.encode_basic_auth("ops", "wrong")},
    )
    assert status == 401 and body["error"] == "invalid admin credentials"


async def test_untrusted_peer_with_admin_credentials_is_allowed(untrusted):
    """Admin credentials open the API from an untrusted peer."""
    status, body = await untrusted.call(
        "POST",
        "/api/admin/suspend/v1",
        {"reason": "r"},
        headers={"Authorization": aiohttp.encode_basic_auth("ops", "pw")},
    )
    assert status == 200 and "id" in body


async def test_malformed_authorization_is_400(untrusted):
    """A Basic header that isn't base64 user:password is a 400."""
    status, _ = await untrusted.call(
        "GET", "/api/admin/bounce/v1", headers={"Authorization": "Basic !!!"}
    )
    assert status == 400


async def test_untrusted_peer_without_admin_users_is_403():
    """With no admin users configured, an untrusted peer is forbidden outright."""
    async with serve(Settings(http=HttpSettings(trusted_hosts=["10.255.0.0/16"]))) as server:
        status, body = await server.call("GET", "/api/admin/queue-summary/v1")
    assert status == 403 and "no admin users" in body["error"]


# -- CLI ---------------------------------------------------------------------------


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(admin_cli.main, list(argv))


async def test_cli_queue_summary_prints_tables(trusted, capsys):
    """queue-summary (--by-volume) prints aligned ready and scheduled tables, busiest first."""
    assert await cli("queue-summary", "--by-volume", "--endpoint", trusted.url) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["unspecified->mx.example.com@smtp_client", "2", "1"]
    sched = lines[lines.index("") + 1 :]
    assert sched[0].split() == ["SCHEDULED", "QUEUE", "COUNT", "SUSPENDED"]
    assert sched[1].split() == ["big:tenant@example.org", "1200"]
    assert sched[2].split() == ["example.com", "3"]
    assert sched[1].index("1200") + 4 == sched[2].index("3") + 1  # right-aligned counts


async def test_cli_bounce_then_list_and_cancel(trusted, capsys):
    """bounce posts the criteria and prints the id; bounce-cancel removes it."""
    assert (
        await cli(
            "bounce",
            "--json",
            "--endpoint",
            trusted.url,
            "--domain",
            "example.com",
            "--reason",
            "bad send",
            "--duration",
            "10m",
        )
        == 0
    )
    answer = json.loads(capsys.readouterr().out)
    assert answer["total_bounced"] == 3
    entry = trusted.node.calls[0][1]
    assert (entry.domain, entry.reason, entry.expires - entry.created) == (
        "example.com",
        "bad send",
        600,
    )
    assert await cli("bounce-list", "--json", "--endpoint", trusted.url) == 0
    assert [e["id"] for e in json.loads(capsys.readouterr().out)] == [answer["id"]]
    assert await cli("bounce-cancel", "--endpoint", trusted.url, "--id", answer["id"]) == 0
    assert await cli("bounce-cancel", "--endpoint", trusted.url, "--id", answer["id"]) == 1
    assert "404" in capsys.readouterr().err


async def test_cli_bounce_needs_criteria_or_everything(trusted, capsys):
    """A bounce with no criteria is a usage error unless --everything is given."""
    assert await cli("bounce", "--endpoint", trusted.url, "--reason", "r") == 2
    assert "--everything" in capsys.readouterr().err
    assert trusted.node.calls == []
    assert await cli("bounce", "--endpoint", trusted.url, "--everything", "--reason", "r") == 0
    entry = trusted.node.calls[0][1]
    assert (entry.domain, entry.tenant, entry.queue_names) == (None, None, ())


async def test_cli_suspend_and_list(trusted, capsys, monkeypatch):
    """suspend (endpoint from NIMBUS_ENDPOINT) shows up in suspend-list and the summary."""
    monkeypatch.setenv("NIMBUS_ENDPOINT", trusted.url)
    assert await cli("suspend", "--json", "--queue", "example.com", "--reason", "hold") == 0
    sid = json.loads(capsys.readouterr().out)["id"]
    assert await cli("suspend-list", "--json") == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert (entry["id"], entry["queue_names"]) == (sid, ["example.com"])
    assert await cli("queue-summary") == 0
    assert any(
        line.split()[-1:] == ["hold"] and line.startswith("example.com")
        for line in capsys.readouterr().out.splitlines()
    )


async def test_cli_suspend_ready_q_and_rebind(trusted, capsys):
    """suspend-ready-q and rebind --set reach the API."""
    assert (
        await cli(
            "suspend-ready-q",
            "--endpoint",
            trusted.url,
            "--name",
            "a->b@smtp_client",
            "--reason",
            "maint",
        )
        == 0
    )
    assert await cli("suspend-ready-q-list", "--endpoint", trusted.url) == 0
    assert "a->b@smtp_client" in capsys.readouterr().out
    assert (
        await cli(
            "rebind",
            "--endpoint",
            trusted.url,
            "--tenant",
            "t",
            "--set",
            "routing_domain=relay.x",
            "--reason",
            "move",
        )
        == 0
    )
    assert trusted.node.calls[-1] == (
        "rebind",
        (Criteria(tenant="t"), {"routing_domain": "relay.x"}, "move", False),
    )


async def test_cli_inspect(trusted, capsys):
    """inspect-message and inspect-sched-q print the node's JSON with --json."""
    assert (
        await cli(
            "inspect-message", "--json", "--endpoint", trusted.url, "--id", "m1", "--want-body"
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == MESSAGE
    assert (
        await cli(
            "inspect-sched-q",
            "--json",
            "--endpoint",
            trusted.url,
            "--queue",
            "example.com",
            "--limit",
            "0",
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["messages"] == []


async def test_cli_credentials_against_untrusted_node(untrusted, capsys):
    """From an untrusted host the CLI fails without credentials and works with them."""
    assert await cli("suspend-list", "--endpoint", untrusted.url) == 1
    assert "401" in capsys.readouterr().err
    assert (
        await cli("suspend-list", "--endpoint", untrusted.url, "--user", "ops", "--password", "pw")
        == 0
    )


async def test_cli_unreachable_endpoint(capsys):
    """An endpoint nobody listens on is exit 1 with a message."""
    assert await cli("bounce-list", "--endpoint", "http://127.0.0.1:9", "--timeout", "5") == 1
    assert "cannot reach" in capsys.readouterr().err
