"""The suppression list end to end: real nodes, real SMTP (aiosmtplib) and HTTP, a scripted
receiver that hard-bounces, ARF reports over SMTP, a real redis-server shared by two nodes,
and the admin CLI."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import aiosmtplib
import pytest

from engine.admin import cli as admin_cli
from engine.config.settings import BUNDLED_POLICY_DIR
from engine.suppression.entries import Filter, Reason, Suppression
from tests.support.node import running_node
from tests.support.receiver import Receiver
from tests.support.redis_server import RedisServer
from tests.support.reports import arf, dsn, original, trace_value

AUTH = {"Authorization": aiohttp.encode_basic_auth("alice", "s3cret")}
RULES = BUNDLED_POLICY_DIR / "bounce_rules.toml"

POLICY = f"""
def register(nimbus):
    nimbus.configure_bounce_classifier([{str(RULES)!r}])

    @nimbus.on("get_listener_domain")
    def listener_domain(domain, listener, conn_meta):
        if domain == "fbl.test":
            return nimbus.ListenerDomain(relay_to=True, log_arf="LogThenDrop")
        if domain == "bounce.test":
            return nimbus.ListenerDomain(relay_to=True, log_oob="LogThenDrop")
        return None
"""

# The bundled wiring of queues.toml's [tenant.*] suppression = false (policy/init.py).
TENANT_POLICY = """
from engine.policy.helpers.queues import QueueHelper

def register(nimbus):
    queues = QueueHelper.load(nimbus.path("queues.toml"))

    @nimbus.on("smtp_server_message_received", inline=True)
    def smtp(msg, conn_meta):
        queues.apply(msg)

    @nimbus.on("http_message_generated", inline=True)
    def http(msg, auth_info):
        queues.apply(msg)

    if queues.overrides_suppression():
        @nimbus.on("should_suppress_recipient", inline=True)
        def should_suppress(recipient, tenant, reason):
            return queues.suppression(tenant)
"""

QUEUES_TOML = """
tenant_header = "X-Tenant"
default_tenant = "default"
[tenant.'default']
[tenant.'acme']
[tenant.'transactional']
suppression = false
"""

HARD = "550 5.1.1 <gone@dest.test>: Recipient address rejected: User unknown"


def node_for(tmp_path, rx: Receiver, auth_dir, *, policy: str = POLICY, **extra):
    return running_node(
        tmp_path,
        policy=policy,
        **{
            "http.auth_dir": str(auth_dir),
            "sink.enabled": True,
            "sink.endpoint": f"127.0.0.1:{rx.port}",
            "suppression.enabled": True,
            **extra,
        },
    )


async def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    """Wait for ``predicate()`` (checked as the loop turns) up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.02)


async def suppressed(node, recipient: str) -> bool:
    return bool(await node.suppressions.store.get(recipient))


async def smtp_rcpt(node, recipient: str) -> tuple[int, str]:
    """MAIL and RCPT over a real session; the RCPT reply."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=node.smtp_port, timeout=10)
    await client.connect()
    try:
        await client.ehlo(hostname="client.test")
        await client.mail("sender@src.test")
        try:
            reply = await client.rcpt(recipient)
        except aiosmtplib.SMTPRecipientRefused as exc:
            return exc.code, exc.message
        return reply.code, reply.message
    finally:
        await client.quit()


async def smtp_send(node, recipient: str, headers: str = "") -> tuple[int, str]:
    """A whole transaction; the DATA reply (or the RCPT refusal)."""
    message = f"From: s@src.test\r\nTo: {recipient}\r\n{headers}Subject: t\r\n\r\nbody\r\n"
    try:
        errors, text = await aiosmtplib.send(
            message.encode(),
            sender="sender@src.test",
            recipients=[recipient],
            hostname="127.0.0.1",
            port=node.smtp_port,
            timeout=10,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refused = exc.recipients[0]
        return refused.code, refused.message
    except aiosmtplib.SMTPDataError as exc:
        return exc.code, exc.message
    return 250, text


async def send_report(node, data: bytes, to: str = "fbl@fbl.test") -> None:
    """A report from a receiving MTA: null reverse path, to the feedback address."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=node.smtp_port, timeout=10)
    await client.connect()
    try:
        await client.ehlo(hostname="mx.dest.test")
        await client.mail("")
        await client.rcpt(to)
        await client.data(data)
    finally:
        await client.quit()


async def inject(node, recipient: str, headers: dict | None = None) -> dict:
    body = {
        "envelope_sender": "sender@src.test",
        "recipients": [{"email": recipient}],
        "content": {
            "subject": "hi",
            "from": {"email": "sender@src.test"},
            "text_body": "hello",
            "headers": headers or {},
        },
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"http://127.0.0.1:{node.http_port}/api/inject/v1", json=body, headers=AUTH
        ) as resp:
            assert resp.status == 200
            return await resp.json()


async def test_hard_bounce_suppresses_the_next_injection(tmp_path, auth_dir):
    """A 550 5.1.1 from the receiver suppresses the recipient: the next message to it is
    refused at RCPT with 550 5.7.1 and by HTTP injection as a failed recipient, each with
    a Rejection record."""
    async with (
        Receiver(rcpt=lambda addr, n: HARD if addr.startswith("gone@") else None) as rx,
        node_for(tmp_path, rx, auth_dir) as node,
    ):
        assert (await smtp_send(node, "gone@dest.test"))[0] == 250
        [bounce] = await node.records.wait(lambda r: r["type"] == "Bounce")
        assert bounce["bounce_classification"] == "InvalidRecipient"
        await wait_until(lambda: suppressed(node, "gone@dest.test"), what="suppressed")

        code, text = await smtp_rcpt(node, "Gone@Dest.test")
        answer = await inject(node, "gone@dest.test")
        ok = await inject(node, "other@dest.test")
        rejections = await node.records.wait(lambda r: r["type"] == "Rejection", count=2)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{node.http_port}/metrics") as resp:
                metrics = await resp.text()
    assert code == 550 and text.startswith("5.7.1 <gone@dest.test> is on the suppression list")
    assert "hard bounce: InvalidRecipient" in text
    assert answer["fail_count"] == 1 and answer["failed_recipients"] == ["gone@dest.test"]
    assert "550 5.7.1" in answer["errors"][0] and "suppression list" in answer["errors"][0]
    assert ok["success_count"] == 1
    assert [r["reception_protocol"] for r in rejections] == ["ESMTP", "HTTP"]
    assert {r["response"]["code"] for r in rejections} == {550}
    assert {r["recipient"] for r in rejections} == {"Gone@Dest.test", "gone@dest.test"}
    assert 'nimbus_suppression_refused_total{reason="bounce"} 2.0' in metrics
    assert 'nimbus_suppression_recorded_total{reason="bounce"} 1.0' in metrics


async def test_soft_bounce_does_not_suppress(tmp_path, auth_dir):
    """A classification that is not listed (a full mailbox, 552 5.2.2) suppresses nobody."""
    full = "552 5.2.2 Mailbox full"
    async with (
        Receiver(rcpt=lambda addr, n: full) as rx,
        node_for(tmp_path, rx, auth_dir) as node,
    ):
        await smtp_send(node, "full@dest.test")
        [bounce] = await node.records.wait(lambda r: r["type"] == "Bounce")
        assert bounce["bounce_classification"] not in node.settings.suppression.classifications
        assert (await smtp_rcpt(node, "full@dest.test"))[0] == 250
    assert node.suppressions.recorded == 0


async def test_arf_complaint_suppresses(tmp_path, auth_dir, rx):
    """An abuse report for a listener domain with log_arf makes a Feedback record, which
    suppresses the original recipient (from the X-KumoRef trace header)."""
    async with node_for(tmp_path, rx, auth_dir, **{"smtp.relay_hosts": ["10.255.0.0/16"]}) as node:
        report = arf(attach=original(trace=trace_value("victim@dest.test")))
        await send_report(node, report)
        [feedback] = await node.records.wait(lambda r: r["type"] == "Feedback")
        await wait_until(lambda: suppressed(node, "victim@dest.test"), what="suppressed")
        answer = await inject(node, "victim@dest.test")
    assert feedback["recipient"] == "victim@dest.test"
    assert answer["failed_recipients"] == ["victim@dest.test"]
    assert "(complaint: abuse)" in answer["errors"][0]


async def test_an_asynchronous_hard_bounce_suppresses(tmp_path, auth_dir, rx):
    """A DSN for a listener domain with log_oob (550 5.1.1, sent after the remote MTA took
    the message) makes an OOB record classified like a Bounce, which suppresses the original
    recipient (from the X-KumoRef trace header): the next injection to it is refused."""
    async with node_for(tmp_path, rx, auth_dir, **{"smtp.relay_hosts": ["10.255.0.0/16"]}) as node:
        report = dsn(
            recipient="late@dest.test", attach=original(trace=trace_value("late@dest.test"))
        )
        await send_report(node, report, to="bounces@bounce.test")
        [oob] = await node.records.wait(lambda r: r["type"] == "OOB")
        await wait_until(lambda: suppressed(node, "late@dest.test"), what="suppressed")
        answer = await inject(node, "late@dest.test")
    assert oob["recipient"] == "late@dest.test"
    assert oob["bounce_classification"] in node.settings.suppression.classifications
    assert answer["failed_recipients"] == ["late@dest.test"]
    assert "suppression list" in answer["errors"][0]


async def test_entries_expire(tmp_path, auth_dir, rx):
    """A complaint entry under suppression.complaint_expiry refuses mail, then lets it
    through once expired; an admin entry's own duration works the same way."""
    settings = {"smtp.relay_hosts": ["10.255.0.0/16"], "suppression.complaint_expiry": "1s"}
    async with node_for(tmp_path, rx, auth_dir, **settings) as node:
        report = arf(attach=original(trace=trace_value("brief@dest.test")))
        await send_report(node, report)
        await wait_until(lambda: suppressed(node, "brief@dest.test"), what="suppressed")
        [entry] = await node.suppressions.store.get("brief@dest.test")
        assert entry.expires is not None and entry.expires - entry.created == pytest.approx(1.0)
        first = await inject(node, "brief@dest.test")

        async def accepted() -> bool:
            return (await inject(node, "brief@dest.test"))["success_count"] == 1

        await wait_until(accepted, timeout=5, what="expired")
    assert first["fail_count"] == 1


async def test_two_nodes_share_the_list_through_redis(tmp_path, auth_dir):
    """A hard bounce seen by node A suppresses the recipient on node B (same Redis), and a
    removal through B's admin API frees it on both."""
    async with (
        RedisServer() as redis,
        Receiver(rcpt=lambda addr, n: HARD) as rx,
        node_for(tmp_path / "a", rx, auth_dir, **{"redis.url": redis.url, "node_id": "a"}) as a,
        node_for(tmp_path / "b", rx, auth_dir, **{"redis.url": redis.url, "node_id": "b"}) as b,
    ):
        assert (await smtp_send(a, "gone@dest.test"))[0] == 250
        await a.records.wait(lambda r: r["type"] == "Bounce")
        await wait_until(lambda: suppressed(b, "gone@dest.test"), what="in Redis")
        code, text = await smtp_rcpt(b, "gone@dest.test")
        answer = await inject(b, "gone@dest.test")
        removed = await asyncio.to_thread(
            admin_cli.main,
            [
                "suppression-remove",
                "--endpoint",
                f"http://127.0.0.1:{b.http_port}",
                "--recipient",
                "gone@dest.test",
            ],
        )
        after_b = await smtp_rcpt(b, "gone@dest.test")
        after_a = await smtp_rcpt(a, "gone@dest.test")  # a never cached the entry
    assert code == 550 and "hard bounce" in text
    assert answer["failed_recipients"] == ["gone@dest.test"]
    assert removed == 0 and after_b[0] == 250 and after_a[0] == 250


async def test_a_cached_lookup_is_trusted_for_cache_ttl(tmp_path, auth_dir, rx):
    """Node B looked the address up before A's entry: B refuses it once its cached
    "not suppressed" is older than suppression.cache_ttl."""
    async with RedisServer() as redis:
        shared = {"redis.url": redis.url, "suppression.cache_ttl": "0.5s"}
        async with (
            node_for(tmp_path / "a", rx, auth_dir, **shared, node_id="a") as a,
            node_for(tmp_path / "b", rx, auth_dir, **shared, node_id="b") as b,
        ):
            assert (await smtp_rcpt(b, "late@dest.test"))[0] == 250  # cached: no entry
            entry = Suppression(
                recipient="late@dest.test", reason=Reason.ADMIN, created=time.time()
            )
            await a.suppressions.add([entry])
            started = time.monotonic()

            async def refused() -> bool:
                return (await smtp_rcpt(b, "late@dest.test"))[0] == 550

            await wait_until(refused, timeout=5, what="cache expiry")
    assert time.monotonic() - started < 2


async def test_admin_verbs_and_csv_round_trip(tmp_path, auth_dir, rx, capsys):
    """suppression-add/-list/-remove and CSV import/export against a real node; every
    POST/DELETE is an AdminAudit record."""
    async with node_for(tmp_path, rx, auth_dir) as node:
        endpoint = ["--endpoint", f"http://127.0.0.1:{node.http_port}"]

        def cli(*argv: str) -> int:
            return admin_cli.main([argv[0], *endpoint, *argv[1:]])

        csv_in = tmp_path / "in.csv"
        csv_in.write_text(
            "email,tenant,reason,detail,created,expires\n"
            "a@x.test,,bounce,InvalidRecipient,2026-01-02T03:04:05Z,\n"
            "B@X.test,acme,complaint,abuse,2026-01-02T03:04:05Z,2099-01-01T00:00:00Z\n"
            "c@y.test,,,moved from another platform,,\n"
        )
        assert await asyncio.to_thread(cli, "suppression-import", str(csv_in)) == 0
        assert (
            await asyncio.to_thread(
                cli,
                "suppression-add",
                "--recipient",
                "d@y.test",
                "--detail",
                "asked",
                "--duration",
                "1h",
            )
            == 0
        )
        capsys.readouterr()
        assert await asyncio.to_thread(cli, "suppression-list", "--domain", "x.test") == 0
        listing = capsys.readouterr().out
        out = tmp_path / "out.csv"
        assert await asyncio.to_thread(cli, "suppression-export", "--output", str(out)) == 0
        assert await asyncio.to_thread(cli, "suppression-remove", "--recipient", "a@x.test") == 0
        assert await asyncio.to_thread(cli, "suppression-remove", "--recipient", "a@x.test") == 1
        tenant_only = await asyncio.to_thread(
            cli, "suppression-remove", "--recipient", "b@x.test", "--tenant", "acme"
        )
        bad = tmp_path / "bad.csv"
        bad.write_text("email,status\nz@x.test,bounced\n")
        refused = await asyncio.to_thread(cli, "suppression-import", str(bad))
        left = await node.suppressions.list(Filter())
        audits = node.records.of("AdminAudit")
    assert "a@x.test" in listing and "b@x.test" in listing and "c@y.test" not in listing
    assert "2 suppressed" in listing
    lines = out.read_text().splitlines()
    assert lines[0] == "recipient,tenant,reason,detail,created,expires"
    assert lines[1].startswith("a@x.test,,bounce,InvalidRecipient,2026-01-02T03:04:05")
    assert lines[2].startswith("b@x.test,acme,complaint,abuse,2026-01-02T03:04:05")
    assert lines[2].endswith("2099-01-01T00:00:00.000000Z")
    assert lines[3].startswith("c@y.test,,admin,moved from another platform,")
    assert lines[4].startswith("d@y.test,,admin,asked,")
    assert tenant_only == 0 and refused == 2
    assert sorted(e.recipient for e in left) == ["c@y.test", "d@y.test"]
    posts = [a for a in audits if "suppression" in a["meta"]["admin_endpoint"]]
    assert [a["meta"]["admin_endpoint"] for a in posts] == [
        "POST /api/admin/suppression/v1",
        "POST /api/admin/suppression/v1",
        "DELETE /api/admin/suppression/v1",
        "DELETE /api/admin/suppression/v1",
        "DELETE /api/admin/suppression/v1",
    ]
    assert [a["response"]["code"] for a in posts] == [200, 200, 200, 404, 200]


async def test_tenant_override_and_tenant_entries(tmp_path, auth_dir, rx):
    """queues.toml ``[tenant.'transactional'] suppression = false`` lets that tenant's mail
    through; an entry scoped to tenant acme refuses only acme's mail. With the override
    handler, SMTP refuses after DATA (the tenant header is read there)."""
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "queues.toml").write_text(QUEUES_TOML)
    async with node_for(tmp_path, rx, auth_dir, policy=TENANT_POLICY) as node:
        now = time.time()
        await node.suppressions.add(
            [
                Suppression(recipient="all@dest.test", reason=Reason.ADMIN, created=now),
                Suppression(
                    recipient="acme@dest.test", tenant="acme", reason=Reason.ADMIN, created=now
                ),
            ]
        )
        default = await inject(node, "all@dest.test")
        transactional = await inject(node, "all@dest.test", {"X-Tenant": "transactional"})
        acme = await inject(node, "acme@dest.test", {"X-Tenant": "acme"})
        other_tenant = await inject(node, "acme@dest.test")
        rcpt = await smtp_rcpt(node, "all@dest.test")  # deferred: the tenant is not known
        smtp_default = await smtp_send(node, "all@dest.test")
        smtp_transactional = await smtp_send(node, "all@dest.test", "X-Tenant: transactional\r\n")
        # One DATA for acme to a suppressed and a clean recipient: the clean copy is taken,
        # the suppressed one left out (its Rejection logged), and the one reply is 250.
        before = {r["recipient"] for r in node.records.of("Reception")}
        mixed = await aiosmtplib.send(
            b"From: s@src.test\r\nX-Tenant: acme\r\nSubject: t\r\n\r\nbody\r\n",
            sender="sender@src.test",
            recipients=["acme@dest.test", "clean@dest.test"],
            hostname="127.0.0.1",
            port=node.smtp_port,
            timeout=10,
        )
        taken = [
            r["recipient"]
            for r in node.records.of("Reception")
            if r["recipient"] not in before or r["recipient"] == "clean@dest.test"
        ]
        left_out = [r for r in node.records.of("Rejection") if r["recipient"] == "acme@dest.test"]
    assert default["failed_recipients"] == ["all@dest.test"]
    assert transactional["success_count"] == 1
    assert acme["failed_recipients"] == ["acme@dest.test"] and "tenant acme" in acme["errors"][0]
    assert other_tenant["success_count"] == 1
    assert rcpt[0] == 250
    assert smtp_default[0] == 550 and "suppression list" in smtp_default[1]
    assert smtp_transactional[0] == 250
    assert mixed[1].startswith("OK ids=") and len(mixed[1].split()) == 2  # one id: the clean copy
    assert taken == ["clean@dest.test"] and len(left_out) >= 2


async def test_disabled_records_and_refuses_nothing(tmp_path, auth_dir):
    """suppression.enabled = false: a hard bounce adds no entry, nothing is refused."""
    async with (
        Receiver(rcpt=lambda addr, n: HARD) as rx,
        node_for(tmp_path, rx, auth_dir, **{"suppression.enabled": False}) as node,
    ):
        await smtp_send(node, "gone@dest.test")
        await node.records.wait(lambda r: r["type"] == "Bounce")
        entry = Suppression(recipient="gone@dest.test", reason=Reason.ADMIN, created=time.time())
        await node.suppressions.add([entry])
        assert (await smtp_rcpt(node, "gone@dest.test"))[0] == 250
    assert node.suppressions.recorded == 0
