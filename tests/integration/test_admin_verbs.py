"""Every admin verb as a real ``python -m engine.cli`` subprocess against a running node
with traffic: tables by default, ``--json`` answers, and their effect on the node."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import aiohttp
import aiosmtplib

from engine.logs.writer import segment_name
from engine.trace import SERVER_TRACES
from tests.support.node import running_node
from tests.support.receiver import Receiver

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


async def nimbus(*argv: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """Run ``nimbus <argv>`` as a subprocess (the test's loop keeps serving the node)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine.cli",
        *argv,
        env=ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def ok(*argv: str) -> str:
    rc, out, err = await nimbus(*argv)
    assert rc == 0, (argv, out, err)
    return out


async def send(node, recipient: str = "b@dst.test") -> None:
    await aiosmtplib.send(
        b"Subject: s\r\n\r\nbody\r\n",
        sender="a@src.test",
        recipients=[recipient],
        hostname="127.0.0.1",
        port=node.smtp_port,
        start_tls=False,
    )


def sink(rx: Receiver) -> dict:
    return {"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"}


async def test_verbs_show_tables_and_json_and_act_on_the_node(tmp_path):
    """queue-summary, retry-now, suspend, resolve-egress-path, set-log-filter, top, ...:
    each prints a table (or text) and its JSON, and retry-now redelivers counting no attempt."""
    async with Receiver(rcpt=lambda _a, n: "451 4.3.0 later" if n == 1 else None) as rx:
        async with running_node(tmp_path, **sink(rx)) as node:
            ep = ("--endpoint", f"http://127.0.0.1:{node.http_port}")
            await send(node)
            await send(node, "c@dst.test")
            await node.records.wait(lambda r: r["type"] == "TransientFailure", count=2)

            table = await ok("queue-summary", *ep)
            assert any(ln.split()[:2] == ["dst.test", "2"] for ln in table.splitlines()), table
            summary = json.loads(await ok("queue-summary", "--json", *ep))
            assert {"name": "dst.test", "count": 2, "suspended": None} in summary["scheduled"]

            retried = json.loads(await ok("retry-now", "--domain", "dst.test", "--json", *ep))
            assert retried == {"retried": {"dst.test": 2}, "total_retried": 2}
            delivered = await node.records.wait(lambda r: r["type"] == "Delivery", count=2)
            assert [r["num_attempts"] for r in delivered] == [2, 2]  # 1 failure + this one
            assert "total" in await ok("retry-now", "--domain", "dst.test", *ep)

            added = json.loads(
                await ok("suspend", "--domain", "dst.test", "--reason", "hold", "--json", *ep)
            )
            listed = await ok("suspend-list", *ep)
            assert added["id"] in listed and "hold" in listed and "domain=dst.test" in listed
            assert json.loads(await ok("bounce-list", "--json", *ep)) == []
            assert await ok("bounce-list", *ep) == "(no bounces)\n"

            path = json.loads(await ok("resolve-egress-path", "dst.test", "--json", *ep))
            assert (
                path["ready_queue_name"] == f"unspecified->mx_list:127.0.0.1:{rx.port}@smtp_client"
            )
            assert path["config"]["connection_limit"] == {"value": 32, "source": "built-in"}
            view = await ok("resolve-egress-path", "dst.test", *ep)
            assert "connection_limit" in view and "built-in" in view

            rows = json.loads(await ok("provider-summary", "--json", *ep))
            assert isinstance(rows, list)
            assert (await ok("provider-summary", *ep)).strip()

            await ok("set-log-filter", "info,nimbus.ready=debug", *ep)
            assert logging.getLogger("nimbus.ready").level == logging.DEBUG
            await ok("set-log-filter", "info", *ep)
            assert logging.getLogger("nimbus.ready").level == logging.NOTSET
            rc, _, err = await nimbus("set-log-filter", "loud", *ep)
            assert rc == 1 and "unknown level" in err

            info = json.loads(await ok("machine-info", "--json", *ep))
            assert info["node_id"] == "test-node" and info["hostname"]
            assert "tasks" in await ok("task-dump", *ep)
            assert "allocated_blocks" in await ok("memory-stats", *ep)
            frame = await ok("top", "--once", *ep)
            assert "delivered" in frame and "queued" in frame
            counters = json.loads(await ok("top", "--once", "--json", *ep))["counters"]
            assert counters["delivered"] == 2

            rc, _, err = await nimbus("inspect-ready-q", "no->such@smtp_client", *ep)
            assert rc == 1 and "404" in err
            rc, _, err = await nimbus("abort-ready-q-conn", "no->such@smtp_client", "x", *ep)
            assert rc == 1 and "404" in err


async def test_inspect_and_abort_a_ready_queue_connection(tmp_path):
    """inspect-ready-q lists a live connection's session id; abort-ready-q-conn closes it
    and its message goes back to its scheduled queue with no attempt counted."""
    async with Receiver() as rx:
        async with running_node(tmp_path, **sink(rx)) as node:
            ep = ("--endpoint", f"http://127.0.0.1:{node.http_port}")
            name = f"unspecified->mx_list:127.0.0.1:{rx.port}@smtp_client"
            await send(node)
            await node.records.wait(lambda r: r["type"] == "Delivery")
            # The delivered connection idles (idle_timeout) with its session open.
            found = json.loads(await ok("inspect-ready-q", name, "--connections", "--json", *ep))
            assert found["queue_name"] == name
            [conn] = found["connections"]
            assert conn["phase"] in ("idle", "sending") and conn["attempted"] == 1
            table = await ok("inspect-ready-q", name, "--connections", "--config", *ep)
            assert conn["session_id"] in table and "connection_limit" in table
            await ok("abort-ready-q-conn", name, conn["session_id"], *ep)
            async with asyncio.timeout(10):
                while node.router.ready.get(name) and node.router.ready[name].connections:
                    await asyncio.sleep(0.02)  # poll: the aborted task ends on its own


async def _until_line(stream: asyncio.StreamReader, text: str, timeout: float = 20) -> str:
    async with asyncio.timeout(timeout):
        while True:
            line = (await stream.readline()).decode()
            assert line, f"stream ended before {text!r}"
            if text in line:
                return line


async def test_traces_show_a_real_smtp_conversation_both_ways(tmp_path, monkeypatch):
    """trace-smtp-server sees the inbound session line by line, trace-smtp-client the
    delivery to the receiver; with nobody watching nothing is published."""
    published = []
    real_publish = SERVER_TRACES.publish
    monkeypatch.setattr(SERVER_TRACES, "publish", lambda e: published.append(e) or real_publish(e))
    async with Receiver() as rx:
        async with running_node(tmp_path, **sink(rx)) as node:
            ep = ("--endpoint", f"http://127.0.0.1:{node.http_port}")
            await send(node)  # nobody watches yet
            await node.records.wait(lambda r: r["type"] == "Delivery")
            assert published == [] and not SERVER_TRACES.active

            procs = []
            for verb, extra in (
                ("trace-smtp-server", ("--only-new", "--source", "127.0.0.0/8")),
                # The delivery may reuse the pooled session: not a new one.
                ("trace-smtp-client", ("--domain", "dst.test", "--terse")),
            ):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "engine.cli",
                    verb,
                    "--only-one",
                    "--json",
                    *extra,
                    *ep,
                    env=ENV,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                await _until_line(proc.stderr, "tracing")
                procs.append(proc)
            await send(node, "d@dst.test")
            outs = []
            for proc in procs:
                out, _ = await asyncio.wait_for(proc.communicate(), 30)
                outs.append([json.loads(ln) for ln in out.decode().splitlines()])
    server, client = outs
    assert server[0]["kind"] == "connected" and server[-1]["kind"] == "closed"
    writes = [e["data"] for e in server if e["kind"] == "write"]
    reads = "".join(e["data"] for e in server if e["kind"] == "read")
    assert writes[0].startswith("220 ") and any(w.startswith("250 OK ids=") for w in writes)
    assert "MAIL FROM:<a@src.test>" in reads and "RCPT TO:<d@dst.test>" in reads
    sent = [e["data"] for e in client if e["kind"] == "write"]
    assert sent[0].startswith("MAIL FROM:<a@src.test>") and "RCPT TO:<d@dst.test>\r\n" in sent
    assert client[-1]["kind"] == "closed" and client[-1]["ready_queue"].endswith("@smtp_client")
    assert any(s.endswith(" bytes)\r\n") for s in sent)  # --terse: the body cut to a line
    assert {e.get("domain") for e in client if "domain" in e} == {"dst.test"}


async def test_logs_prints_and_follows_every_segment(tmp_path):
    """nimbus logs prints one line per record across segments, filters, --json raw, and
    --follow picks up a segment opened later (a restarted node)."""
    logs = tmp_path / "logs"
    logs.mkdir()

    def record(kind: str, id: str, rcpt: str) -> dict:
        return {
            "type": kind,
            "id": id,
            "sender": "a@src.test",
            "recipient": rcpt,
            "queue": rcpt.split("@")[1],
            "site": "",
            "event_time": "2026-01-01T00:00:00Z",
            "response": {"code": 250, "enhanced_code": None, "content": "ok"},
        }

    first = [record("Reception", "m1", "b@dst.test"), record("Delivery", "m1", "b@dst.test")]
    (logs / segment_name(1_700_000_000)).write_text("".join(json.dumps(r) + "\n" for r in first))
    out = await ok("logs", "--dir", str(logs))
    assert len(out.splitlines()) == 2 and "Delivery" in out.splitlines()[1]
    raw = await ok("logs", "--dir", str(logs), "--type", "Delivery", "--json")
    assert json.loads(raw) == first[1]
    assert await ok("logs", "--dir", str(logs), "--domain", "other.test") == ""

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine.cli",
        "logs",
        "--follow",
        "--dir",
        str(logs),
        "--id",
        "m2",
        env=ENV,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        later = record("Delivery", "m2", "c@dst.test")
        (logs / segment_name(1_700_000_100)).write_text(json.dumps(later) + "\n")
        line = await _until_line(proc.stdout, "m2")
        assert "Delivery" in line and "c@dst.test" in line and "250 ok" in line
    finally:
        proc.terminate()
        await proc.wait()


async def test_admin_state_survives_a_restart(tmp_path):
    """A suspension and a bounce added before a restart are listed (and enforced) after."""
    async with running_node(tmp_path) as node:
        ep = ("--endpoint", f"http://127.0.0.1:{node.http_port}")
        await ok("suspend", "--domain", "dst.test", "--reason", "hold", "--duration", "1h", *ep)
        await ok("bounce", "--domain", "gone.test", "--reason", "bye", "--duration", "1h", *ep)
    async with running_node(tmp_path) as node:
        ep = ("--endpoint", f"http://127.0.0.1:{node.http_port}")
        [suspension] = json.loads(await ok("suspend-list", "--json", *ep))
        [bounce] = json.loads(await ok("bounce-list", "--json", *ep))
        assert (suspension["domain"], suspension["reason"]) == ("dst.test", "hold")
        assert (bounce["domain"], bounce["reason"]) == ("gone.test", "bye")
        await send(node, "x@gone.test")
        await node.records.wait(lambda r: r["type"] == "AdminBounce")


async def test_spool_compact_gives_space_back(tmp_path):
    """``nimbus spool-compact --name data`` (kcli's verb and endpoint): after 200 delivered
    messages the spool file shrinks; an unknown name is refused by the CLI's choices and a
    404 from the endpoint."""
    async with Receiver() as rx, running_node(tmp_path, **sink(rx)) as node:
        body = ("x" * 76 + "\r\n") * 260
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=node.smtp_port) as smtp:
            for n in range(200):
                await smtp.sendmail(
                    "a@src.test", [f"r{n}@dst.test"], f"Subject: {n}\r\n\r\n{body}\r\n"
                )
        await rx.wait_for(200)
        await node.records.wait(lambda r: r["type"] == "Delivery", count=200)
        endpoint = f"http://127.0.0.1:{node.http_port}"
        answer = json.loads(
            await ok("spool-compact", "--name", "data", "--endpoint", endpoint, "--json")
        )
        table = await ok("spool-compact", "--name", "meta", "--endpoint", endpoint)
        bad = await nimbus("spool-compact", "--name", "rocks", "--endpoint", endpoint)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{endpoint}/api/admin/spool-compact/v1", json={"name": "x"}
            ) as resp:
                refused = resp.status, await resp.json()
    assert answer["name"] == "data" and answer["bytes_after"] < answer["bytes_before"] / 4, answer
    assert "bytes_after" in table
    assert bad[0] == 2 and "invalid choice" in bad[2]
    assert refused[0] == 404 and refused[1]["field"] == "name"
