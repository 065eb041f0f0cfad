"""The sink service in the test's loop: accept-all, scripted replies, latency, metrics, reload,
and a Nimbus node relaying to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.config.settings import ConfigError, dotted_tree, load_settings
from sink.app import Sink, build
from tests.support.node import running_node

MESSAGE = b"Subject: sink test\r\n\r\n" + (b"x" * 78 + b"\r\n") * 50 + b".leading dot\r\n"

SMART = """
[default]
bounce = 0
defer = 0

[domain."bounce.test"]
bounce = 100

[domain."defer.test"]
defer = 100

[domain."slow.test"]
latency = "300ms"

[[bounce."bounce.test"]]
code = 550
msg = "5.1.1 The email account that you tried to reach does not exist. - gsmtp"

[[bounce."bounce.test"]]
code = 554
msg = "5.7.9 Message not accepted for policy reasons. See https://postmaster.yahooinc.com/error-codes"

[[defer."defer.test"]]
code = 451
msg = "4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77719)"

[[defer."hangup.test"]]
code = 421
msg = "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred"

[domain."hangup.test"]
defer = 100
"""


@contextlib.asynccontextmanager
async def running_sink(
    tmp_path: Path, responses: str | None = None, reload_interval: float = 0, **settings: object
) -> AsyncIterator[Sink]:
    """A started sink on free loopback ports; ``responses``: the smart-mode TOML text;
    ``settings``: more dotted overrides."""
    path = ""
    if responses is not None:
        path = str(tmp_path / "responses.toml")
        Path(path).write_text(responses)
    settings = load_settings(
        env={},
        overrides=dotted_tree(
            {
                "sink.listen": "127.0.0.1:0",
                "sink.http_listen": "127.0.0.1:0",
                "sink.responses": path,
                "smtp.hostname": "sink.test",
                **settings,
            }
        ),
    )
    sink = build(settings, reload_interval=reload_interval)
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()


async def scrape(sink: Sink) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{sink.http_port}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@contextlib.asynccontextmanager
async def session(sink: Sink) -> AsyncIterator[aiosmtplib.SMTP]:
    """An EHLO'd client session with MAIL FROM sent."""
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=sink.smtp_port,
        start_tls=False,
        local_hostname="client.test",
        timeout=10,
    )
    await client.connect()
    await client.ehlo()
    await client.mail("s@src.test")
    try:
        yield client
    finally:
        if client.is_connected:
            client.close()


async def rcpt(client: aiosmtplib.SMTP, address: str) -> aiosmtplib.SMTPResponse:
    """RCPT without raising on refusal: the reply as sent."""
    return await client.execute_command(b"RCPT", f"TO:<{address}>".encode())


# --- accept-all ---------------------------------------------------------------------------


async def test_accept_all_parallel_messages_counted(tmp_path):
    """200 messages sent over 20 parallel connections at a time all get 250, and the
    counters say 200 recipients, 200 connections and every body byte."""
    async with running_sink(tmp_path) as sink:
        gate = asyncio.Semaphore(20)

        async def send(n: int) -> str:
            async with gate:
                _, reply = await aiosmtplib.send(
                    MESSAGE,
                    sender="s@src.test",
                    recipients=[f"u{n}@dst.test"],
                    hostname="127.0.0.1",
                    port=sink.smtp_port,
                    start_tls=False,
                )
                return reply

        replies = await asyncio.gather(*(send(n) for n in range(200)))
        samples = await scrape(sink)
    assert all(r.startswith("2.0.0 OK") for r in replies), set(replies)
    assert samples[("nimbus_sink_messages_total", (("result", "accepted"),))] == 200
    assert samples[("nimbus_sink_messages_total", (("result", "deferred"),))] == 0
    assert samples[("nimbus_sink_messages_total", (("result", "bounced"),))] == 0
    assert samples[("nimbus_sink_connections_total", ())] == 200
    # DATA bytes as received: dot-stuffed ("..leading"), CRLF-terminated.
    assert samples[("nimbus_sink_bytes_total", ())] == 200 * (len(MESSAGE) + 1)


async def test_accept_all_ignores_local_part_conventions(tmp_path):
    """Without a responses file even tempfail@ is accepted (pure accept-all)."""
    async with running_sink(tmp_path) as sink:
        async with session(sink) as client:
            reply = await rcpt(client, "tempfail@dst.test")
    assert reply.code == 250


async def test_pipelining_advertised_and_pipelined_transactions(tmp_path):
    """EHLO offers PIPELINING, and two transactions written in one packet get their six
    replies in order (RFC 2920)."""
    async with running_sink(tmp_path) as sink:
        reader, writer = await asyncio.open_connection("127.0.0.1", sink.smtp_port)
        try:
            await reader.readline()
            writer.write(b"EHLO client.test\r\n")
            ehlo = []
            while not (line := await reader.readline()).startswith(b"250 "):
                ehlo.append(line)
            batch = b"MAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n"
            body = b"Subject: x\r\n\r\nhi\r\n.\r\n"
            writer.write(batch + body + batch + body + b"QUIT\r\n")
            replies = [(await reader.readline())[:3] for _ in range(9)]
        finally:
            writer.close()
            await writer.wait_closed()
    assert b"250-PIPELINING\r\n" in ehlo
    assert replies == [b"250", b"250", b"354", b"250", b"250", b"250", b"354", b"250", b"221"]


async def test_idle_session_gets_421_after_idle_timeout(tmp_path):
    """A session idle for smtp.idle_timeout since its last command gets 421 4.4.2 and is
    closed; commands before that push the deadline back."""
    async with running_sink(tmp_path, **{"smtp.idle_timeout": 0.4}) as sink:
        reader, writer = await asyncio.open_connection("127.0.0.1", sink.smtp_port)
        loop = asyncio.get_running_loop()
        try:
            await reader.readline()
            for _ in range(3):  # 0.75 s of activity, every 0.25 s: longer than the timeout
                await asyncio.sleep(0.25)
                writer.write(b"NOOP\r\n")
                assert (await reader.readline()).startswith(b"250")
            last = loop.time()
            line = await asyncio.wait_for(reader.readline(), 5)
            idle = loop.time() - last
            rest = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
            await writer.wait_closed()
    assert line.startswith(b"421 4.4.2")
    assert 0.35 <= idle < 2
    assert rest == b""


# --- smart mode ---------------------------------------------------------------------------


async def test_tempfail_local_part_defers_at_rcpt(tmp_path):
    """tempfail@ gets a 4xx reply to RCPT."""
    async with running_sink(tmp_path, SMART) as sink:
        async with session(sink) as client:
            reply = await rcpt(client, "tempfail@dst.test")
    assert reply.code == 451 and "tempfail requested" in reply.message


async def test_permfail_local_part_bounces_at_rcpt(tmp_path):
    """permfail@ gets a 5xx reply to RCPT."""
    async with running_sink(tmp_path, SMART) as sink:
        async with session(sink) as client:
            reply = await rcpt(client, "permfail@dst.test")
    assert reply.code == 550 and "permfail requested" in reply.message


async def test_code_prefix_local_part_picks_the_code(tmp_path):
    """450-foo@ gets 450, while 250-bar@ in the same transaction is accepted."""
    async with running_sink(tmp_path, SMART) as sink:
        async with session(sink) as client:
            first = await rcpt(client, "450-foo@dst.test")
            second = await rcpt(client, "250-bar@bounce.test")
    assert first.code == 450
    assert second.code == 250


async def test_bounce_100_refuses_every_recipient_with_configured_text(tmp_path):
    """A domain with bounce = 100 gets 5xx for every RCPT, each with one of its texts, and
    the bounced counter follows."""
    async with running_sink(tmp_path, SMART) as sink:
        async with session(sink) as client:
            replies = [await rcpt(client, f"u{n}@bounce.test") for n in range(20)]
        samples = await scrape(sink)
    texts = {
        "5.1.1 The email account that you tried to reach does not exist. - gsmtp",
        "5.7.9 Message not accepted for policy reasons. See "
        "https://postmaster.yahooinc.com/error-codes",
    }
    assert {r.code for r in replies} <= {550, 554}
    assert {r.message for r in replies} <= texts
    assert samples[("nimbus_sink_messages_total", (("result", "bounced"),))] == 20


async def test_per_recipient_replies_in_one_transaction(tmp_path):
    """One transaction gets a different reply per recipient; DATA carries the accepted ones."""
    async with running_sink(tmp_path, SMART) as sink:
        async with session(sink) as client:
            codes = [
                (await rcpt(client, a)).code
                for a in ("a@ok.test", "b@defer.test", "c@bounce.test", "d@ok.test")
            ]
            data = await client.data(MESSAGE)
        samples = await scrape(sink)
    assert codes[0] == 250 and codes[1] == 451 and codes[2] in (550, 554) and codes[3] == 250
    assert data.code == 250
    assert samples[("nimbus_sink_messages_total", (("result", "accepted"),))] == 2
    assert samples[("nimbus_sink_messages_total", (("result", "deferred"),))] == 1


async def test_421_reply_closes_the_connection(tmp_path):
    """A 421 to RCPT is followed by the sink hanging up (RFC 5321 §3.8)."""
    async with running_sink(tmp_path, SMART) as sink:
        reader, writer = await asyncio.open_connection("127.0.0.1", sink.smtp_port)
        try:
            await reader.readline()
            writer.write(
                b"HELO client.test\r\nMAIL FROM:<a@src.test>\r\n"
                b"RCPT TO:<u@hangup.test>\r\nRCPT TO:<v@ok.test>\r\n"
            )
            lines = [await reader.readline() for _ in range(3)]
            rest = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
            await writer.wait_closed()
    assert lines[2].startswith(b"421 4.7.0 [TSS04]")
    assert rest == b""  # closed, and the pipelined second RCPT was not answered


async def test_latency_delays_rcpt_reply(tmp_path):
    """latency = "300ms" delays the RCPT reply by at least 0.3 s; other domains answer fast."""
    async with running_sink(tmp_path, SMART) as sink:
        async with session(sink) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            slow = await rcpt(client, "u@slow.test")
            slow_took = loop.time() - started
            started = loop.time()
            await rcpt(client, "u@ok.test")
            fast_took = loop.time() - started
    assert slow.code == 250
    assert slow_took >= 0.3
    assert fast_took < 0.3


async def test_liveness_and_metrics_endpoints(tmp_path):
    """/api/check-liveness/v1 answers 200 OK and /metrics serves the sink's counters."""
    async with running_sink(tmp_path, SMART) as sink:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{sink.http_port}/api/check-liveness/v1") as r:
                status, text = r.status, await r.text()
        samples = await scrape(sink)
    assert (status, text) == (200, "OK")
    for name in ("nimbus_sink_connections_total", "nimbus_sink_bytes_total"):
        assert (name, ()) in samples


async def test_responses_reloaded_when_file_changes(tmp_path):
    """Editing the responses file changes the replies without a restart."""
    async with running_sink(tmp_path, SMART, reload_interval=0.05) as sink:
        sink.reloaded.clear()
        (tmp_path / "responses.toml").write_text('["ok.test"]\nbounce = 100\n')
        await asyncio.wait_for(sink.reloaded.wait(), 10)
        async with session(sink) as client:
            reply = await rcpt(client, "u@ok.test")
        samples = await scrape(sink)
    assert reply.code == 550
    assert samples[("nimbus_sink_reloads_total", (("result", "ok"),))] == 1


async def test_broken_edit_keeps_last_good_responses(tmp_path):
    """A broken responses file is reported and the running responses stay in force."""
    async with running_sink(tmp_path, SMART, reload_interval=0.05) as sink:
        sink.reloaded.clear()
        (tmp_path / "responses.toml").write_text("[default]\nbounce = 500\n")
        await asyncio.wait_for(sink.reloaded.wait(), 10)
        async with session(sink) as client:
            ok = await rcpt(client, "u@ok.test")
            bounced = await rcpt(client, "u@bounce.test")
        samples = await scrape(sink)
    assert ok.code == 250 and bounced.code in (550, 554)
    assert samples[("nimbus_sink_reloads_total", (("result", "error"),))] == 1


async def test_start_fails_on_broken_responses_file(tmp_path):
    """A broken responses file stops start-up with a ConfigError naming file, table and key."""
    with pytest.raises(ConfigError, match=r"responses.toml: \[default\] defer"):
        async with running_sink(tmp_path, "[default]\ndefer = 'x'\n"):
            pass


RUN_SINK = """
import asyncio
from engine.logs import diagnostics as diag
from engine.config.settings import load_settings
import sink.app
diag.configure("info")
asyncio.run(sink.app.run(load_settings()))
"""


async def test_run_logs_ready_with_ports_and_stops_on_sigterm(tmp_path):
    """run() logs a JSON "ready" line with both ports, serves, and exits 0 on SIGTERM."""
    env = {
        **os.environ,
        "NIMBUS_SINK_LISTEN": "127.0.0.1:0",
        "NIMBUS_SINK_HTTP_LISTEN": "127.0.0.1:0",
        "NIMBUS_SMTP_HOSTNAME": "sink.test",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUN_SINK,
        env=env,
        cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while (ready := json.loads(await proc.stderr.readline()))["event"] != "ready":
                pass
        _, reply = await aiosmtplib.send(
            MESSAGE,
            sender="s@src.test",
            recipients=["u@x.test"],
            hostname="127.0.0.1",
            port=ready["smtp_port"],
            start_tls=False,
        )
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{ready['http_port']}/api/check-liveness/v1"
            async with http.get(url) as resp:
                assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            rest = [json.loads(line) for line in (await proc.stderr.read()).splitlines()]
            rc = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert reply.startswith("2.0.0 OK")
    assert rc == 0
    assert rest[-1]["event"] == "stopped" and rest[-1]["accepted"] == 1


# --- a Nimbus node relaying to the smart sink ---------------------------------------------

NODE_POLICY = """
def register(nimbus):
    @nimbus.on("get_queue_config")
    def queue(domain, tenant, campaign, routing_domain):
        return nimbus.QueueConfig(retry_interval=3600)
"""


async def test_node_records_match_sink_replies(tmp_path):
    """A node relaying to the smart sink logs Delivery, TransientFailure and Bounce records
    carrying the sink's configured replies, and deferred messages stay queued."""
    (tmp_path / "sink").mkdir()
    async with running_sink(tmp_path / "sink", SMART) as sink:
        async with running_node(
            tmp_path / "node",
            policy=NODE_POLICY,
            **{"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{sink.smtp_port}"},
        ) as node:
            for rcpt_to in (
                "u@ok.test",
                "u@defer.test",
                "u@bounce.test",
                "tempfail@ok.test",
                "permfail@ok.test",
            ):
                await aiosmtplib.send(
                    MESSAGE,
                    sender="s@src.test",
                    recipients=[rcpt_to],
                    hostname="127.0.0.1",
                    port=node.smtp_port,
                    start_tls=False,
                )
            final = {"Delivery", "TransientFailure", "Bounce"}
            await node.records.wait(lambda r: r["type"] in final, count=5)
            by_rcpt = {r["recipient"]: r for r in node.records.items if r["type"] in final}
            queued = len(node.scheduler.messages())
    assert by_rcpt["u@ok.test"]["type"] == "Delivery"
    deferred = by_rcpt["u@defer.test"]
    assert deferred["type"] == "TransientFailure"
    assert deferred["response"]["code"] == 451
    assert deferred["response"]["enhanced_code"] == {"class": 4, "subject": 7, "detail": 500}
    assert "Server busy" in deferred["response"]["content"]
    bounce = by_rcpt["u@bounce.test"]
    assert bounce["type"] == "Bounce" and bounce["response"]["code"] in (550, 554)
    assert by_rcpt["tempfail@ok.test"]["type"] == "TransientFailure"
    assert by_rcpt["tempfail@ok.test"]["response"]["code"] == 451
    assert by_rcpt["permfail@ok.test"]["type"] == "Bounce"
    assert "permfail requested" in by_rcpt["permfail@ok.test"]["response"]["content"]
    assert queued == 2  # the two deferrals wait for their retry an hour away
    assert sink.metrics.counts()["accepted"] == 1
