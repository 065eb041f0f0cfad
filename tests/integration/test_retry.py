"""Retry, bounce and expiry of deliveries against a scripted receiver (sink mode)."""

from __future__ import annotations

from tests.support.node import running_node
from tests.support.receiver import Receiver

POLICY = """
def register(nimbus):
    @nimbus.on("get_queue_config")
    def queue(domain, tenant, campaign, routing_domain):
        # retry_interval 0.2 s: the first retry comes after 0.2 s +/- 5 ms of jitter.
        return nimbus.QueueConfig(retry_interval=0.2, max_age={max_age})
"""

LATER = "451 4.3.0 later"


def node_for(tmp_path, rx: Receiver, max_age: float = 60):
    return running_node(
        tmp_path,
        policy=POLICY.format(max_age=max_age),
        **{"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"},
    )


async def send(node, recipient: str = "u@dst.test") -> None:
    import aiosmtplib

    await aiosmtplib.send(
        b"Subject: t\r\n\r\nhello\r\n",
        sender="s@src.test",
        recipients=[recipient],
        hostname="127.0.0.1",
        port=node.smtp_port,
        start_tls=False,
    )


async def test_rcpt_451_is_retried_then_delivered(tmp_path):
    """A 451 to the first RCPT logs a TransientFailure, and the retry is delivered."""
    async with Receiver(rcpt=lambda addr, n: LATER if n == 1 else None) as rx:
        async with node_for(tmp_path, rx) as node:
            await send(node)
            [delivered] = await node.records.wait(lambda r: r["type"] == "Delivery", timeout=10)
            [deferred] = node.records.of("TransientFailure")
    assert deferred["num_attempts"] == 1
    assert deferred["response"]["code"] == 451
    assert deferred["response"]["command"].startswith("RCPT TO")
    assert delivered["num_attempts"] == 2
    assert delivered["id"] == deferred["id"]
    assert rx.attempts["u@dst.test"] == 2 and len(rx.messages) == 1


async def test_rcpt_550_bounces_without_retry(tmp_path):
    """A 550 to RCPT is a Bounce carrying that reply, and the receiver sees one attempt only."""
    async with Receiver(rcpt=lambda addr, n: "550 5.1.1 no such user") as rx:
        async with node_for(tmp_path, rx) as node:
            await send(node)
            [bounce] = await node.records.wait(lambda r: r["type"] == "Bounce", timeout=10)
            await node.spool.flush()
            assert node.spool.count == 0
            assert node.scheduler.messages() == []
    assert bounce["response"]["code"] == 550
    assert bounce["response"]["enhanced_code"] == {"class": 5, "subject": 1, "detail": 1}
    assert bounce["num_attempts"] == 1
    assert node.records.of("TransientFailure") == []
    assert rx.attempts["u@dst.test"] == 1 and rx.messages == []


async def test_message_expires_after_max_age(tmp_path):
    """A receiver that always answers 451 makes the message expire (551 5.4.7) once max_age
    would be passed, and it leaves the scheduler and the spool."""
    async with Receiver(rcpt=lambda addr, n: LATER) as rx:
        async with node_for(tmp_path, rx, max_age=1) as node:
            await send(node)
            [expired] = await node.records.wait(lambda r: r["type"] == "Expiration", timeout=10)
            await node.spool.flush()
            assert node.spool.count == 0
            assert node.scheduler.messages() == []
    assert expired["response"]["code"] == 551
    assert expired["response"]["enhanced_code"] == {"class": 5, "subject": 4, "detail": 7}
    deferred = node.records.of("TransientFailure")
    assert deferred and {r["response"]["code"] for r in deferred} == {451}
    assert expired["num_attempts"] == len(deferred) == rx.attempts["u@dst.test"]
    assert node.records.of("Delivery") == [] and node.records.of("Bounce") == []


async def test_data_451_is_retried_then_delivered(tmp_path):
    """A 451 at end of DATA is a TransientFailure too, and the retry is delivered."""
    async with Receiver(data=lambda addr, n: LATER if n == 1 else None) as rx:
        async with node_for(tmp_path, rx) as node:
            await send(node)
            [delivered] = await node.records.wait(lambda r: r["type"] == "Delivery", timeout=10)
            [deferred] = node.records.of("TransientFailure")
    assert deferred["num_attempts"] == 1
    assert deferred["response"]["code"] == 451
    assert deferred["response"]["command"] == "DATA"
    assert delivered["num_attempts"] == 2
    assert len(rx.messages) == 1
