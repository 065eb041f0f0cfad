"""Transfers between nodes (engine/xfer): the admin API, the node-to-node route, and
scale-in at SIGTERM, with real nodes, real HTTP and real SMTP receivers."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest

from engine.records import Message
from engine.xfer.wire import MEDIA_TYPE, PATH, encode, xfer_queue_name
from tests.support.node import NimbusProcess, running_node
from tests.support.peers import free_port
from tests.support.receiver import Receiver

SECRET = "s3cret-s3cret-s3cret-s3cret"
DEFER = "451 4.3.0 try later"


async def _send(port: int, count: int, *, domain: str = "dst.test") -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as smtp:
        for i in range(count):
            await smtp.sendmail(
                "a@src.test", [f"r{i}@{domain}"], f"Subject: m{i}\r\n\r\nbody {i}\r\n"
            )


def _node_settings(rx_port: int, node_id: str, **extra: object) -> dict[str, object]:
    return {
        "sink.enabled": True,
        "sink.endpoint": f"127.0.0.1:{rx_port}",
        "node_id": node_id,
        "cluster.secret": SECRET,
        **extra,
    }


async def _json(http: aiohttp.ClientSession, method: str, url: str, body: object = None):
    async with http.request(method, url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def _until(predicate, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)  # polling an in-process condition with a deadline


async def test_admin_xfer_moves_a_queue_and_keeps_its_schedule(tmp_path):
    """Deferred mail on node A moves to node B: B holds each message with A's due time,
    attempt count and creation time; XferOut on A, XferIn on B; A's spool is empty."""
    async with Receiver(rcpt=lambda a, n: DEFER) as rx_a, Receiver() as rx_b:
        async with (
            running_node(tmp_path / "a", **_node_settings(rx_a.port, "node-a")) as a,
            running_node(tmp_path / "b", **_node_settings(rx_b.port, "node-b")) as b,
        ):
            await _send(a.smtp_port, 3)
            await _send(a.smtp_port, 1, domain="stays.test")
            await a.records.wait(lambda r: r["type"] == "TransientFailure", count=4)
            before = {m.id: m for m in a.scheduler.messages()}
            assert len(before) == 4
            target = f"http://127.0.0.1:{b.http_port}"
            async with aiohttp.ClientSession() as http:
                status, body = await _json(
                    http,
                    "POST",
                    f"http://127.0.0.1:{a.http_port}/api/admin/xfer/v1",
                    {"domain": "dst.test", "target": target + "/", "reason": "scale down"},
                )
                assert status == 200, body
                assert body == {"queue_name": xfer_queue_name(target), "messages": 3}
                await a.records.wait(lambda r: r["type"] == "XferOut", count=3)
                await b.records.wait(lambda r: r["type"] == "XferIn", count=3)
                await _until(lambda: a.transfers.jobs()[0]["state"] == "done")
                status, jobs = await _json(
                    http, "GET", f"http://127.0.0.1:{a.http_port}/api/admin/xfer/v1"
                )
                status_s, summary = await _json(
                    http, "GET", f"http://127.0.0.1:{a.http_port}/api/admin/queue-summary/v1"
                )
                async with http.get(f"http://127.0.0.1:{a.http_port}/metrics") as resp:
                    a_metrics = await resp.text()
                async with http.get(f"http://127.0.0.1:{b.http_port}/metrics") as resp:
                    b_metrics = await resp.text()
            await a.spool.flush()
            left_on_a = await a.spool.messages()
            on_b = {m.id: m for m in b.scheduler.messages()}
            rebinds = a.records.of("AdminRebind")
            xfer_in = b.records.of("XferIn")
    assert status == 200 and jobs[0]["moved"] == 3 and jobs[0]["left"] == 0
    assert jobs[0]["failed"] == 0 and jobs[0]["target"] == target
    assert status_s == 200 and summary["xfer"] == []
    assert [m.recipient for m in left_on_a] == ["r0@stays.test"]
    assert set(on_b) == {i for i, m in before.items() if m.recipient.endswith("@dst.test")}
    for id, moved in on_b.items():
        orig = before[id]
        assert (moved.due, moved.num_attempts, moved.created) == (
            orig.due,
            orig.num_attempts,
            orig.created,
        )
        assert moved.num_attempts == 1 and moved.queue == orig.queue
    assert len(rebinds) == 3 and all("scale down" in r["response"]["content"] for r in rebinds)
    assert all(r["num_attempts"] == 1 and r["reception_protocol"] == "xfer" for r in xfer_in)
    assert all(r["peer_address"]["name"] == "node-a" for r in xfer_in)
    assert 'nimbus_xfer_messages_total{result="sent"} 3.0' in a_metrics
    assert 'nimbus_xfer_messages_total{result="received"} 3.0' in b_metrics
    assert rx_b.messages == []  # B keeps the retry schedule: not due for 20 minutes


async def test_refused_and_unreachable_targets_keep_the_mail(tmp_path):
    """A target with another secret refuses every message: each goes back to its queue
    at its own due time. An unreachable target keeps the job waiting; cancel returns
    the messages. Nothing is lost or sent."""
    async with Receiver(rcpt=lambda a, n: DEFER) as rx:
        async with (
            running_node(tmp_path / "a", **_node_settings(rx.port, "node-a")) as a,
            running_node(
                tmp_path / "b",
                **_node_settings(rx.port, "node-b", **{"cluster.secret": "another-secret-0123"}),
            ) as b,
        ):
            await _send(a.smtp_port, 2)
            await a.records.wait(lambda r: r["type"] == "TransientFailure", count=2)
            before = {m.id: m.due for m in a.scheduler.messages()}
            admin = f"http://127.0.0.1:{a.http_port}/api/admin"
            async with aiohttp.ClientSession() as http:
                status, _ = await _json(
                    http,
                    "POST",
                    f"{admin}/xfer/v1",
                    {
                        "everything": True,
                        "target": f"http://127.0.0.1:{b.http_port}",
                        "reason": "x",
                    },
                )
                assert status == 200
                await _until(lambda: a.transfers.jobs()[0]["state"] == "done")
                refused = a.transfers.jobs()[0]
                after_refusal = {m.id: m.due for m in a.scheduler.messages()}

                dead = f"http://127.0.0.1:{free_port()}"
                status, started = await _json(
                    http,
                    "POST",
                    f"{admin}/xfer/v1",
                    {"queue_names": ["dst.test"], "target": dead, "reason": "y"},
                )
                assert status == 200 and started["messages"] == 2
                await _until(lambda: len(a.transfers.jobs()[1]["errors"]) >= 2)
                status_l, listed = await _json(http, "GET", f"{admin}/xfer/v1")
                async with http.get(f"http://127.0.0.1:{a.http_port}/metrics") as resp:
                    pending_metric = await resp.text()
                _, summary = await _json(http, "GET", f"{admin}/queue-summary/v1")
                status_c, cancelled = await _json(
                    http,
                    "POST",
                    f"{admin}/xfer/cancel/v1",
                    {"queue_name": started["queue_name"], "reason": "never mind"},
                )
                after_cancel = {m.id: m.due for m in a.scheduler.messages()}
                status_u, unknown = await _json(
                    http,
                    "POST",
                    f"{admin}/xfer/cancel/v1",
                    {"queue_name": "http://nowhere:1/.xfer.kumomta.internal", "reason": "z"},
                )
            b_spooled = await b.spool.messages()
    assert refused["failed"] == 2 and refused["moved"] == 0
    assert "wrong cluster secret" in refused["errors"][0]
    assert after_refusal == before
    assert status_l == 200 and listed[1]["left"] == 2 and listed[1]["state"] == "running"
    assert "nimbus_xfer_pending_messages 2.0" in pending_metric
    assert summary["xfer"] == [
        {"name": started["queue_name"], "target": dead, "count": 2, "state": "running"}
    ]
    assert status_c == 200 and cancelled == {"queue_name": started["queue_name"], "returned": 2}
    assert after_cancel == before
    assert status_u == 404 and unknown["field"] == "queue_name"
    assert b_spooled == [] and rx.messages == []


@pytest.mark.parametrize(
    "body, field",
    [
        ({"target": "http://127.0.0.1:1", "reason": "r"}, None),  # selects nothing
        (
            {"everything": True, "domain": "d.test", "target": "http://h:1", "reason": "r"},
            "everything",
        ),
        ({"everything": True, "target": "ftp://h:1", "reason": "r"}, "target"),
        ({"everything": True, "target": "http://h:1/api", "reason": "r"}, "target"),
        ({"everything": True, "target": "http://h:1"}, "reason"),
        ({"everything": True, "target": "http://h:1", "reason": "r", "domian": "x"}, "domian"),
    ],
)
async def test_bad_xfer_requests_are_400_naming_the_field(tmp_path, body, field):
    async with running_node(tmp_path, **{"cluster.secret": SECRET}) as node:
        async with aiohttp.ClientSession() as http:
            status, answer = await _json(
                http, "POST", f"http://127.0.0.1:{node.http_port}/api/admin/xfer/v1", body
            )
    assert status == 400 and answer.get("field") == field, answer


async def test_a_node_without_a_secret_neither_sends_nor_takes(tmp_path):
    async with running_node(tmp_path) as node:
        async with aiohttp.ClientSession() as http:
            status, answer = await _json(
                http,
                "POST",
                f"http://127.0.0.1:{node.http_port}/api/admin/xfer/v1",
                {"everything": True, "target": "http://127.0.0.1:1", "reason": "r"},
            )
            async with http.post(
                f"http://127.0.0.1:{node.http_port}{PATH}",
                data=b"{}\n",
                headers={"Authorization": f"Bearer {SECRET}", "Content-Type": MEDIA_TYPE},
            ) as resp:
                take = resp.status, await resp.json()
    assert status == 409 and "cluster secret" in answer["error"]
    assert take[0] == 403 and "no cluster secret" in take[1]["error"]


async def test_the_receiving_route_checks_before_it_stores(tmp_path):
    """401 without the secret, 403 with a wrong one, 415, 422 for a bad body or digest,
    409 for a message from itself; a good one is stored, the same again is a duplicate."""
    msg = Message(
        id="0123456789abcdef0123456789abcdef",
        sender="a@src.test",
        recipient="b@dst.test",
        queue="dst.test",
        meta={"tenant": "t"},
        created=1_700_000_000.0,
        due=4_000_000_000.0,
        num_attempts=4,
    )
    good = encode(msg, b"Subject: x\r\n\r\nhi\r\n", from_node="node-z")
    auth = {"Authorization": f"Bearer {SECRET}", "Content-Type": MEDIA_TYPE}
    async with running_node(tmp_path, **{"cluster.secret": SECRET, "node_id": "node-r"}) as node:
        url = f"http://127.0.0.1:{node.http_port}{PATH}"
        answers = {}
        async with aiohttp.ClientSession() as http:
            cases = {
                "no auth": (good, {"Content-Type": MEDIA_TYPE}),
                "wrong": (good, {**auth, "Authorization": "Bearer wrong-wrong-wrong-wrong"}),
                "type": (good, {**auth, "Content-Type": "application/json"}),
                "garbage": (b"not a transfer", auth),
                "digest": (good[:-3] + b"ho\n", auth),
                "self": (encode(msg, b"x\r\n", from_node="node-r"), auth),
                "good": (good, auth),
                "again": (good, auth),
            }
            for name, (data, headers) in cases.items():
                async with http.post(url, data=data, headers=headers) as resp:
                    answers[name] = (resp.status, await resp.json())
        stored = node.scheduler.get(msg.id)
        xfer_in = node.records.of("XferIn")
    assert answers["no auth"][0] == 401
    assert answers["wrong"] == (403, {"error": "wrong cluster secret"})
    assert answers["type"][0] == 415
    assert answers["garbage"][0] == 422
    assert answers["digest"][0] == 422 and "sha256" in answers["digest"][1]["error"]
    assert answers["self"][0] == 409
    assert answers["good"] == (
        200,
        {"id": msg.id, "queue": "dst.test", "duplicate": False, "queued": 1},
    )
    assert answers["again"][1]["duplicate"] is True
    assert stored is not None
    assert (stored.due, stored.num_attempts, stored.created) == (msg.due, 4, msg.created)
    assert stored.meta == {"tenant": "t"} and len(xfer_in) == 1


async def test_the_policy_sees_each_transfer_and_may_refuse_it(tmp_path):
    policy = """
        def register(nimbus):
            @nimbus.on("xfer_message_received")
            def seen(msg, auth_info):
                if msg.recipient().startswith("no@"):
                    nimbus.reject(550, "5.7.1 not here")
                msg.set_meta("from_node", auth_info["from_node"])
    """
    auth = {"Authorization": f"Bearer {SECRET}", "Content-Type": MEDIA_TYPE}

    def transfer(id: str, rcpt: str) -> bytes:
        m = Message(
            id=id,
            sender="a@s.test",
            recipient=rcpt,
            queue="dst.test",
            meta={},
            created=1.0,
            due=2.0,
        )
        return encode(m, b"Subject: x\r\n\r\n.\r\n", from_node="node-z")

    async with running_node(tmp_path, policy=policy, **{"cluster.secret": SECRET}) as node:
        url = f"http://127.0.0.1:{node.http_port}{PATH}"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=transfer("a" * 32, "no@dst.test"), headers=auth) as r:
                refused = r.status, await r.json()
            async with http.post(url, data=transfer("b" * 32, "yes@dst.test"), headers=auth) as r:
                taken = r.status
        meta = node.spool and (await node.spool.messages())
    assert refused[0] == 403 and "550 5.7.1 not here" in refused[1]["error"]
    assert taken == 200 and [m.meta for m in meta] == [{"from_node": "node-z"}]


# -- scale-in with real processes ----------------------------------------------------


def _spooled_ids(spool_dir: Path) -> set[str]:
    conn = sqlite3.connect(spool_dir / "spool.db")
    try:
        return {row[0] for row in conn.execute("SELECT id FROM messages")}
    finally:
        conn.close()


def _reception_ids(records: list[dict]) -> set[str]:
    return {r["id"] for r in records if r["type"] == "Reception"}


async def _cluster(tmp_path: Path, count: int, rx_port: int, **env: str) -> tuple[list, list[int]]:
    ports = [free_port() for _ in range(count)]
    nodes = []
    for i, port in enumerate(ports):
        peers = ",".join(f"http://127.0.0.1:{p}" for j, p in enumerate(ports) if j != i)
        workdir = tmp_path / f"mta-{i}"
        workdir.mkdir()
        nodes.append(
            await NimbusProcess.start(
                workdir,
                {
                    "NIMBUS_NODE_ID": f"mta-{i}",
                    "NIMBUS_HTTP_LISTEN": f"127.0.0.1:{port}",
                    "NIMBUS_SINK_ENABLED": "true",
                    "NIMBUS_SINK_ENDPOINT": f"127.0.0.1:{rx_port}",
                    "NIMBUS_CLUSTER_SECRET": SECRET,
                    "NIMBUS_CLUSTER_PEERS": peers,
                    **env,
                },
            )
        )
    return nodes, ports


async def test_sigterm_moves_the_spool_to_the_peers(tmp_path):
    """Three nodes; two are stopped at once with mail queued behind a deferring
    receiver: each sends its spool to the one peer still running (the other stopping
    one answers 503), keeping attempts; nothing is lost, nothing stays behind."""
    per_node = 150
    async with Receiver(rcpt=lambda a, n: DEFER) as rx:
        nodes, _ = await _cluster(tmp_path, 3, rx.port)
        try:
            for node in nodes[1:]:
                await _send(node.smtp_port, per_node)
            for node in nodes[1:]:
                await node.wait_records(lambda r: r["type"] == "TransientFailure", per_node)
            for node in nodes[1:]:
                node.terminate()
            codes = [await node.wait(timeout=60) for node in nodes[1:]]
            taken = await nodes[0].wait_records(lambda r: r["type"] == "XferIn", 2 * per_node)
        finally:
            for node in nodes:
                node.kill9()
                await node.wait()
    sent = set().union(*(_reception_ids(n.records()) for n in nodes[1:]))
    assert codes == [0, 0]
    assert {r["id"] for r in taken} == sent and len(taken) == 2 * per_node
    assert all(r["num_attempts"] == 1 for r in taken)
    assert _spooled_ids(tmp_path / "mta-0" / "spool") == sent
    for i in (1, 2):
        assert _spooled_ids(tmp_path / f"mta-{i}" / "spool") == set()
        done = [ln for ln in nodes[i].stderr_lines if ln.get("event") == "scale_in_done"]
        assert done and done[0]["moved"] == per_node and done[0]["left"] == 0, done


async def test_a_sender_killed_mid_transfer_loses_nothing(tmp_path):
    """kill -9 of the sending node in the middle of its scale-in: every message is on
    the receiver or still in the sender's spool (a few on both: at-least-once)."""
    count = 600
    async with Receiver(rcpt=lambda a, n: DEFER) as rx:
        nodes, _ = await _cluster(tmp_path, 2, rx.port, NIMBUS_CLUSTER_XFER_CONCURRENCY="2")
        try:
            await _send(nodes[1].smtp_port, count)
            await nodes[1].wait_records(lambda r: r["type"] == "TransientFailure", count)
            nodes[1].terminate()
            await nodes[0].wait_records(lambda r: r["type"] == "XferIn", 50)
            nodes[1].kill9()
            await nodes[1].wait()
        finally:
            for node in nodes:
                node.kill9()
                await node.wait()
    sent = _reception_ids(nodes[1].records())
    on_receiver = _spooled_ids(tmp_path / "mta-0" / "spool")
    on_sender = _spooled_ids(tmp_path / "mta-1" / "spool")
    assert len(sent) == count
    assert on_receiver | on_sender == sent  # nothing lost
    assert 50 <= len(on_receiver) < count, "the kill must land mid-transfer"
    assert len(on_receiver & on_sender) <= 64  # in flight or not yet deleted when killed


async def test_a_receiver_killed_mid_transfer_loses_nothing(tmp_path):
    """kill -9 of the only peer while it takes a scale-in: the sender keeps what it was
    not told was stored, exits cleanly, and its spool plus the peer's hold every id."""
    count = 600
    async with Receiver(rcpt=lambda a, n: DEFER) as rx:
        nodes, _ = await _cluster(tmp_path, 2, rx.port, NIMBUS_CLUSTER_XFER_CONCURRENCY="2")
        try:
            await _send(nodes[1].smtp_port, count)
            await nodes[1].wait_records(lambda r: r["type"] == "TransientFailure", count)
            nodes[1].terminate()
            await nodes[0].wait_records(lambda r: r["type"] == "XferIn", 50)
            nodes[0].kill9()
            code = await nodes[1].wait(timeout=60)
        finally:
            for node in nodes:
                node.kill9()
                await node.wait()
    sent = _reception_ids(nodes[1].records())
    on_receiver = _spooled_ids(tmp_path / "mta-0" / "spool")
    on_sender = _spooled_ids(tmp_path / "mta-1" / "spool")
    done = [ln for ln in nodes[1].stderr_lines if ln.get("event") == "scale_in_done"]
    assert code == 0 and done and done[0]["left"] == len(on_sender) > 0
    assert on_receiver | on_sender == sent
    assert not (on_receiver & on_sender) or len(on_receiver & on_sender) <= 2
    assert json.dumps(done[0])  # the summary is one JSON line


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_cli_verbs_drive_a_transfer(tmp_path):
    """``nimbus xfer`` / ``xfer-list`` / ``xfer-cancel`` (kcli's names and options)."""
    async with Receiver(rcpt=lambda a, n: DEFER) as rx:
        async with running_node(tmp_path, **_node_settings(rx.port, "node-a")) as node:
            await _send(node.smtp_port, 2)
            await node.records.wait(lambda r: r["type"] == "TransientFailure", count=2)
            endpoint = ("--endpoint", f"http://127.0.0.1:{node.http_port}")
            dead = f"http://127.0.0.1:{free_port()}"
            usage = await _cli("xfer", *endpoint, "--target", dead, "--reason", "r")
            started = await _cli(
                "xfer",
                "--json",
                *endpoint,
                "--domain",
                "dst.test",
                "--target",
                dead,
                "--reason",
                "r",
            )
            await _until(lambda: node.transfers.jobs()[0]["errors"])
            listed = await _cli("xfer-list", *endpoint)
            summary = await _cli("queue-summary", *endpoint)
            name = json.loads(started[1])["queue_name"]
            cancelled = await _cli("xfer-cancel", "--json", *endpoint, name, "--reason", "stop")
            back = len(node.scheduler.messages())
    assert usage[0] == 2 and "--everything" in usage[2]
    assert started[0] == 0 and json.loads(started[1])["messages"] == 2
    assert listed[0] == 0 and name in listed[1] and "running" in listed[1]
    assert "XFER QUEUE" in summary[1] and name in summary[1]
    assert cancelled[0] == 0 and json.loads(cancelled[1])["returned"] == 2 and back == 2
