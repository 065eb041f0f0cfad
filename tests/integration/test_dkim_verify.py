"""DKIM end to end: a node signs per dkim_data.toml; OpenDKIM and Mail::DKIM verify
what the receiver got (RSA and Ed25519), and a tampered copy fails."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import textwrap

import aiohttp
import aiosmtplib
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.dns_server import FakeDns
from tests.support.node import running_node
from tests.support.peers import tool
from tests.support.receiver import Receiver

AUTH = {"Authorization": aiohttp.encode_basic_auth("alice", "s3cret")}
POLICY = """
    from engine.policy.helpers.dkim_data import DkimData

    def register(nimbus):
        dkim = DkimData.load(nimbus.policy_dir / "dkim_data.toml")

        @nimbus.on("smtp_server_message_received")
        def received(msg, conn_meta):
            dkim.sign(msg)

        @nimbus.on("http_message_generated")
        def generated(msg, auth_info):
            dkim.sign(msg)
    """
MESSAGE = (
    "From: News <news@example.com>\r\nTo: ann@dst.test\r\nSubject: signed  {via}\r\n"
    "Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{via}@example.com>\r\n"
    "\r\nHello over {via},  \r\n\r\n.with a leading dot\r\n"
)
MAIL_DKIM = r"""
use strict; use Net::DNS::Resolver; use Mail::DKIM::Verifier;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $ARGV[0], recurse => 0, udp_timeout => 5));
my $dkim = Mail::DKIM::Verifier->new();
binmode STDIN;
while (<STDIN>) { chomp; s/\015$//; $dkim->PRINT("$_\015\012"); }
$dkim->CLOSE;
printf "s=%s a=%s -> %s\n", $_->selector, $_->algorithm, $_->result_detail for $dkim->signatures;
"""


@pytest.fixture
def keys(tmp_path):
    """An RSA key from ``openssl genrsa -traditional`` and an Ed25519 seed from PyNaCl,
    with their ``selector._domainkey`` TXT records."""
    openssl = tool("openssl")
    rsa_path = tmp_path / "rsa.pem"
    subprocess.run(
        [openssl, "genrsa", "-traditional", "-out", str(rsa_path), "2048"],
        check=True,
        capture_output=True,
    )
    rsa_key = serialization.load_pem_private_key(rsa_path.read_bytes(), password=None)
    rsa_pub = base64.b64encode(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    ed = nacl.signing.SigningKey.generate()
    ed_path = tmp_path / "ed.key"
    ed_path.write_bytes(base64.b64encode(bytes(ed)))
    ed_pub = base64.b64encode(bytes(ed.verify_key)).decode()
    return {
        "rsa": rsa_path,
        "ed": ed_path,
        "txt": {
            "rsa._domainkey.example.com": f"v=DKIM1; k=rsa; p={rsa_pub}",
            "ed._domainkey.example.com": f"v=DKIM1; k=ed25519; p={ed_pub}",
        },
    }


def signing_policy(tmp_path, keys) -> str:
    """Write dkim_data.toml (RSA for example.com, plus an Ed25519 signature) next to
    the policy; returns the init.py source."""
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir(exist_ok=True)
    (policy_dir / "dkim_data.toml").write_text(
        textwrap.dedent(f"""
        [base]
        headers = ["From", "To", "Subject", "Date", "Message-ID"]
        additional_signatures = ["ed"]

        [domain."example.com"]
        selector = "rsa"
        filename = "{keys["rsa"]}"
        over_sign = true

        [signature."ed"]
        domain = "example.com"
        selector = "ed"
        algo = "ed25519"
        filename = "{keys["ed"]}"
        """)
    )
    return POLICY


async def run(*argv: str, stdin: bytes = b"") -> str:
    """Run a verifier without blocking the loop (FakeDns answers from it); stdout+stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate(stdin)
    return out.decode(errors="replace")


async def opendkim(tmp_path, keys, data: bytes, name: str) -> dict[str, str]:
    """OpenDKIM's verdict per signature algorithm, from its Authentication-Results
    (``opendkim -t`` exits 0 whatever the verdict)."""
    conf = tmp_path / "opendkim.conf"
    if not conf.exists():
        (tmp_path / "keys.txt").write_text(
            "".join(f"{n} {txt}\n" for n, txt in keys["txt"].items())
        )
        conf.write_text(
            f"Syslog no\nMode v\nTestPublicKeys {tmp_path / 'keys.txt'}\n"
            f"MinimumKeyBits 1024\nAlwaysAddARHeader yes\n"
        )
    path = tmp_path / name
    path.write_bytes(data)
    out = await run(tool("opendkim"), "-x", str(conf), "-vvv", "-t", str(path))
    assert "verification (" in out, out
    return dict((a, verdict) for verdict, a in re.findall(r"dkim=(\w+)[^;]*?header\.a=(\S+)", out))


async def mail_dkim(dns: FakeDns, data: bytes) -> dict[str, str]:
    """Mail::DKIM's result per algorithm; keys come from FakeDns on loopback."""
    perl = tool("perl")
    check = await run(perl, "-MMail::DKIM::Verifier", "-MNet::DNS", "-e", "print 'ok'")
    if check != "ok":
        pytest.skip("Mail::DKIM is not installed (apt-get install libmail-dkim-perl)")
    out = await run(perl, "-e", MAIL_DKIM, str(dns.port), stdin=data)
    return dict(re.findall(r"a=(\S+) -> (\w+)", out))


async def deliver_both_ways(tmp_path, keys, auth_dir) -> list[bytes]:
    """One message over SMTP and one over HTTP through a signing node; what arrived."""
    async with (
        Receiver() as rx,
        running_node(
            tmp_path,
            policy=signing_policy(tmp_path, keys),
            **{
                "sink.enabled": True,
                "sink.endpoint": f"127.0.0.1:{rx.port}",
                "http.auth_dir": str(auth_dir),
            },
        ) as node,
    ):
        await aiosmtplib.send(
            MESSAGE.format(via="smtp").encode(),
            sender="news@example.com",
            recipients=["ann@dst.test"],
            hostname="127.0.0.1",
            port=node.smtp_port,
            timeout=20,
        )
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"http://127.0.0.1:{node.http_port}/api/inject/v1",
                json={
                    "envelope_sender": "news@example.com",
                    "content": MESSAGE.format(via="http"),
                    "recipients": [{"email": "ann@dst.test"}],
                },
                headers=AUTH,
            ) as resp:
                assert resp.status == 200, await resp.text()
        await rx.wait_for(2)
    data = {m.data.split(b"Subject: signed  ")[1][:4]: m.data for m in rx.messages}
    return [data[b"smtp"], data[b"http"]]


async def test_opendkim_verifies_rsa_and_ed25519(tmp_path, keys, auth_dir):
    """Messages injected over SMTP and HTTP arrive with RSA and Ed25519 signatures that
    OpenDKIM verifies."""
    tool("opendkim")
    for i, data in enumerate(await deliver_both_ways(tmp_path, keys, auth_dir)):
        assert data.count(b"DKIM-Signature:") == 2
        verdicts = await opendkim(tmp_path, keys, data, f"m{i}.eml")
        assert verdicts == {"ed25519-sha256": "pass", "rsa-sha256": "pass"}


async def test_mail_dkim_verifies_rsa(tmp_path, keys, auth_dir):
    """Mail::DKIM, reading keys from DNS, passes the RSA signature (it has no Ed25519)."""
    tool("perl")
    messages = await deliver_both_ways(tmp_path, keys, auth_dir)
    async with FakeDns() as dns:
        for name, txt in keys["txt"].items():
            dns.add(name, "TXT", txt)
        for data in messages:
            assert (await mail_dkim(dns, data))["rsa-sha256"] == "pass"


async def test_tampered_message_fails_both_verifiers(tmp_path, keys, auth_dir):
    """Negative control: one changed body byte fails every signature in both verifiers."""
    tool("opendkim")
    tool("perl")
    data = (await deliver_both_ways(tmp_path, keys, auth_dir))[0]
    tampered = data.replace(b"Hello over", b"Hullo over")
    assert await opendkim(tmp_path, keys, tampered, "tampered.eml") == {
        "ed25519-sha256": "fail",
        "rsa-sha256": "fail",
    }
    async with FakeDns() as dns:
        for name, txt in keys["txt"].items():
            dns.add(name, "TXT", txt)
        assert (await mail_dkim(dns, tampered))["rsa-sha256"] == "fail"


async def test_missing_from_is_rejected_552(tmp_path, keys):
    """The dkim_data helper rejects a message without From: 552 5.6.0 at DATA."""
    async with running_node(tmp_path, policy=signing_policy(tmp_path, keys)) as node:
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await aiosmtplib.send(
                b"To: ann@dst.test\r\nSubject: x\r\n\r\nbody\r\n",
                sender="news@example.com",
                recipients=["ann@dst.test"],
                hostname="127.0.0.1",
                port=node.smtp_port,
                timeout=20,
            )
    assert info.value.code == 552 and "5.6.0" in info.value.message


async def test_signing_failure_is_a_temporary_error(tmp_path):
    """A key that cannot sign answers 451 4.3.0 and spools nothing."""
    policy = """
        from engine.dkim.signer import Signer

        def register(nimbus):
            @nimbus.on("smtp_server_message_received")
            def received(msg, conn_meta):
                msg.dkim_sign(Signer(domain="example.com", selector="s", key=b"garbage"))
        """
    async with running_node(tmp_path, policy=policy) as node:
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await aiosmtplib.send(
                MESSAGE.format(via="smtp").encode(),
                sender="news@example.com",
                recipients=["ann@dst.test"],
                hostname="127.0.0.1",
                port=node.smtp_port,
                timeout=20,
            )
        assert info.value.code == 451
        assert node.records.of("Reception") == []
