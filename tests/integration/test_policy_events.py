"""Policy events end to end: rejects give exact replies, hooks change behaviour, reload works."""

from __future__ import annotations

import asyncio
import logging
import textwrap
import time

import aiohttp

from tests.support.node import running_node
from tests.support.receiver import Receiver


async def smtp(port: int, *commands: bytes) -> list[bytes]:
    """Run a dialogue one command at a time; returns the final reply line of each step
    (the greeting first)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = []

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                return line.rstrip(b"\r\n")

    try:
        async with asyncio.timeout(10):
            replies.append(await reply())
            for command in commands:
                writer.write(command)
                await writer.drain()
                replies.append(await reply())
    finally:
        writer.close()
        await writer.wait_closed()
    return replies


def sink(rx: Receiver) -> dict:
    return {"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"}


MESSAGE = b"Subject: t\r\n\r\nbody\r\n.\r\n"


async def test_mail_from_reject_gives_the_exact_reply(tmp_path):
    """nimbus.reject(code, text) in smtp_server_mail_from is the MAIL reply, verbatim."""
    policy = """
    def register(nimbus):
        @nimbus.on("smtp_server_mail_from")
        def mail_from(sender, conn_meta):
            if sender.endswith("@blocked.test"):
                nimbus.reject(550, "5.7.1 sender blocked by policy")
    """
    async with running_node(tmp_path, policy=policy) as node:
        replies = await smtp(
            node.smtp_port,
            b"EHLO c.test\r\n",
            b"MAIL FROM:<x@blocked.test>\r\n",
            b"MAIL FROM:<x@ok.test>\r\n",
        )
    assert replies[2] == b"550 5.7.1 sender blocked by policy"
    assert replies[3].startswith(b"250")


async def test_message_received_reject_is_the_data_reply_and_an_http_failure(tmp_path, auth_dir):
    """A reject in smtp_server_message_received / http_message_generated is the DATA reply,
    and for HTTP a failed recipient with the same text."""
    policy = """
    def register(nimbus):
        def check(msg):
            if msg.get_first_named_header_value("Subject") == "spam":
                nimbus.reject(554, "5.7.1 content refused")

        @nimbus.on("smtp_server_message_received")
        def received(msg, conn_meta):
            check(msg)

        @nimbus.on("http_message_generated")
        def generated(msg, auth_info):
            check(msg)
    """
    async with Receiver() as rx:
        async with running_node(
            tmp_path, policy=policy, **sink(rx), **{"http.auth_dir": str(auth_dir)}
        ) as node:
            replies = await smtp(
                node.smtp_port,
                b"EHLO c.test\r\n",
                b"MAIL FROM:<a@src.test>\r\n",
                b"RCPT TO:<b@dst.test>\r\n",
                b"DATA\r\n",
                b"Subject: spam\r\n\r\nbuy\r\n.\r\n",
            )
            body = {
                "envelope_sender": "a@src.test",
                "recipients": [{"email": "b@dst.test"}, {"email": "c@dst.test"}],
                "content": "Subject: {% if email == 'b@dst.test' %}spam{% else %}ok"
                "{% endif %}\r\n\r\nhi\r\n",
            }
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    f"http://127.0.0.1:{node.http_port}/api/inject/v1",
                    json=body,
                    headers={"Authorization": aiohttp.encode_basic_auth("alice", "s3cret")},
                ) as resp:
                    result = await resp.json()
            await rx.wait_for(1)
    assert replies[-1] == b"554 5.7.1 content refused"
    assert result["success_count"] == 1 and result["fail_count"] == 1
    assert result["failed_recipients"] == ["b@dst.test"]
    assert result["errors"] == ["b@dst.test: 554 5.7.1 content refused"]


async def test_ehlo_hook_can_reject_and_rewrite_extensions(tmp_path):
    """smtp_server_ehlo may reject a client name or replace the advertised extensions."""
    policy = """
    def register(nimbus):
        @nimbus.on("smtp_server_ehlo")
        def ehlo(domain, conn_meta, extensions):
            if domain == "bad.test":
                nimbus.reject(550, "5.7.1 go away")
            return [e for e in extensions if e != "PIPELINING"]
    """
    async with running_node(tmp_path, policy=policy) as node:
        bad = await smtp(node.smtp_port, b"EHLO bad.test\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", node.smtp_port)
        await reader.readline()
        writer.write(b"EHLO good.test\r\n")
        lines = []
        while not lines or lines[-1][3:4] != b" ":
            lines.append(await reader.readline())
        writer.close()
        await writer.wait_closed()
    assert bad[1] == b"550 5.7.1 go away"
    assert lines[0].startswith(b"250") and b"SIZE" in b"".join(lines)
    assert b"PIPELINING" not in b"".join(lines)


async def test_listener_domain_relay_to_accepts_inbound_mail_from_anyone(tmp_path):
    """With relaying closed to the peer, get_listener_domain(relay_to=True) still accepts
    mail for that domain; other domains are denied."""
    policy = """
    def register(nimbus):
        @nimbus.on("get_listener_domain")
        def listener_domain(domain, listener, conn_meta):
            if domain == "inbound.test":
                return nimbus.ListenerDomain(relay_to=True)
    """
    async with running_node(
        tmp_path, policy=policy, **{"smtp.relay_hosts": ["10.255.0.0/16"]}
    ) as node:
        replies = await smtp(
            node.smtp_port,
            b"EHLO c.test\r\n",
            b"MAIL FROM:<a@src.test>\r\n",
            b"RCPT TO:<u@inbound.test>\r\n",
            b"RCPT TO:<u@elsewhere.test>\r\n",
        )
    assert replies[3].startswith(b"250")
    assert replies[4].startswith(b"550 5.7.1")


async def test_wrong_answer_type_is_451_and_one_log_line(tmp_path, caplog):
    """An EHLO handler answering a string instead of a list of extensions gives 451 4.3.0
    and one error line naming the event, the handler and both types."""
    policy = """
    def register(nimbus):
        @nimbus.on("smtp_server_ehlo")
        def ehlo(domain, conn_meta, extensions):
            return "PIPELINING"
    """
    caplog.set_level(logging.INFO, logger="nimbus.events")
    async with running_node(tmp_path, policy=policy) as node:
        replies = await smtp(node.smtp_port, b"EHLO c.test\r\n")
    assert replies[1].startswith(b"451 4.3.0 ")
    [line] = [r for r in caplog.records if r.name == "nimbus.events"]
    assert line.getMessage() == "policy_handler_wrong_type"
    assert (line.event_name, line.expected, line.actual) == ("smtp_server_ehlo", "list[str]", "str")
    assert line.handler.endswith(".ehlo")


async def test_basic_auth_hook_decides_http_credentials(tmp_path):
    """http_server_validate_auth_basic accepts users with no auth directory at all."""
    policy = """
    def register(nimbus):
        @nimbus.on("http_server_validate_auth_basic")
        async def check(user, password):
            return user == "bob" and password == "hunter2"
    """
    body = {
        "envelope_sender": "a@src.test",
        "recipients": [{"email": "b@dst.test"}],
        "content": "Subject: x\r\n\r\nhi\r\n",
    }
    async with Receiver() as rx:
        async with running_node(tmp_path, policy=policy, **sink(rx)) as node:
            url = f"http://127.0.0.1:{node.http_port}/api/inject/v1"
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    url,
                    json=body,
                    headers={"Authorization": aiohttp.encode_basic_auth("bob", "hunter2")},
                ) as ok:
                    ok_status = ok.status
                async with http.post(
                    url,
                    json=body,
                    headers={"Authorization": aiohttp.encode_basic_auth("bob", "wrong")},
                ) as bad:
                    bad_status = bad.status
            await rx.wait_for(1)
    assert (ok_status, bad_status) == (200, 401)


async def test_requeue_message_reject_turns_a_deferral_into_a_bounce(tmp_path):
    """A reject in requeue_message bounces the message with that reply instead of retrying."""
    policy = """
    def register(nimbus):
        @nimbus.on("requeue_message")
        def requeue(msg, response, insert_context, increment_attempts, delay):
            nimbus.reject(550, "5.0.0 not retrying " + str(response.code))
    """
    async with Receiver(rcpt=lambda addr, n: "451 4.3.0 busy") as rx:
        async with running_node(tmp_path, policy=policy, **sink(rx)) as node:
            await smtp(
                node.smtp_port,
                b"EHLO c.test\r\n",
                b"MAIL FROM:<a@src.test>\r\n",
                b"RCPT TO:<b@dst.test>\r\n",
                b"DATA\r\n",
                MESSAGE,
            )
            [bounce] = await node.records.wait(lambda r: r["type"] == "Bounce")
    assert bounce["response"]["code"] == 550
    assert bounce["response"]["content"] == "not retrying 451"
    assert len(node.records.of("TransientFailure")) == 1


async def test_requeue_message_can_rebind_to_another_queue(tmp_path):
    """Changing queue meta in requeue_message moves the message to that scheduled queue."""
    policy = """
    def register(nimbus):
        @nimbus.on("requeue_message")
        def requeue(msg, response, insert_context, increment_attempts, delay):
            msg.set_meta("routing_domain", "fallback.test")

        @nimbus.on("get_queue_config")
        def queue_config(domain, tenant, campaign, routing_domain):
            return nimbus.QueueConfig(retry_interval=3600)
    """
    async with Receiver(rcpt=lambda addr, n: "451 4.3.0 busy") as rx:
        async with running_node(tmp_path, policy=policy, **sink(rx)) as node:
            await smtp(
                node.smtp_port,
                b"EHLO c.test\r\n",
                b"MAIL FROM:<a@src.test>\r\n",
                b"RCPT TO:<b@dst.test>\r\n",
                b"DATA\r\n",
                MESSAGE,
            )
            await node.records.wait(lambda r: r["type"] == "TransientFailure")
            # The record is written before requeue_message runs (in a policy thread).
            async with asyncio.timeout(10):
                while not node.scheduler.messages():
                    await asyncio.sleep(0.01)
            [msg] = node.scheduler.messages()
    assert msg.queue == "dst.test!fallback.test"
    assert msg.meta["routing_domain"] == "fallback.test"


async def test_delivery_status_rewrite_turns_a_bounce_into_a_retry(tmp_path):
    """smtp_client_rewrite_delivery_status changing 550 to 450 gives a TransientFailure whose
    text says it was rewritten."""
    policy = """
    def register(nimbus):
        @nimbus.on("smtp_client_rewrite_delivery_status")
        def rewrite(response, domain, tenant, campaign, routing_domain):
            if response.code == 550 and "try again" in response.content:
                return 450
    """
    async with Receiver(rcpt=lambda addr, n: "550 5.7.1 busy, try again later") as rx:
        async with running_node(tmp_path, policy=policy, **sink(rx)) as node:
            await smtp(
                node.smtp_port,
                b"EHLO c.test\r\n",
                b"MAIL FROM:<a@src.test>\r\n",
                b"RCPT TO:<b@dst.test>\r\n",
                b"DATA\r\n",
                MESSAGE,
            )
            [rec] = await node.records.wait(lambda r: r["type"] == "TransientFailure")
    assert rec["response"]["code"] == 450
    assert rec["response"]["content"].endswith("(nimbus: status was rewritten from 550 -> 450)")
    assert node.records.of("Bounce") == []


async def test_broken_or_slow_handler_gives_451_and_the_node_keeps_serving(tmp_path):
    """A handler that raises or exceeds policy.event_timeout becomes 451 4.3.0, not a crash."""
    policy = """
    import asyncio

    def register(nimbus):
        @nimbus.on("smtp_server_mail_from")
        async def mail_from(sender, conn_meta):
            if sender.startswith("crash@"):
                raise RuntimeError("policy bug")
            if sender.startswith("slow@"):
                await asyncio.sleep(30)
    """
    async with running_node(tmp_path, policy=policy, **{"policy.event_timeout": 0.2}) as node:
        replies = await smtp(
            node.smtp_port,
            b"EHLO c.test\r\n",
            b"MAIL FROM:<crash@src.test>\r\n",
            b"MAIL FROM:<slow@src.test>\r\n",
            b"MAIL FROM:<fine@src.test>\r\n",
        )
    assert replies[2].startswith(b"451 4.3.0 ")
    assert replies[3].startswith(b"451 4.3.0 ")
    assert replies[4].startswith(b"250")


async def test_blocking_sync_handler_gives_451_on_time_and_the_loop_keeps_serving(tmp_path):
    """A plain handler doing time.sleep(1) under a 0.1 s policy.event_timeout gives
    451 4.3.0 within 0.3 s over SMTP, and another session is served meanwhile."""
    policy = """
    import time

    def register(nimbus):
        @nimbus.on("smtp_server_mail_from")
        def mail_from(sender, conn_meta):
            if sender.startswith("slow@"):
                time.sleep(1)
    """
    async with running_node(tmp_path, policy=policy, **{"policy.event_timeout": 0.1}) as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.smtp_port)

        async def slow_mail() -> tuple[bytes, float]:
            await reader.readline()
            writer.write(b"EHLO c.test\r\n")
            while (await reader.readline())[3:4] == b"-":
                pass
            started = time.monotonic()
            writer.write(b"MAIL FROM:<slow@src.test>\r\n")
            return await reader.readline(), time.monotonic() - started

        try:
            async with asyncio.timeout(10):
                (slow_reply, elapsed), fine = await asyncio.gather(
                    slow_mail(),
                    smtp(node.smtp_port, b"EHLO d.test\r\n", b"MAIL FROM:<fine@src.test>\r\n"),
                )
        finally:
            writer.close()
            await writer.wait_closed()
    assert slow_reply.startswith(b"451 4.3.0 ") and elapsed < 0.3
    assert fine[2].startswith(b"250")


def write_policy(path, source: str) -> None:
    path.write_text(textwrap.dedent(source))


async def wait_reloads(node, result: str, count: int) -> None:
    counter = node.metrics.policy_reloads.labels(result)
    async with asyncio.timeout(10):
        while counter._value.get() < count:
            await asyncio.sleep(0.05)  # the watcher polls the directory; wait for its verdict


ACCEPT_ALL = """
def register(nimbus):
    pass
"""
REJECT_X = """
def register(nimbus):
    @nimbus.on("smtp_server_mail_from")
    def mail_from(sender, conn_meta):
        if sender.startswith("x@"):
            nimbus.reject(550, "5.7.1 x refused after reload")
"""


async def test_edited_policy_takes_effect_without_restart(tmp_path):
    """Editing init.py is picked up by the file watch; the new handler applies at once."""
    async with running_node(tmp_path, policy=ACCEPT_ALL, **{"policy.reload_interval": 0.1}) as node:
        before = await smtp(node.smtp_port, b"EHLO c.test\r\n", b"MAIL FROM:<x@src.test>\r\n")
        write_policy(tmp_path / "policy" / "init.py", REJECT_X)
        await wait_reloads(node, "ok", 1)
        after = await smtp(node.smtp_port, b"EHLO c.test\r\n", b"MAIL FROM:<x@src.test>\r\n")
    assert before[2].startswith(b"250")
    assert after[2] == b"550 5.7.1 x refused after reload"


async def test_broken_policy_edit_keeps_the_last_good_policy(tmp_path):
    """A syntax error in an edit is refused (logged, counted) and the running policy stays."""
    async with running_node(tmp_path, policy=REJECT_X, **{"policy.reload_interval": 0.1}) as node:
        write_policy(tmp_path / "policy" / "init.py", "def register(nimbus):\n    this is broken\n")
        await wait_reloads(node, "error", 1)
        replies = await smtp(node.smtp_port, b"EHLO c.test\r\n", b"MAIL FROM:<x@src.test>\r\n")
    assert replies[2] == b"550 5.7.1 x refused after reload"


async def test_reload_request_reloads_even_without_file_changes(tmp_path):
    """request_reload (what SIGHUP calls) reloads the policy even when no file changed."""
    async with running_node(tmp_path, policy=ACCEPT_ALL, **{"policy.reload_interval": 0}) as node:
        node.request_reload()
        await wait_reloads(node, "ok", 1)


async def test_bounce_records_carry_the_policy_classification(tmp_path):
    """configure_bounce_classifier rules classify Bounce records (first match wins)."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[rules]\nInvalidRecipient = ["^550 5\\\\.1\\\\.1 "]\nSpamBlock = ["^550 "]\n')
    policy = f"""
    def register(nimbus):
        nimbus.configure_bounce_classifier([{str(rules)!r}])
    """
    async with Receiver(rcpt=lambda addr, n: "550 5.1.1 no such user") as rx:
        async with running_node(tmp_path, policy=policy, **sink(rx)) as node:
            await smtp(
                node.smtp_port,
                b"EHLO c.test\r\n",
                b"MAIL FROM:<a@src.test>\r\n",
                b"RCPT TO:<b@dst.test>\r\n",
                b"DATA\r\n",
                MESSAGE,
            )
            [rec] = await node.records.wait(lambda r: r["type"] == "Bounce")
    assert rec["bounce_classification"] == "InvalidRecipient"


async def test_set_scheduling_first_attempt_delays_delivery(tmp_path):
    """A first_attempt in the future keeps the message scheduled until then."""
    policy = """
    import time

    def register(nimbus):
        @nimbus.on("smtp_server_message_received")
        def received(msg, conn_meta):
            msg.set_scheduling({"first_attempt": time.time() + 0.8})
    """
    async with Receiver() as rx:
        async with running_node(tmp_path, policy=policy, **sink(rx)) as node:
            started = time.time()
            await smtp(
                node.smtp_port,
                b"EHLO c.test\r\n",
                b"MAIL FROM:<a@src.test>\r\n",
                b"RCPT TO:<b@dst.test>\r\n",
                b"DATA\r\n",
                MESSAGE,
            )
            await rx.wait_for(1)
    assert time.time() - started >= 0.75
