"""The bundled policy end to end: TOML-driven queues, tenants, shaping; `nimbus validate`."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from engine.config.settings import BUNDLED_POLICY_DIR
from tests.support.node import running_node
from tests.support.receiver import Receiver


def bundled_policy(tmp_path: Path) -> Path:
    """A private copy of the shipped policy directory (tests may edit it)."""
    target = tmp_path / "bundled-policy"
    shutil.copytree(BUNDLED_POLICY_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


async def send(port: int, message: bytes, recipient: str = "user@dst.test") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(10):
            await reader.readline()
            last = b""
            for command in (
                b"EHLO c.test\r\n",
                b"MAIL FROM:<a@src.test>\r\n",
                f"RCPT TO:<{recipient}>\r\n".encode(),
                b"DATA\r\n",
                message + b".\r\n",
            ):
                writer.write(command)
                await writer.drain()
                while True:
                    last = await reader.readline()
                    if last[3:4] != b"-":
                        break
            return last.rstrip(b"\r\n")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_tenant_and_campaign_headers_choose_the_queue_and_are_removed(tmp_path):
    """X-Tenant/X-Campaign put the message in 'campaign:tenant@domain' and never reach the
    recipient."""
    policy = bundled_policy(tmp_path)
    async with Receiver() as rx:
        async with running_node(
            tmp_path,
            **{
                "policy.dir": str(policy),
                "sink.enabled": True,
                "sink.endpoint": f"127.0.0.1:{rx.port}",
            },
        ) as node:
            reply = await send(
                node.smtp_port,
                b"Subject: hi\r\nX-Tenant: default\r\nX-Campaign: spring-sale\r\n\r\nbody\r\n",
            )
            [rec] = await node.records.wait(lambda r: r["type"] == "Delivery")
            [msg] = await rx.wait_for(1)
    assert reply.startswith(b"250 OK ids=")
    assert rec["queue"] == "spring-sale:default@dst.test"
    assert b"X-Tenant" not in msg.data and b"X-Campaign" not in msg.data
    assert b"Subject: hi" in msg.data


async def test_messages_without_tenant_get_the_default_tenant(tmp_path):
    """Without X-Tenant the message belongs to queues.toml's default_tenant."""
    policy = bundled_policy(tmp_path)
    async with Receiver() as rx:
        async with running_node(
            tmp_path,
            **{
                "policy.dir": str(policy),
                "sink.enabled": True,
                "sink.endpoint": f"127.0.0.1:{rx.port}",
            },
        ) as node:
            await send(node.smtp_port, b"Subject: hi\r\n\r\nbody\r\n")
            [rec] = await node.records.wait(lambda r: r["type"] == "Delivery")
    assert rec["queue"] == "default@dst.test"


async def test_unknown_tenant_is_refused_with_the_helpers_reply(tmp_path):
    """A tenant with no [tenant] block in queues.toml is refused at DATA with 500."""
    policy = bundled_policy(tmp_path)
    async with running_node(tmp_path, **{"policy.dir": str(policy)}) as node:
        reply = await send(node.smtp_port, b"Subject: hi\r\nX-Tenant: stranger\r\n\r\nbody\r\n")
        [rec] = await node.records.wait(lambda r: r["type"] == "Rejection")
    assert reply.startswith(b"500 5.7.1 ")
    assert b"stranger" in reply
    assert rec["response"]["code"] == 500


async def test_queue_config_comes_from_queues_toml(tmp_path):
    """A deferral is retried on queues.toml's retry_interval (edited here to 0.2 s)."""
    policy = bundled_policy(tmp_path)
    text = (
        (policy / "queues.toml")
        .read_text()
        .replace('retry_interval = "20m"', 'retry_interval = "200ms"')
    )
    (policy / "queues.toml").write_text(text)
    async with Receiver(rcpt=lambda addr, n: "451 4.3.0 later" if n == 1 else None) as rx:
        async with running_node(
            tmp_path,
            **{
                "policy.dir": str(policy),
                "sink.enabled": True,
                "sink.endpoint": f"127.0.0.1:{rx.port}",
            },
        ) as node:
            await send(node.smtp_port, b"Subject: hi\r\n\r\nbody\r\n")
            [rec] = await node.records.wait(lambda r: r["type"] == "Delivery", timeout=10)
            [fail] = node.records.of("TransientFailure")
    assert rec["num_attempts"] == 2
    assert fail["bounce_classification"] != ""


async def run_validate(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine.cli",
        "validate",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    return proc.returncode, out.decode()


async def test_validate_accepts_the_bundled_policy(tmp_path):
    """`nimbus validate` exits 0 on the shipped policy."""
    code, out = await run_validate("--policy", str(bundled_policy(tmp_path)))
    assert code == 0, out
    assert "OK" in out


async def test_validate_names_file_table_and_key_of_a_typo(tmp_path):
    """A typo'd key in queues.toml fails validation with the file, table and key named."""
    policy = bundled_policy(tmp_path)
    path = policy / "queues.toml"
    path.write_text(
        path.read_text().replace('max_retry_interval = "8h"', 'max_retry_intervall = "8h"')
    )
    code, out = await run_validate("--policy", str(policy))
    assert code == 1
    assert str(path) in out
    assert "[queue.default]" in out
    assert "max_retry_intervall" in out


async def test_validate_names_a_typo_in_shaping_toml(tmp_path):
    """A typo'd option in shaping.toml fails validation naming file, block and key."""
    policy = bundled_policy(tmp_path)
    path = policy / "shaping.toml"
    path.write_text(
        path.read_text().replace("max_deliveries_per_connection", "max_deliveries_per_conection", 1)
    )
    code, out = await run_validate("--policy", str(policy))
    assert code == 1
    assert str(path) in out and "max_deliveries_per_conection" in out
