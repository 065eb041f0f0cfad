"""Malformed HTTP requests get a 4xx, never a 500, on inject and admin routes (issue 9, defect 4).

Each test is a request the 2,000-request fuzz run turned into a 500 or a logged traceback.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging

import aiohttp
import pytest

from tests.support.node import running_node

AUTH = {"Authorization": aiohttp.encode_basic_auth("alice", "s3cret")}
JSON = {**AUTH, "Content-Type": "application/json"}
GOOD = {
    "envelope_sender": "s@src.test",
    "content": "Subject: ok\r\n\r\nhello\r\n",
    "recipients": [{"email": "ok@dst.test"}],
}
INJECT, BOUNCE = "/api/inject/v1", "/api/admin/bounce/v1"


def node_for(tmp_path, auth_dir, rx):
    return running_node(
        tmp_path,
        **{
            "http.auth_dir": str(auth_dir),
            "sink.enabled": True,
            "sink.endpoint": f"127.0.0.1:{rx.port}",
        },
    )


async def post(node, path: str, data: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{node.http_port}{path}"
        async with http.post(url, data=data, headers=headers) as resp:
            return resp.status, await resp.json()


def with_value(value: str) -> bytes:
    """GOOD with ``substitutions.v`` replaced by the raw JSON text ``value``."""
    return json.dumps({**GOOD, "substitutions": {"v": "@"}}).replace('"@"', value).encode()


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    "path, data, headers, status, field",
    [
        (INJECT, DEEP, JSON, 400, None),  # RecursionError in json.loads
        (BOUNCE, DEEP, JSON, 400, None),
        (INJECT, with_value("[" * 40 + "]" * 40), JSON, 400, "substitutions.v" + "[0]" * 30),
        (INJECT, with_value("1" * 5000), JSON, 400, None),  # int digit limit (ValueError)
        (INJECT, with_value("NaN"), JSON, 400, None),
        # Lone surrogates: UnicodeEncodeError building the message, or a 422 blaming the
        # template that used the substitution.
        (
            INJECT,
            json.dumps({**GOOD, "content": "Subject: \udc00\r\n\r\nx"}).encode(),
            JSON,
            400,
            "content",
        ),
        (INJECT, with_value('"\\ud800"'), JSON, 400, "substitutions.v"),
        (
            BOUNCE,
            json.dumps({"domain": "x.test", "reason": "\ud800"}).encode(),
            JSON,
            400,
            "reason",
        ),
        # Content-Encoding that lies (zlib.error -> 500) or that aiohttp does not decode.
        (INJECT, b"not gzip", {**JSON, "Content-Encoding": "gzip"}, 400, None),
        (BOUNCE, b"not gzip", {**JSON, "Content-Encoding": "gzip"}, 400, None),
        (INJECT, json.dumps(GOOD).encode(), {**JSON, "Content-Encoding": "x-foo"}, 415, None),
        (INJECT, json.dumps(GOOD).encode(), {**JSON, "Content-Encoding": "gzip, gzip"}, 415, None),
    ],
)
async def test_malformed_request_is_4xx(tmp_path, auth_dir, rx, path, data, headers, status, field):
    async with node_for(tmp_path, auth_dir, rx) as node:
        got, body = await post(node, path, data, headers)
        # The node keeps serving, on a fresh connection.
        ok, answer = await post(node, INJECT, json.dumps(GOOD).encode(), JSON)
    assert (got, body.get("field")) == (status, field), body
    assert body["error"]
    assert ok == 200 and answer["success_count"] == 1, answer


async def test_gzip_body_is_decoded(tmp_path, auth_dir, rx):
    async with node_for(tmp_path, auth_dir, rx) as node:
        headers = {**JSON, "Content-Encoding": "gzip"}
        status, body = await post(node, INJECT, gzip.compress(json.dumps(GOOD).encode()), headers)
    assert status == 200 and body["success_count"] == 1, body


async def test_client_gone_mid_body_is_one_debug_line(tmp_path, auth_dir, rx, caplog):
    """A client that closes the connection inside its body: no error, no traceback."""
    caplog.set_level(logging.DEBUG)
    async with node_for(tmp_path, auth_dir, rx) as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
        writer.write(
            b"POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: {AUTH['Authorization']}\r\n".encode()
            + b'Content-Length: 1000\r\n\r\n{"envelope_sender":'
        )
        await writer.drain()
        # The handler is reading the body once the node logs the request context; wait
        # until the node saw the close (the debug line), with a deadline.
        writer.close()
        await writer.wait_closed()
        async with asyncio.timeout(10):
            while not [r for r in caplog.records if r.getMessage() == "http_client_disconnected"]:
                await asyncio.sleep(0.01)
        ok, _ = await post(node, INJECT, json.dumps(GOOD).encode(), JSON)
    assert ok == 200
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [r for r in caplog.records if r.exc_info and r.name.startswith("aiohttp")] == []
    [line] = [r for r in caplog.records if r.getMessage() == "http_client_disconnected"]
    assert line.levelno == logging.DEBUG and line.name == "nimbus.http"


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /api/check-liveness/v1 HTTP/9.9\r\nHost: x\r\n\r\n",  # unknown version
        b"POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /api/check-liveness/v1 HTTP/1.1\r\nHost x\r\n\r\n",  # header without a colon
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # request line too long
    ],
    ids=["version", "content-length", "header", "line-too-long"],
)
async def test_unparsable_request_is_400_and_one_debug_line(tmp_path, auth_dir, rx, caplog, raw):
    """aiohttp answers 400 and logged each such request at ERROR with a traceback (anyone
    can send one: a log flood); now one debug line, and the node serves on."""
    caplog.set_level(logging.DEBUG)
    async with node_for(tmp_path, auth_dir, rx) as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(10):
            status_line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        ok, _ = await post(node, INJECT, json.dumps(GOOD).encode(), JSON)
    assert status_line.split()[1] == b"400", status_line
    assert ok == 200
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    [line] = [r for r in caplog.records if r.getMessage() == "http_malformed_request"]
    assert line.levelno == logging.DEBUG and line.status == 400 and line.peer == "127.0.0.1"
