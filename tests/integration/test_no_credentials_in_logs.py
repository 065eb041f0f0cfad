"""No credential ever reaches a log: a real ``nimbus mta`` process at debug level, driven
through successful and failed authentications and errors, then every byte it wrote to its
log directory and stderr is searched for each secret and its base64 forms."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
import ssl
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from tests.support.node import nimbus_process, write_policy
from tests.support.redis_server import RedisServer


def secret(label: str) -> str:
    # Letters and digits only, so JSON escaping cannot hide a match.
    return f"{label}Secret{secrets.token_hex(8)}"


HTTP_USER, HTTP_PW, HTTP_BAD_PW = "alice", secret("http"), secret("httpWrong")
SMTP_USER, SMTP_PW, SMTP_BAD_PW = "mailer", secret("smtp"), secret("smtpWrong")
ADMIN_USER, ADMIN_PW, ADMIN_BAD_PW = "ops", secret("admin"), secret("adminWrong")
RELAY_USER, RELAY_PW, RELAY_BAD_PW = "relay", secret("relay"), secret("relayWrong")
REDIS_PW = secret("redis")
TSA_USER, TSA_PW = "publisher", secret("tsa")  # userinfo of a TSA URL (behind a proxy)
SECRETS = (HTTP_PW, HTTP_BAD_PW, SMTP_PW, SMTP_BAD_PW, ADMIN_PW, ADMIN_BAD_PW)
SECRETS += (RELAY_PW, RELAY_BAD_PW, REDIS_PW, TSA_PW)
PAIRS = [(HTTP_USER, HTTP_PW), (HTTP_USER, HTTP_BAD_PW), (SMTP_USER, SMTP_PW)]
PAIRS += [(SMTP_USER, SMTP_BAD_PW), (ADMIN_USER, ADMIN_PW), (ADMIN_USER, ADMIN_BAD_PW)]
PAIRS += [(RELAY_USER, RELAY_PW), (RELAY_USER, RELAY_BAD_PW), (TSA_USER, TSA_PW)]


def forbidden() -> set[str]:
    """Each secret, its base64, and the base64 of every form it travels in (Basic
    ``user:password``, AUTH PLAIN ``\\0user\\0password`` and ``user\\0user\\0password``)."""
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    out = set(SECRETS) | {b64(s) for s in SECRETS}
    for user, pw in PAIRS:
        out |= {b64(f"{user}:{pw}"), b64(f"\0{user}\0{pw}"), b64(f"{user}\0{user}\0{pw}")}
    return out


class Smarthost:
    """aiosmtpd with STARTTLS and AUTH required; accepts RELAY_USER / RELAY_PW only."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.tls = tls
        self.logins: list[bool] = []
        self.port = 0
        self.arrived = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._sessions: list[SMTP] = []

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        ok = (auth_data.login.decode(), auth_data.password.decode()) == (RELAY_USER, RELAY_PW)
        self.logins.append(ok)
        return AuthResult(success=ok, handled=False)

    async def handle_DATA(self, server, session, envelope):
        self.arrived.set()
        return "250 2.0.0 queued"

    async def __aenter__(self) -> Smarthost:
        def factory() -> SMTP:
            proto = SMTP(
                self,
                hostname="rx.test",
                tls_context=self.tls,
                authenticator=self._authenticate,
                auth_require_tls=True,
                auth_required=True,
            )
            self._sessions.append(proto)
            return proto

        self._server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for proto in self._sessions:
            if proto.transport is not None:
                proto.transport.close()
        await self._server.wait_closed()


POLICY = """
def register(nimbus):
    @nimbus.on("get_egress_path_config")
    def path(routing_domain, source, site):
        # Cached per site: the refusing smarthost is its own site (its own port).
        password = {bad!r} if "{bad_port}" in site else {good!r}
        return nimbus.EgressPathConfig(
            smtp_auth_plain_username={user!r},
            smtp_auth_plain_password=nimbus.KeySource(key_data=password),
            allow_smtp_auth_plain_without_valid_certificate=True,
        )

    @nimbus.on("get_queue_config")
    def queue(domain, tenant, campaign, routing_domain):
        port = {bad_port} if domain == "bad.test" else {port}
        return nimbus.QueueConfig(mx_list=(f"127.0.0.1:{{port}}",))
"""


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def users_dir(path: Path, users: dict[str, str]) -> Path:
    path.mkdir()
    for user, password in users.items():
        (path / user).write_text(password + "\n")
    return path


@pytest.fixture
def tls_files(tmp_path):
    ca = trustme.CA()
    issued = ca.issue_cert("mta.test", "rx.test")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    issued.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    return chain, key


async def smtp_auth(port: int, user: str, password: str, mechanism: str) -> int:
    """One STARTTLS + AUTH session; sends a message when AUTH succeeds. The AUTH code."""
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, start_tls=False, validate_certs=False, timeout=10
    )
    await client.connect()
    try:
        await client.starttls()
        await client.ehlo()
        method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        try:
            reply = await method(user, password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            return exc.code
        await client.sendmail("s@src.test", ["u@good.test"], b"Subject: t\r\n\r\nhi\r\n")
        return reply.code
    finally:
        client.close()


async def http(port: int, method: str, path: str, auth: str | None, body: object) -> int:
    headers = {"Authorization": auth} if auth else {}
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers
        ) as resp:
            await resp.read()
            return resp.status


def inject_body(domain: str) -> dict[str, object]:
    return {
        "envelope_sender": "s@src.test",
        "content": "Subject: x\r\n\r\nbody\r\n",
        "recipients": [{"email": f"u@{domain}"}],
    }


async def test_no_secret_reaches_any_log(tmp_path, tls_files):
    """HTTP basic (inject and admin), SMTP AUTH PLAIN/LOGIN, smarthost AUTH PLAIN and a
    password-protected Redis, good and bad, at debug level: no secret in any output."""
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(*tls_files)
    auth = users_dir(tmp_path / "auth", {HTTP_USER: HTTP_PW, SMTP_USER: SMTP_PW})
    admin = users_dir(tmp_path / "admin", {ADMIN_USER: ADMIN_PW})
    async with (
        RedisServer() as redis,
        Smarthost(server_tls) as relay,
        Smarthost(server_tls) as refusing,
    ):
        assert (await redis.command("CONFIG", "SET", "requirepass", REDIS_PW)).startswith(b"+OK")
        policy = write_policy(
            tmp_path / "policy",
            POLICY.format(
                good=RELAY_PW,
                bad=RELAY_BAD_PW,
                user=RELAY_USER,
                port=relay.port,
                bad_port=refusing.port,
            ),
        )
        env = {
            "NIMBUS_LOG_LEVEL": "debug",
            "NIMBUS_POLICY_DIR": str(policy),
            "NIMBUS_HTTP_AUTH_DIR": str(auth),
            "NIMBUS_HTTP_ADMIN_AUTH_DIR": str(admin),
            "NIMBUS_HTTP_TRUSTED_HOSTS": "10.255.0.0/16",
            "NIMBUS_SMTP_TLS_CERTIFICATE": str(tls_files[0]),
            "NIMBUS_SMTP_TLS_PRIVATE_KEY": str(tls_files[1]),
            "NIMBUS_SMTP_RELAY_HOSTS": "10.255.0.0/16",
            "NIMBUS_REDIS_URL": f"redis://:{REDIS_PW}@127.0.0.1:{redis.port}/0",
            "NIMBUS_NODE_ID": "leak-test",
            # Nothing listens there: publishing fails and is logged (with the hook's URL).
            "NIMBUS_TSA_URLS": f"http://{TSA_USER}:{TSA_PW}@127.0.0.1:{closed_port()}",
        }
        async with nimbus_process(tmp_path, env) as node:
            port = node.http_port

            async def inject(auth: str, domain: str = "good.test") -> int:
                return await http(port, "POST", "/api/inject/v1", auth, inject_body(domain))

            async def suspend(auth: str) -> int:
                body = {"domain": "nowhere.test", "reason": "leak test"}
                return await http(port, "POST", "/api/admin/suspend/v1", auth, body)

            good = aiohttp.encode_basic_auth(HTTP_USER, HTTP_PW)
            assert await inject(good) == 200
            assert await inject(aiohttp.encode_basic_auth(HTTP_USER, HTTP_BAD_PW)) == 401
            malformed = "Basic " + base64.b64encode(HTTP_BAD_PW.encode()).decode()  # no colon
            assert await inject(malformed) == 400
            assert await inject(good, "bad.test") == 200  # the smarthost refuses its password
            assert await suspend(aiohttp.encode_basic_auth(ADMIN_USER, ADMIN_PW)) == 200
            assert await suspend(aiohttp.encode_basic_auth(ADMIN_USER, ADMIN_BAD_PW)) == 401
            for mechanism in ("PLAIN", "LOGIN"):
                assert await smtp_auth(node.smtp_port, SMTP_USER, SMTP_PW, mechanism) == 235
                assert await smtp_auth(node.smtp_port, SMTP_USER, SMTP_BAD_PW, mechanism) == 535
            delivered = await node.wait_records(lambda r: r["type"] == "Delivery", count=3)
            assert {r["recipient"] for r in delivered} == {"u@good.test"}
            await node.wait_records(
                lambda r: r["type"] == "TransientFailure" and r["recipient"] == "u@bad.test", 1
            )
            await node.wait_records(lambda r: r["type"] == "AdminAudit", count=2)
            async with asyncio.timeout(20):
                while not any(
                    line.get("event") == "log_hook_delivery_failed" for line in node.stderr_lines
                ):
                    await asyncio.sleep(0.05)  # tailing stderr: a poll interval
            await redis.stop()  # errors: the node loses its (password-protected) Redis
            assert await inject(good) == 200
            await node.wait_records(lambda r: r["type"] == "Delivery", count=4)
            node.terminate()
            assert await node.wait() == 0
    assert True in relay.logins and refusing.logins and not any(refusing.logins)
    stderr = "\n".join(json.dumps(line) for line in node.stderr_lines)
    assert '"auth_failures_limited"' not in stderr  # a handful of failures: no brake yet
    outputs = {"stderr": stderr}
    for path in sorted(node.log_dir.rglob("*")):
        if path.is_file():
            outputs[str(path)] = path.read_text(errors="replace")
    assert any('"AdminAudit"' in text for text in outputs.values())
    leaks = [(where, s) for where, text in outputs.items() for s in forbidden() if s in text]
    assert leaks == []
