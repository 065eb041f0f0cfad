"""MTA-STS and DANE end to end: a loopback DNS server (TXT, TLSA, AD bit), an HTTPS policy
host and STARTTLS receivers with trustme certificates."""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections import Counter
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.support.dns_server import FakeDns
from tests.support.node import running_node
from tests.support.receiver import Receiver

MX = "mx.shared.test"
DOMAINS = ("good.test", "broken.test", "dane.test")
CA = trustme.CA()
OTHER_CA = trustme.CA()  # not in the node's CA bundle

POLICY = """
def register(nimbus):
    @nimbus.on("get_egress_path_config")
    def path(routing_domain, source, site):
        return nimbus.EgressPathConfig(smtp_port={port}, prohibited_hosts=(), enable_dane={dane},
                                       enable_tls=nimbus.TlsMode.{tls},
                                       connect_timeout=2, idle_timeout=1)

    @nimbus.on("get_queue_config")
    def queue(domain, tenant, campaign, routing_domain):
        return nimbus.QueueConfig(retry_interval=60, max_age=3600)
"""


def sts_policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"


class PolicyHost:
    """``https://mta-sts.<domain>/.well-known/mta-sts.txt`` for every test domain, on one
    loopback port; ``policies[domain] = (status, body)``; ``fetches`` counts per domain."""

    def __init__(self) -> None:
        self.policies: dict[str, tuple[int, str]] = {}
        self.fetches: Counter[str] = Counter()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _serve(self, request: web.Request) -> web.Response:
        domain = request.host.partition(":")[0].removeprefix("mta-sts.")
        self.fetches[domain] += 1
        status, body = self.policies.get(domain, (404, "no policy"))
        return web.Response(status=status, text=body, content_type="text/plain")

    async def __aenter__(self) -> PolicyHost:
        app = web.Application()
        app.router.add_get("/.well-known/mta-sts.txt", self._serve)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        CA.issue_cert(*(f"mta-sts.{d}" for d in DOMAINS)).configure_cert(ctx)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


def spki_sha256(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def mx_tls(tmp_path: Path, ca: trustme.CA = CA, *, send_root: bool = False) -> ssl.SSLContext:
    """The MX's STARTTLS context: a certificate for mx.shared.test from ``ca``; with
    ``send_root`` the chain includes the CA certificate (DANE-TA needs it, §3.1.2)."""
    issued = ca.issue_cert(MX)
    chain, key = tmp_path / "mx-chain.pem", tmp_path / "mx-key.pem"
    pems = b"".join(p.bytes() for p in issued.cert_chain_pems)
    chain.write_bytes(pems + (ca.cert_pem.bytes() if send_root else b""))
    issued.private_key_pem.write_to_path(str(key))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(chain, key)
    ctx.mx_leaf_pem = issued.cert_chain_pems[0].bytes()  # type: ignore[attr-defined]
    return ctx


@pytest.fixture
async def dns():
    async with FakeDns(ttl=60) as server:
        for domain in DOMAINS:
            server.add(domain, "MX", f"10 {MX}.")
            server.add(f"mta-sts.{domain}", "A", "127.0.0.1")
        server.add(MX, "A", "127.0.0.1")
        yield server


@pytest.fixture
async def policy_host():
    async with PolicyHost() as host:
        yield host


@pytest.fixture
def ca_file(tmp_path) -> str:
    path = tmp_path / "ca.pem"
    CA.cert_pem.write_to_path(str(path))
    return str(path)


def publish(dns: FakeDns, host: PolicyHost, domain: str, policy: str, *, id: str = "1") -> None:
    dns.remove(f"_mta-sts.{domain}", "TXT")
    dns.add(f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={id};", ttl=0)
    host.policies[domain] = (200, policy)


def node_for(
    tmp_path, dns, host, ca_file, rx: Receiver, *, dane: bool = False, tls: str = "OPPORTUNISTIC"
):
    """A node whose paths use ``tls`` (a TlsMode name); REQUIRED verifies against
    ``ca_file``, so a delivery with a certificate from OTHER_CA proves DANE decided."""
    return running_node(
        tmp_path,
        policy=POLICY.format(port=rx.port, dane=dane, tls=tls),
        **{
            "dns.nameservers": [dns.nameserver],
            "dns.timeout": 0.5,
            "dns.lifetime": 1.0,
            "delivery.tls_ca_file": ca_file,
            "delivery.mta_sts_port": host.port,
        },
    )


async def send(node, *recipients: str) -> None:
    import aiosmtplib

    for recipient in recipients:
        await aiosmtplib.send(
            b"Subject: t\r\n\r\nhello\r\n",
            sender="s@src.test",
            recipients=[recipient],
            hostname="127.0.0.1",
            port=node.smtp_port,
            start_tls=False,
        )


def is_final(record) -> bool:
    return record["type"] in ("Delivery", "TransientFailure", "Bounce")


# -- MTA-STS -------------------------------------------------------------------------


async def test_enforce_delivers_over_verified_tls_to_a_matching_mx(
    tmp_path, dns, policy_host, ca_file
):
    """enforce with a matching mx pattern and a valid certificate: delivered over TLS,
    through the domain's own ready queue."""
    publish(dns, policy_host, "good.test", sts_policy("enforce", "*.shared.test"))
    async with Receiver(tls_context=mx_tls(tmp_path)) as rx:
        async with node_for(tmp_path, dns, policy_host, ca_file, rx) as node:
            await send(node, "u@good.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "Delivery", rec["response"]
    assert rx.messages[0].tls is True
    assert rec["site"] == f"unspecified->{MX}@smtp_client;mta-sts=good.test"
    assert policy_host.fetches["good.test"] == 1


async def test_enforce_mx_not_matching_defers_with_a_clear_text(
    tmp_path, dns, policy_host, ca_file
):
    """enforce whose mx patterns match no MX host: TransientFailure saying why, nothing
    sent."""
    publish(dns, policy_host, "broken.test", sts_policy("enforce", "*.elsewhere.test"))
    async with Receiver(tls_context=mx_tls(tmp_path)) as rx:
        async with node_for(tmp_path, dns, policy_host, ca_file, rx) as node:
            await send(node, "u@broken.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "TransientFailure"
    assert rec["response"]["code"] == 451
    assert rec["response"]["content"] == (
        f"MTA-STS policy of broken.test (enforce): {MX} matches no mx pattern (*.elsewhere.test)"
    )
    assert rx.connections == 0 and rx.messages == []


async def test_enforce_tls_not_validating_defers(tmp_path, dns, policy_host, ca_file):
    """enforce with an MX certificate from an untrusted CA: TransientFailure naming
    MTA-STS and the verification failure; no plaintext delivery."""
    publish(dns, policy_host, "good.test", sts_policy("enforce", MX))
    async with Receiver(tls_context=mx_tls(tmp_path, OTHER_CA)) as rx:
        async with node_for(tmp_path, dns, policy_host, ca_file, rx) as node:
            await send(node, "u@good.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "TransientFailure"
    content = rec["response"]["content"]
    assert content.startswith("MTA-STS policy of good.test (enforce): TLS handshake with")
    assert "CERTIFICATE_VERIFY_FAILED" in content
    assert rx.messages == [] and rx.mail_froms == 0


async def test_enforce_without_starttls_defers(tmp_path, dns, policy_host, ca_file):
    """enforce and an MX offering no STARTTLS: TransientFailure, never plaintext."""
    publish(dns, policy_host, "good.test", sts_policy("enforce", MX))
    async with Receiver() as rx:
        async with node_for(tmp_path, dns, policy_host, ca_file, rx) as node:
            await send(node, "u@good.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "TransientFailure"
    assert "MTA-STS policy of good.test (enforce): TLS required" in rec["response"]["content"]
    assert rx.mail_froms == 0


async def test_testing_mode_delivers_and_reports(tmp_path, dns, policy_host, ca_file, caplog):
    """testing: MX not matching and an untrusted certificate still deliver; one
    mta_sts_testing_failure diagnostic names the hosts."""
    caplog.set_level(logging.WARNING, logger="nimbus.routing")
    publish(dns, policy_host, "good.test", sts_policy("testing", "*.elsewhere.test"))
    async with Receiver(tls_context=mx_tls(tmp_path, OTHER_CA)) as rx:
        async with node_for(tmp_path, dns, policy_host, ca_file, rx) as node:
            await send(node, "u@good.test", "v@good.test")
            recs = await node.records.wait(lambda r: r["type"] == "Delivery", count=2)
    assert len(recs) == 2 and len(rx.messages) == 2
    [line] = [r for r in caplog.records if r.getMessage() == "mta_sts_testing_failure"]
    assert line.domain == "good.test" and line.hosts == [MX]


async def test_none_mode_applies_nothing(tmp_path, dns, policy_host, ca_file):
    """mode none: delivered as without a policy (opportunistic TLS, untrusted certificate)."""
    publish(dns, policy_host, "good.test", sts_policy("none"))
    async with Receiver(tls_context=mx_tls(tmp_path, OTHER_CA)) as rx:
        async with node_for(tmp_path, dns, policy_host, ca_file, rx) as node:
            await send(node, "u@good.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "Delivery"
    assert rec["site"] == f"unspecified->{MX}@smtp_client"


async def test_failed_policy_fetch_means_no_policy(tmp_path, dns, policy_host, ca_file):
    """A TXT record but the policy host answers 500: no policy (RFC 8461 §5), delivered."""
    publish(dns, policy_host, "broken.test", "")
    policy_host.policies["broken.test"] = (500, "oops")
    async with Receiver(tls_context=mx_tls(tmp_path, OTHER_CA)) as rx:
        async with node_for(tmp_path, dns, policy_host, ca_file, rx) as node:
            await send(node, "u@broken.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "Delivery"
    assert policy_host.fetches["broken.test"] == 1


async def test_policy_host_with_an_untrusted_certificate_is_no_policy(
    tmp_path, dns, policy_host, ca_file
):
    """The policy fetch validates the policy host's certificate: with a CA bundle that
    does not trust it, the enforce policy is never used and the mail is delivered."""
    other = tmp_path / "other-ca.pem"
    OTHER_CA.cert_pem.write_to_path(str(other))
    publish(dns, policy_host, "broken.test", sts_policy("enforce", "*.elsewhere.test"))
    async with Receiver(tls_context=mx_tls(tmp_path, OTHER_CA)) as rx:
        async with node_for(tmp_path, dns, policy_host, str(other), rx) as node:
            await send(node, "u@broken.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "Delivery"


async def test_txt_id_change_refetches_the_policy(tmp_path, dns, policy_host, ca_file):
    """Same id: the cached policy (one fetch for two messages); a new id: fetched again
    and the fixed policy delivers."""
    publish(dns, policy_host, "broken.test", sts_policy("enforce", "*.elsewhere.test"))
    async with Receiver(tls_context=mx_tls(tmp_path)) as rx:
        async with node_for(tmp_path, dns, policy_host, ca_file, rx) as node:
            await send(node, "a@broken.test")
            await node.records.wait(lambda r: r["type"] == "TransientFailure")
            policy_host.policies["broken.test"] = (200, sts_policy("enforce", MX))
            await send(node, "b@broken.test")
            await node.records.wait(lambda r: r["type"] == "TransientFailure", count=2)
            assert policy_host.fetches["broken.test"] == 1  # id unchanged: cached
            publish(dns, policy_host, "broken.test", sts_policy("enforce", MX), id="2")
            await send(node, "c@broken.test")
            [rec] = await node.records.wait(lambda r: r["type"] == "Delivery")
    assert rec["recipient"] == "c@broken.test"
    assert policy_host.fetches["broken.test"] == 2


async def test_broken_enforce_domain_does_not_block_another_on_the_same_mx(
    tmp_path, dns, policy_host, ca_file
):
    """Two recipient domains on one MX host, one with a broken enforce policy: the other
    domain's mail is delivered, only the broken one's is deferred (KumoMTA #484)."""
    publish(dns, policy_host, "broken.test", sts_policy("enforce", "*.elsewhere.test"))
    async with Receiver(tls_context=mx_tls(tmp_path, OTHER_CA)) as rx:
        async with node_for(tmp_path, dns, policy_host, ca_file, rx) as node:
            await send(node, "u@broken.test", "u@good.test", "v@good.test")
            await node.records.wait(is_final, count=3)
            records = node.records.of("Delivery") + node.records.of("TransientFailure")
    fates = sorted((r["recipient"], r["type"]) for r in records)
    assert fates == [
        ("u@broken.test", "TransientFailure"),
        ("u@good.test", "Delivery"),
        ("v@good.test", "Delivery"),
    ]
    assert sorted(m.recipients[0] for m in rx.messages) == ["u@good.test", "v@good.test"]


# -- DANE ---------------------------------------------------------------------------


def tlsa(dns: FakeDns, rx: Receiver, value: str, *, secure: bool = True) -> None:
    """Publish a TLSA record for the MX on the receiver's port (``_<port>._tcp``, RFC 6698
    §3; ``_25._tcp`` in production)."""
    name = f"_{rx.port}._tcp.{MX}"
    dns.add(name, "TLSA", value)
    if secure:
        dns.secure(name)
        dns.secure(MX)  # RFC 7672 §2.2: TLSA counts only for a host with secure addresses


async def test_dane_ee_match_delivers_without_pkix(tmp_path, dns, policy_host, ca_file):
    """A validated DANE-EE record matching the MX key: delivered over TLS although the path
    requires verified TLS and no configured CA trusts the certificate (DANE replaces PKIX)."""
    ctx = mx_tls(tmp_path, OTHER_CA)
    async with Receiver(tls_context=ctx) as rx:
        tlsa(dns, rx, f"3 1 1 {spki_sha256(ctx.mx_leaf_pem)}")
        async with node_for(
            tmp_path, dns, policy_host, ca_file, rx, dane=True, tls="REQUIRED"
        ) as node:
            await send(node, "u@dane.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "Delivery", rec["response"]
    assert rx.messages[0].tls is True


async def test_dane_ee_mismatch_defers(tmp_path, dns, policy_host, ca_file):
    """A validated DANE-EE record for another key: TransientFailure, nothing sent."""
    other = OTHER_CA.issue_cert("mx.shared.test").cert_chain_pems[0].bytes()
    async with Receiver(tls_context=mx_tls(tmp_path)) as rx:
        tlsa(dns, rx, f"3 1 1 {spki_sha256(other)}")
        async with node_for(tmp_path, dns, policy_host, ca_file, rx, dane=True) as node:
            await send(node, "u@dane.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "TransientFailure"
    assert rec["response"]["content"] == (
        f"DANE: the certificate of {MX} matches no TLSA record of _{rx.port}._tcp.{MX}"
    )
    assert rx.mail_froms == 0


async def test_dane_ta_match_delivers(tmp_path, dns, policy_host, ca_file):
    """A validated DANE-TA record for the CA the server sends: delivered."""
    ctx = mx_tls(tmp_path, OTHER_CA, send_root=True)
    async with Receiver(tls_context=ctx) as rx:
        tlsa(dns, rx, f"2 0 1 {hashlib.sha256(der(OTHER_CA.cert_pem.bytes())).hexdigest()}")
        async with node_for(
            tmp_path, dns, policy_host, ca_file, rx, dane=True, tls="REQUIRED"
        ) as node:
            await send(node, "u@dane.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "Delivery", rec["response"]


async def test_dane_ta_mismatch_defers(tmp_path, dns, policy_host, ca_file):
    """A validated DANE-TA record for a CA the chain does not lead to: deferred."""
    ctx = mx_tls(tmp_path, OTHER_CA, send_root=True)
    async with Receiver(tls_context=ctx) as rx:
        tlsa(dns, rx, f"2 0 1 {hashlib.sha256(der(CA.cert_pem.bytes())).hexdigest()}")
        async with node_for(tmp_path, dns, policy_host, ca_file, rx, dane=True) as node:
            await send(node, "u@dane.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "TransientFailure"
    assert "matches no TLSA record" in rec["response"]["content"]
    assert rx.mail_froms == 0


async def test_dane_without_starttls_never_sends_in_plaintext(tmp_path, dns, policy_host, ca_file):
    """A validated TLSA RRset and an MX that offers no STARTTLS: TransientFailure before
    MAIL FROM, though the path's TLS mode is Opportunistic (KumoMTA #543)."""
    async with Receiver() as rx:
        tlsa(dns, rx, "3 1 1 " + "00" * 32)
        async with node_for(tmp_path, dns, policy_host, ca_file, rx, dane=True) as node:
            await send(node, "u@dane.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "TransientFailure"
    assert rec["response"]["content"] == f"DANE: {MX} has TLSA records but offers no STARTTLS"
    assert rx.connections >= 1 and rx.mail_froms == 0 and rx.messages == []


async def test_unvalidated_tlsa_is_ignored(tmp_path, dns, policy_host, ca_file, caplog):
    """TLSA records without the AD bit are ignored (and logged): a mismatching record does
    not stop an opportunistic delivery."""
    caplog.set_level(logging.WARNING, logger="nimbus.tls_dns")
    async with Receiver(tls_context=mx_tls(tmp_path)) as rx:
        tlsa(dns, rx, "3 1 1 " + "00" * 32, secure=False)
        async with node_for(tmp_path, dns, policy_host, ca_file, rx, dane=True) as node:
            await send(node, "u@dane.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "Delivery"
    [line] = [r for r in caplog.records if r.getMessage() == "dane_tlsa_unvalidated"]
    assert line.tlsa_name == f"_{rx.port}._tcp.{MX}"


async def test_tlsa_of_a_host_with_insecure_addresses_is_ignored(
    tmp_path, dns, policy_host, ca_file, caplog
):
    """A validated but mismatching TLSA RRset for an MX whose A record is not validated:
    DANE does not apply (the address may be forged), delivered opportunistically, logged."""
    caplog.set_level(logging.WARNING, logger="nimbus.ready")
    async with Receiver(tls_context=mx_tls(tmp_path)) as rx:
        name = f"_{rx.port}._tcp.{MX}"
        dns.add(name, "TLSA", "3 1 1 " + "00" * 32)
        dns.secure(name)
        async with node_for(tmp_path, dns, policy_host, ca_file, rx, dane=True) as node:
            await send(node, "u@dane.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "Delivery", rec["response"]
    assert "dane_address_insecure" in caplog.messages


async def test_failed_tlsa_lookup_for_a_secure_host_defers(tmp_path, dns, policy_host, ca_file):
    """SERVFAIL for the TLSA query of an MX whose addresses are validated: the host is
    skipped and the message deferred (451 4.7.5), never sent without DANE (RFC 7672 §2.2;
    it was delivered as if no TLSA existed)."""
    async with Receiver(tls_context=mx_tls(tmp_path)) as rx:
        dns.secure(MX)
        dns.servfail(f"_{rx.port}._tcp.{MX}")
        async with node_for(tmp_path, dns, policy_host, ca_file, rx, dane=True) as node:
            await send(node, "u@dane.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "TransientFailure"
    assert rec["response"]["code"] == 451
    assert rec["response"]["content"].startswith("DANE: TLSA lookup of")
    assert rx.connections == 0 and rx.messages == []


async def test_failed_tlsa_lookup_for_an_insecure_host_is_no_dane(
    tmp_path, dns, policy_host, ca_file
):
    """SERVFAIL for the TLSA query of an MX whose addresses are not validated: DANE cannot
    apply to it anyway, so the message is delivered under the path's own TLS mode."""
    async with Receiver(tls_context=mx_tls(tmp_path)) as rx:
        dns.servfail(f"_{rx.port}._tcp.{MX}")
        async with node_for(tmp_path, dns, policy_host, ca_file, rx, dane=True) as node:
            await send(node, "u@dane.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "Delivery", rec["response"]


async def test_dane_takes_precedence_over_mta_sts(tmp_path, dns, policy_host, ca_file):
    """An enforce policy whose patterns miss the MX, but a validated matching TLSA RRset on
    that MX: DANE decides (RFC 8461 §2), delivered."""
    ctx = mx_tls(tmp_path, OTHER_CA)
    publish(dns, policy_host, "dane.test", sts_policy("enforce", "*.elsewhere.test"))
    async with Receiver(tls_context=ctx) as rx:
        tlsa(dns, rx, f"3 1 1 {spki_sha256(ctx.mx_leaf_pem)}")
        async with node_for(
            tmp_path, dns, policy_host, ca_file, rx, dane=True, tls="REQUIRED"
        ) as node:
            await send(node, "u@dane.test")
            [rec] = await node.records.wait(is_final)
    assert rec["type"] == "Delivery", rec["response"]
