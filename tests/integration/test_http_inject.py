"""POST /api/inject/v1 end to end: templated messages built, spooled and delivered."""

from __future__ import annotations

import base64
import email
import email.policy

import aiohttp

from tests.support.node import running_node
from tests.support.receiver import Receiver

AUTH = {"Authorization": aiohttp.encode_basic_auth("alice", "s3cret")}
PDF = b"%PDF-1.4\n\x00\x01\x02 binary \xff\xfe\n%%EOF\n"


def node_for(tmp_path, rx: Receiver, auth_dir):
    return running_node(
        tmp_path,
        **{
            "http.auth_dir": str(auth_dir),
            "sink.enabled": True,
            "sink.endpoint": f"127.0.0.1:{rx.port}",
        },
    )


async def inject(node, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"http://127.0.0.1:{node.http_port}/api/inject/v1", json=body, headers=AUTH
        ) as resp:
            return resp.status, await resp.json()


def by_recipient(rx: Receiver) -> dict[str, email.message.EmailMessage]:
    return {
        m.recipients[0]: email.message_from_bytes(m.data, policy=email.policy.default)
        for m in rx.messages
    }


BUILDER_REQUEST = {
    "envelope_sender": "bounce@src.test",
    "content": {
        "subject": "Hi {{ name }}",
        "from": {"email": "news@src.test", "name": "News"},
        "text_body": "Hello {{ name }}, code {{ code }}",
        "html_body": "<p>Hello {{ name }}, code {{ code }}</p>",
        "attachments": [
            {
                "data": base64.b64encode(PDF).decode(),
                "base64": True,
                "content_type": "application/pdf",
                "file_name": "a.pdf",
            }
        ],
    },
    "substitutions": {"code": "X1"},
    "recipients": [
        {"email": "ann@dst.test", "name": "Ann"},
        {"email": "bob@dst.test", "name": "Bob", "substitutions": {"code": "Y2"}},
    ],
}


async def test_builder_injection_answers_with_counts(tmp_path, auth_dir):
    """A builder request for two recipients answers success_count 2 and no failures."""
    async with Receiver() as rx, node_for(tmp_path, rx, auth_dir) as node:
        status, body = await inject(node, BUILDER_REQUEST)
        await rx.wait_for(2)
    assert status == 200
    assert body == {"success_count": 2, "fail_count": 0, "failed_recipients": [], "errors": []}


async def test_builder_messages_are_personalised_per_recipient(tmp_path, auth_dir):
    """Each recipient gets its own To, subject and bodies, per-recipient substitutions
    overriding global ones."""
    async with Receiver() as rx, node_for(tmp_path, rx, auth_dir) as node:
        await inject(node, BUILDER_REQUEST)
        await rx.wait_for(2)
    messages = by_recipient(rx)
    assert set(messages) == {"ann@dst.test", "bob@dst.test"}
    for rcpt, name, code in (("ann@dst.test", "Ann", "X1"), ("bob@dst.test", "Bob", "Y2")):
        msg = messages[rcpt]
        [to] = msg["To"].addresses
        assert (to.display_name, to.addr_spec) == (name, rcpt)
        assert msg["Subject"] == f"Hi {name}"
        assert msg["From"].addresses[0].addr_spec == "news@src.test"
        assert msg.get_body(("plain",)).get_content().strip() == f"Hello {name}, code {code}"
        assert f"<p>Hello {name}, code {code}</p>" in msg.get_body(("html",)).get_content()
    assert {m.sender for m in rx.messages} == {"bounce@src.test"}


async def test_builder_attachment_arrives_intact(tmp_path, auth_dir):
    """The base64 attachment arrives with its file name, type and exact bytes."""
    async with Receiver() as rx, node_for(tmp_path, rx, auth_dir) as node:
        await inject(node, BUILDER_REQUEST)
        await rx.wait_for(2)
    for msg in by_recipient(rx).values():
        [part] = msg.iter_attachments()
        assert part.get_filename() == "a.pdf"
        assert part.get_content_type() == "application/pdf"
        assert part.get_content() == PDF


async def test_string_content_is_rendered_per_recipient(tmp_path, auth_dir):
    """A whole-message template is rendered with each recipient's substitutions."""
    request = {
        "envelope_sender": "s@src.test",
        "content": "From: s@src.test\r\nTo: {{ email }}\r\nSubject: For {{ who }}\r\n\r\n"
        "Dear {{ who }}\r\n",
        "recipients": [
            {"email": "ann@dst.test", "substitutions": {"who": "Ann"}},
            {"email": "bob@dst.test", "substitutions": {"who": "Bob"}},
        ],
    }
    async with Receiver() as rx, node_for(tmp_path, rx, auth_dir) as node:
        status, body = await inject(node, request)
        await rx.wait_for(2)
    assert status == 200 and body["success_count"] == 2
    assert sorted(m.recipients[0] for m in rx.messages) == ["ann@dst.test", "bob@dst.test"]
    for m in rx.messages:
        who = {"ann@dst.test": "Ann", "bob@dst.test": "Bob"}[m.recipients[0]]
        msg = email.message_from_bytes(m.data, policy=email.policy.default)
        assert msg["Subject"] == f"For {who}"
        assert msg["To"] == m.recipients[0]
        assert m.data.endswith(f"\r\n\r\nDear {who}\r\n".encode())


async def test_reception_records_name_http_and_the_user(tmp_path, auth_dir):
    """Injected messages are logged as Reception over HTTP with meta http_auth = the user."""
    async with Receiver() as rx, node_for(tmp_path, rx, auth_dir) as node:
        await inject(node, BUILDER_REQUEST)
        received = await node.records.wait(lambda r: r["type"] == "Reception", count=2)
        await node.records.wait(lambda r: r["type"] == "Delivery", count=2)
    assert {r["recipient"] for r in received} == {"ann@dst.test", "bob@dst.test"}
    for rec in received:
        assert rec["reception_protocol"] == "HTTP"
        assert rec["meta"]["http_auth"] == "alice"
        assert rec["sender"] == "bounce@src.test"
