"""Bad SMTP and HTTP input gets the right refusal, and the node keeps serving afterwards."""

from __future__ import annotations

import asyncio
import json
import re
import smtplib

import aiohttp

from tests.support.node import running_node
from tests.support.peers import tool
from tests.support.receiver import Receiver

AUTH = {"Authorization": aiohttp.encode_basic_auth("alice", "s3cret")}
IDS = re.compile(r"250 OK ids=((?:[0-9a-f]{32} ?)+)")
NORMAL = b"Subject: ok\r\n\r\nhello\r\n"


def node_for(tmp_path, rx: Receiver, **settings):
    return running_node(
        tmp_path, **{"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}", **settings}
    )


# -- SMTP helpers --------------------------------------------------------------------


class RawSmtp:
    """An SMTP client over raw asyncio streams, for input smtplib would not send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> RawSmtp:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        assert (await client.reply()).startswith("220")
        return client

    async def reply(self) -> str:
        """The next reply's last line (``250 ...``), with a timeout."""
        async with asyncio.timeout(10):
            while True:
                line = (await self.reader.readline()).decode()
                assert line, "connection closed"
                if line[3:4] != "-":
                    return line.rstrip("\r\n")

    async def send(self, raw: bytes) -> str:
        self.writer.write(raw)
        return await self.reply()

    async def command(self, line: str) -> str:
        return await self.send(line.encode() + b"\r\n")

    async def start(self, recipients: tuple[str, ...] = ("u@dst.test",)) -> None:
        """EHLO, MAIL FROM and RCPT TO each accepted, then DATA answered with 354."""
        assert (await self.command("EHLO client.test")).startswith("250")
        assert (await self.command("MAIL FROM:<s@src.test>")).startswith("250")
        for rcpt in recipients:
            assert (await self.command(f"RCPT TO:<{rcpt}>")).startswith("250")
        assert (await self.command("DATA")).startswith("354")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def smtp_send(
    port: int, recipients: list[str], data: bytes = NORMAL, source: str | None = None
) -> tuple[int, str]:
    """One transaction with smtplib (call in a thread); the DATA reply."""
    with smtplib.SMTP(
        "127.0.0.1", port, timeout=10, source_address=(source, 0) if source else None
    ) as client:
        client.ehlo("client.test")
        assert client.mail("s@src.test")[0] == 250
        for rcpt in recipients:
            assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(data)
        return code, text.decode()


async def still_serving_smtp(node, source: str | None = None) -> None:
    code, text = await asyncio.to_thread(smtp_send, node.smtp_port, ["ok@dst.test"], source=source)
    assert code == 250 and text.startswith("OK ids="), text


# -- SMTP ----------------------------------------------------------------------------


async def test_relay_from_untrusted_peer_is_denied(tmp_path, rx):
    """A client outside relay_hosts gets 550 5.7.1 at RCPT (seen by swaks), logged as a
    Rejection; a trusted peer still relays."""
    swaks = tool("swaks")
    async with node_for(
        tmp_path, rx, **{"smtp.relay_hosts": ["10.255.0.0/16", "127.0.0.2/32"]}
    ) as node:
        proc = await asyncio.create_subprocess_exec(
            swaks,
            "--server",
            "127.0.0.1",
            "--port",
            str(node.smtp_port),
            "--from",
            "s@src.test",
            "--to",
            "u@dst.test",
            "--ehlo",
            "client.test",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(20):
            out, _ = await proc.communicate()
        [rec] = await node.records.wait(lambda r: r["type"] == "Rejection")
        await still_serving_smtp(node, source="127.0.0.2")
    assert proc.returncode != 0
    assert "<** 550 5.7.1 Relaying denied" in out.decode()
    assert rec["response"]["code"] == 550
    assert rec["response"]["enhanced_code"] == {"class": 5, "subject": 7, "detail": 1}
    assert rec["recipient"] == "u@dst.test"
    assert rec["reception_protocol"] == "ESMTP"


async def test_overlong_line_is_refused(tmp_path, rx):
    """A 2000-character line in DATA gets 500 (RFC 5321 4.5.3.1.6) and nothing is queued."""
    async with node_for(tmp_path, rx) as node:
        client = await RawSmtp.open(node.smtp_port)
        await client.start()
        reply = await client.send(b"Subject: x\r\n\r\n" + b"a" * 2000 + b"\r\n.\r\n")
        await client.close()
        await still_serving_smtp(node)
        received = node.records.of("Reception")
    assert reply.startswith("500 ") and "Line too long" in reply
    assert [r["recipient"] for r in received] == ["ok@dst.test"]


async def test_bare_lf_in_data_is_refused(tmp_path, rx):
    """A message with bare LF line endings gets 550 5.6.0 (SMTP smuggling defence)."""
    async with node_for(tmp_path, rx) as node:
        client = await RawSmtp.open(node.smtp_port)
        await client.start()
        reply = await client.send(b"Subject: x\n\nbody\r\n.\r\n")
        await client.close()
        await still_serving_smtp(node)
        received = node.records.of("Reception")
    assert reply.startswith("550 5.6.0 ")
    assert [r["recipient"] for r in received] == ["ok@dst.test"]


async def test_bare_cr_in_data_is_refused(tmp_path, rx):
    """A message with a bare CR inside a line gets 550 5.6.0 (RFC 5321 2.3.8)."""
    async with node_for(tmp_path, rx) as node:
        client = await RawSmtp.open(node.smtp_port)
        await client.start()
        reply = await client.send(b"Subject: x\r\n\r\nbody\rmore\r\n.\r\n")
        await client.close()
        await still_serving_smtp(node)
        received = node.records.of("Reception")
    assert reply.startswith("550 5.6.0 ")
    assert [r["recipient"] for r in received] == ["ok@dst.test"]


async def test_too_many_recipients(tmp_path, rx):
    """Past smtp.max_recipients, RCPT gets 452 4.5.3 and the accepted ones still go through."""
    async with node_for(tmp_path, rx, **{"smtp.max_recipients": 3}) as node:
        client = await RawSmtp.open(node.smtp_port)
        assert (await client.command("EHLO client.test")).startswith("250")
        assert (await client.command("MAIL FROM:<s@src.test>")).startswith("250")
        replies = [await client.command(f"RCPT TO:<u{i}@dst.test>") for i in range(4)]
        assert (await client.command("DATA")).startswith("354")
        data_reply = await client.send(NORMAL + b".\r\n")
        await client.close()
        await still_serving_smtp(node)
    assert [r[:3] for r in replies] == ["250", "250", "250", "452"]
    assert replies[3].startswith("452 4.5.3 ")
    match = IDS.fullmatch(data_reply)
    assert match and len(match.group(1).split()) == 3


async def test_declared_size_over_limit_is_refused_at_mail(tmp_path, rx):
    """MAIL FROM with SIZE= over smtp.max_message_size gets 552."""
    async with node_for(tmp_path, rx, **{"smtp.max_message_size": 10000}) as node:
        client = await RawSmtp.open(node.smtp_port)
        assert (await client.command("EHLO client.test")).startswith("250")
        reply = await client.command("MAIL FROM:<s@src.test> SIZE=20000")
        await client.close()
        await still_serving_smtp(node)
    assert reply.startswith("552 ")


async def test_undeclared_size_over_limit_is_refused_after_data(tmp_path, rx):
    """A message over smtp.max_message_size without SIZE= gets 552 at end of DATA."""
    async with node_for(tmp_path, rx, **{"smtp.max_message_size": 10000}) as node:
        client = await RawSmtp.open(node.smtp_port)
        await client.start()
        body = (b"x" * 98 + b"\r\n") * 200  # 20,000 bytes in legal 100-byte lines
        reply = await client.send(b"Subject: big\r\n\r\n" + body + b".\r\n")
        await client.close()
        await still_serving_smtp(node)
        received = node.records.of("Reception")
    assert reply.startswith("552 ")
    assert [r["recipient"] for r in received] == ["ok@dst.test"]


async def test_data_reply_carries_one_id_per_recipient(tmp_path, rx):
    """The DATA reply is ``250 OK ids=`` and one 32-hex spool id per recipient."""
    async with node_for(tmp_path, rx) as node:
        one = await asyncio.to_thread(smtp_send, node.smtp_port, ["a@dst.test"])
        two = await asyncio.to_thread(smtp_send, node.smtp_port, ["b@dst.test", "c@dst.test"])
        received = await node.records.wait(lambda r: r["type"] == "Reception", count=3)
    assert one[0] == 250 and re.fullmatch(r"OK ids=[0-9a-f]{32}", one[1])
    assert two[0] == 250 and re.fullmatch(r"OK ids=[0-9a-f]{32} [0-9a-f]{32}", two[1])
    ids = one[1].split("=")[1].split() + two[1].split("=")[1].split()
    assert len(set(ids)) == 3
    assert sorted(ids) == sorted(r["id"] for r in received)


# -- HTTP ----------------------------------------------------------------------------

GOOD_REQUEST = {
    "envelope_sender": "s@src.test",
    "content": "Subject: ok\r\n\r\nhello\r\n",
    "recipients": [{"email": "ok@dst.test"}],
}


def url(node, path: str = "/api/inject/v1") -> str:
    return f"http://127.0.0.1:{node.http_port}{path}"


async def post(
    node, *, data: object = None, json_body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, dict, dict[str, str]]:
    """POST to the inject API (with alice's credentials unless ``headers`` is given)."""
    headers = AUTH if headers is None else headers
    async with aiohttp.ClientSession() as http:
        async with http.post(url(node), data=data, json=json_body, headers=headers) as resp:
            return resp.status, await resp.json(), dict(resp.headers)


async def still_serving_http(node) -> None:
    status, body, _ = await post(node, json_body=GOOD_REQUEST)
    assert status == 200 and body["success_count"] == 1, body


async def test_malformed_json_is_400(tmp_path, rx, auth_dir):
    """A body that is not JSON gets 400 with a JSON error."""
    async with node_for(tmp_path, rx, **{"http.auth_dir": str(auth_dir)}) as node:
        status, body, _ = await post(
            node, data=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
        )
        await still_serving_http(node)
    assert status == 400
    assert "malformed JSON" in body["error"]


async def test_field_error_is_400_naming_the_field(tmp_path, rx, auth_dir):
    """``recipients`` that is not a list gets 400 naming the field."""
    async with node_for(tmp_path, rx, **{"http.auth_dir": str(auth_dir)}) as node:
        status, body, _ = await post(node, json_body={**GOOD_REQUEST, "recipients": "ok@dst.test"})
        await still_serving_http(node)
    assert status == 400
    assert body["field"] == "recipients" and body["error"]


async def test_missing_credentials_is_401_with_challenge(tmp_path, rx, auth_dir):
    """A request without Authorization gets 401 and a Basic challenge."""
    async with node_for(tmp_path, rx, **{"http.auth_dir": str(auth_dir)}) as node:
        status, body, headers = await post(node, json_body=GOOD_REQUEST, headers={})
        await still_serving_http(node)
    assert status == 401 and body["error"]
    assert headers["WWW-Authenticate"].startswith("Basic")


async def test_wrong_password_is_401(tmp_path, rx, auth_dir):
    """A wrong password gets 401."""
    async with node_for(tmp_path, rx, **{"http.auth_dir": str(auth_dir)}) as node:
        status, body, headers = await post(
            node,
            json_body=GOOD_REQUEST,
            headers={"Authorization": aiohttp.encode_basic_auth("alice", "wrong")},
        )
        await still_serving_http(node)
    assert status == 401 and body["error"]
    assert headers["WWW-Authenticate"].startswith("Basic")
    assert [r["recipient"] for r in node.records.of("Reception")] == ["ok@dst.test"]


async def test_no_auth_dir_is_401(tmp_path, rx):
    """Without http.auth_dir nobody can inject: 401 even with credentials."""
    async with node_for(tmp_path, rx) as node:
        status, body, _ = await post(node, json_body=GOOD_REQUEST)
        await still_serving_smtp(node)
    assert status == 401 and body["error"]


async def test_template_syntax_error_is_422(tmp_path, rx, auth_dir):
    """A template that does not compile gets 422 naming the field."""
    async with node_for(tmp_path, rx, **{"http.auth_dir": str(auth_dir)}) as node:
        status, body, _ = await post(node, json_body={**GOOD_REQUEST, "content": "Hello {{ name "})
        await still_serving_http(node)
    assert status == 422
    assert body["field"] == "content" and body["error"]


def oversized_body(size: int) -> bytes:
    body = json.dumps({**GOOD_REQUEST, "content": "x" * size}).encode()
    assert len(body) > size
    return body


async def test_body_over_max_request_size_is_413(tmp_path, rx, auth_dir):
    """A body over http.max_request_size (with Content-Length) gets 413."""
    async with node_for(
        tmp_path, rx, **{"http.auth_dir": str(auth_dir), "http.max_request_size": 50000}
    ) as node:
        status, body, _ = await post(
            node, data=oversized_body(60000), headers={**AUTH, "Content-Type": "application/json"}
        )
        await still_serving_http(node)
    assert status == 413 and body["error"]


async def test_streamed_body_over_max_request_size_is_413(tmp_path, rx, auth_dir):
    """A chunked body (no Content-Length) over http.max_request_size gets 413 too."""
    raw = oversized_body(60000)

    async def chunks():
        for i in range(0, len(raw), 10000):
            yield raw[i : i + 10000]

    async with node_for(
        tmp_path, rx, **{"http.auth_dir": str(auth_dir), "http.max_request_size": 50000}
    ) as node:
        status, body, _ = await post(
            node, data=chunks(), headers={**AUTH, "Content-Type": "application/json"}
        )
        await still_serving_http(node)
    assert status == 413 and body["error"]


async def test_liveness(tmp_path, rx):
    """GET /api/check-liveness/v1 answers 200 OK on a ready node."""
    async with node_for(tmp_path, rx) as node:
        async with aiohttp.ClientSession() as http:
            async with http.get(url(node, "/api/check-liveness/v1")) as resp:
                status, text = resp.status, await resp.text()
    assert (status, text) == (200, "OK")
