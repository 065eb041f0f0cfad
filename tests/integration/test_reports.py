"""Asynchronous bounces and feedback reports received over real SMTP for listener domains
with ``log_oob`` / ``log_arf``: OOB and Feedback records, then dropped or relayed."""

from __future__ import annotations

import asyncio
import smtplib

import pytest

from tests.support.node import running_node
from tests.support.receiver import Receiver
from tests.support.reports import arf, dsn, original, trace_value

POLICY = """
def register(nimbus):
    @nimbus.on("get_listener_domain")
    def listener_domain(domain, listener, conn_meta):
        if domain == "bounce.test":
            return nimbus.ListenerDomain(relay_to=True, log_oob="LogThenDrop",
                                         log_arf="LogThenDrop")
        if domain == "relay.test":
            return nimbus.ListenerDomain(relay_to=True, log_oob="LogThenRelay")
        if domain == "plain.test":
            return nimbus.ListenerDomain(relay_to=True)
        return None
"""


def CRLF(msg) -> bytes:  # noqa: N802 - reads as the wire format it returns
    return msg.as_string().replace("\n", "\r\n").encode()


TRACE = trace_value("user@dest.test", tenant="acme", campaign="spring")


def send(port: int, data: bytes, *rcpts: str, sender: str = "") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("mx.dest.test")
        client.mail(sender)
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            assert code == 250, (rcpt, code, text)
        return client.data(data)


def node_for(tmp_path, rx: Receiver, **extra):
    """127.0.0.1 is not a relay host here: only listener domains are accepted."""
    return running_node(
        tmp_path,
        policy=POLICY,
        **{
            "smtp.relay_hosts": ["10.255.0.0/16"],
            "sink.enabled": True,
            "sink.endpoint": f"127.0.0.1:{rx.port}",
            **extra,
        },
    )


async def test_hard_bounce_dsn_is_an_oob_record_and_dropped(tmp_path):
    async with Receiver() as rx, node_for(tmp_path, rx) as node:
        data = dsn(attach=original(trace=TRACE))
        code, text = await asyncio.to_thread(send, node.smtp_port, data, "bounces@bounce.test")
        [rec] = await node.records.wait(lambda r: r["type"] == "OOB")
        assert node.records.of("Reception") == []  # logged, never queued
    assert code == 250 and text.startswith(b"OK ids=")
    assert rec["id"] == text.split(b"=")[1].decode()
    assert rec["recipient"] == "user@dest.test"  # the original's, from X-KumoRef
    assert rec["sender"] == ""  # the null reverse path
    assert (rec["response"]["code"], rec["response"]["enhanced_code"]) == (
        550,
        {"class": 5, "subject": 1, "detail": 1},
    )
    assert rec["meta"] == {
        "tenant": "acme",
        "campaign": "spring",
        "original_message_id": "<orig-1@sender.test>",
    }
    assert rec["peer_address"]["name"] == "mx.dest.test"
    assert rec["reception_protocol"] == "ESMTP" and rec["size"] == len(data)
    assert rx.messages == []


async def test_deferral_dsn_keeps_its_4xx(tmp_path):
    async with Receiver() as rx, node_for(tmp_path, rx) as node:
        data = dsn(
            status="4.2.2",
            action="delayed",
            diagnostic="smtp; 452 4.2.2 Mailbox full",
            attach=original(trace=TRACE),
            headers_only=True,
        )
        await asyncio.to_thread(send, node.smtp_port, data, "bounces@bounce.test")
        [rec] = await node.records.wait(lambda r: r["type"] == "OOB")
    assert rec["response"]["code"] == 452 and "Mailbox full" in rec["response"]["content"]


@pytest.mark.parametrize("headers_only", [False, True], ids=["original", "headers-only"])
async def test_arf_abuse_report_is_a_feedback_record(tmp_path, headers_only):
    async with Receiver() as rx, node_for(tmp_path, rx) as node:
        data = arf(attach=original(trace=TRACE), headers_only=headers_only)
        await asyncio.to_thread(send, node.smtp_port, data, "fbl@bounce.test")
        [rec] = await node.records.wait(lambda r: r["type"] == "Feedback")
    report = rec["feedback_report"]
    assert report["feedback_type"] == "abuse" and report["source_ip"] == "192.0.2.1"
    assert report["supplemental_trace"]["tenant"] == "acme"
    assert rec["recipient"] == "user@dest.test" and rec["meta"]["campaign"] == "spring"
    assert rx.messages == []


async def test_log_then_relay_logs_and_delivers(tmp_path):
    async with Receiver() as rx, node_for(tmp_path, rx) as node:
        data = dsn(attach=original(trace=TRACE))
        await asyncio.to_thread(send, node.smtp_port, data, "bounces@relay.test")
        [rec] = await node.records.wait(lambda r: r["type"] == "OOB")
        await rx.wait_for(1)
    assert rec["recipient"] == "user@dest.test"
    assert rx.messages[0].recipients == ["bounces@relay.test"]


async def test_a_report_is_logged_once_for_several_recipients(tmp_path):
    """One DSN to a dropping and a relaying recipient: one OOB record; the relaying copy
    is delivered, and the reply names both the queued copy and the report."""
    async with Receiver() as rx, node_for(tmp_path, rx) as node:
        data = dsn(attach=original(trace=TRACE))
        code, text = await asyncio.to_thread(
            send, node.smtp_port, data, "a@bounce.test", "b@relay.test"
        )
        await rx.wait_for(1)
        oob = node.records.of("OOB")
    assert code == 250 and len(text.split(b"=")[1].split()) == 2
    assert len(oob) == 1
    assert [m.recipients for m in rx.messages] == [["b@relay.test"]]


async def test_ignore_and_ordinary_mail_are_not_reports(tmp_path):
    """A DSN to a domain that ignores reports, and ordinary mail to a dropping domain, are
    both ordinary mail: queued and delivered, no OOB record."""
    async with Receiver() as rx, node_for(tmp_path, rx) as node:
        first = await asyncio.to_thread(send, node.smtp_port, dsn(), "bounces@plain.test")
        second = await asyncio.to_thread(
            send, node.smtp_port, CRLF(original()), "someone@bounce.test", sender="a@b.test"
        )
        assert first[0] == second[0] == 250, (first, second)
        await rx.wait_for(2)
    assert node.records.of("OOB") == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (dsn(report_part=False), "no message/delivery-status part"),
        (dsn(status="9.9"), "invalid Status"),
        (arf(feedback_type=None), "no Feedback-Type field"),
    ],
    ids=["no-report-part", "bad-status", "no-feedback-type"],
)
async def test_broken_report_is_a_warning_and_still_dropped(tmp_path, caplog, data, reason):
    async with Receiver() as rx, node_for(tmp_path, rx) as node:
        code, _ = await asyncio.to_thread(send, node.smtp_port, data, "bounces@bounce.test")
    assert code == 250
    [line] = [r for r in caplog.records if r.getMessage() == "report_malformed"]
    assert reason in line.reason
    assert node.records.of("OOB") == node.records.of("Feedback") == []
    assert node.records.of("Reception") == [] and rx.messages == []


async def test_undecodable_trace_header_falls_back_to_the_final_recipient(tmp_path):
    async with Receiver() as rx, node_for(tmp_path, rx) as node:
        data = dsn(recipient="other@dest.test", attach=original(trace="garbage!!"))
        await asyncio.to_thread(send, node.smtp_port, data, "bounces@bounce.test")
        [rec] = await node.records.wait(lambda r: r["type"] == "OOB")
    assert rec["recipient"] == "other@dest.test"
    assert "X-KumoRef" in rec["meta"]["trace_error"]


async def test_report_from_a_trusted_relay_is_read_too(tmp_path):
    """A peer inside relay_hosts (127.0.0.1 by default) hands in a DSN for the bounce
    domain: it is still logged and dropped, not relayed."""
    async with (
        Receiver() as rx,
        node_for(tmp_path, rx, **{"smtp.relay_hosts": ["127.0.0.1/32"]}) as node,
    ):
        await asyncio.to_thread(send, node.smtp_port, dsn(), "bounces@bounce.test")
        await node.records.wait(lambda r: r["type"] == "OOB")
    assert rx.messages == []
