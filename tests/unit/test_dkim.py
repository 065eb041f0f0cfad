"""DKIM: Signer records, signing verified by dkimpy, the signing service, dkim_data.toml."""

from __future__ import annotations

import asyncio
import base64
import re
import textwrap
import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from engine.config.settings import ConfigError
from engine.dkim.service import DkimService
from engine.dkim.signer import DEFAULT_HEADERS, DkimError, DkimKeyError, Signer, sign_message
from engine.policy.events import Rejected
from engine.policy.helpers.dkim_data import DkimData
from engine.policy.message import PolicyMessage
from tests.support.dkim_keys import (
    MESSAGE,
    ed_signer,
    make_keys,
    rsa_signer,
    ticking_while,
    verify,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Keys on disk with their DNS TXT records (tests/support/dkim_keys.py)."""
    return make_keys(tmp_path_factory.mktemp("keys"))


def tags(data: bytes, index: int = 0) -> dict[str, str]:
    """The tags of the index-th DKIM-Signature, whitespace removed."""
    headers, _ = dkim.rfc822_parse(data)
    sigs = [v for k, v in headers if k.lower() == b"dkim-signature"]
    parsed = dkim.util.parse_tag_value(re.sub(rb"\s+", b"", sigs[index]))
    return {k.decode(): v for k, v in parsed.items()}


# -- Signer -----------------------------------------------------------------------------


def test_rsa_signer_reads_the_key_file_and_hides_it_in_repr(keys):
    """The RSA constructor keeps the PEM bytes of the file and leaves them out of repr."""
    signer = rsa_signer(keys)
    assert signer.key == keys["rsa"].read_bytes()
    assert signer.algorithm == "rsa-sha256" and signer.headers == DEFAULT_HEADERS
    assert "PRIVATE" not in repr(signer)


def test_ed25519_signer_accepts_seed_and_pkcs8(keys, tmp_path):
    """An Ed25519 key may be dkimpy's base64 seed or KumoMTA's PKCS#8 PEM/DER; same seed."""
    pk = ed25519.Ed25519PrivateKey.from_private_bytes(keys["ed_seed"])
    pem = tmp_path / "ed.pem"
    pem.write_bytes(
        pk.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    der = tmp_path / "ed.der"
    der.write_bytes(
        pk.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    expected = base64.b64encode(keys["ed_seed"])
    for path in (keys["ed"], pem, der):
        assert Signer.ed25519_sha256("example.com", "ed", key_file=path).key == expected


def test_missing_key_file_names_the_file(tmp_path):
    """An unreadable key file is a DkimKeyError naming the file."""
    with pytest.raises(DkimKeyError, match=re.escape(str(tmp_path / "nope.key"))):
        Signer.rsa_sha256("example.com", "s1", key_file=tmp_path / "nope.key")


def test_key_of_the_wrong_kind_is_refused(keys):
    """An Ed25519 seed is not an RSA key, and an RSA PEM is not an Ed25519 key."""
    with pytest.raises(DkimKeyError, match="RSA"):
        Signer.rsa_sha256("example.com", "s1", key_file=keys["ed"])
    with pytest.raises(DkimKeyError, match="Ed25519"):
        Signer.ed25519_sha256("example.com", "s1", key_file=keys["rsa"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"headers": ("To", "Subject")}, "must include From"),
        ({"algorithm": "rsa-sha1"}, "algorithm"),
        ({"body_canonicalization": "strict"}, "body_canonicalization"),
        ({"expiration": 0}, "expiration"),
        ({"identity": "ann@example.org"}, "identity"),
        ({"selector": ""}, "selector"),
    ],
)
def test_signer_validation(keys, options, message):
    """Invalid signer options are refused when the record is made."""
    fields = {"domain": "example.com", "selector": "s1", "key": b"k", **options}
    with pytest.raises(ValueError, match=message):
        Signer(**fields)


# -- signing, verified by dkimpy ---------------------------------------------------------


@pytest.mark.parametrize(
    "canon",
    [("relaxed", "relaxed"), ("simple", "simple"), ("relaxed", "simple"), ("simple", "relaxed")],
)
@pytest.mark.parametrize("make", [rsa_signer, ed_signer], ids=["rsa", "ed25519"])
def test_signature_verifies_with_dkimpy(keys, make, canon):
    """RSA and Ed25519 signatures verify with dkimpy in every canonicalization."""
    signer = make(keys, header_canonicalization=canon[0], body_canonicalization=canon[1])
    signed = sign_message(MESSAGE, [signer], time.time())
    assert signed.endswith(MESSAGE) and signed.startswith(b"DKIM-Signature: ")
    assert verify(signed, keys)
    assert tags(signed)["c"] == f"{canon[0]}/{canon[1]}".encode()


@pytest.mark.parametrize("make", [rsa_signer, ed_signer], ids=["rsa", "ed25519"])
def test_tampered_message_fails(keys, make):
    """Changing one body byte after signing breaks the signature."""
    signed = sign_message(MESSAGE, [make(keys)], time.time())
    assert not verify(signed.replace(b"body text", b"body test"), keys)


def test_signed_headers_default_list(keys):
    """Without over_sign, h= lists each present default header once per occurrence."""
    signed = sign_message(MESSAGE, [rsa_signer(keys)], time.time())
    assert tags(signed)["h"] == b"from:to:subject:date:message-id"


def test_over_sign_adds_one_of_each_header(keys):
    """over_sign signs each configured header once more than it occurs, absent ones too."""
    signer = rsa_signer(keys, headers=("From", "Subject", "Reply-To"), over_sign=True)
    signed = sign_message(MESSAGE, [signer], time.time())
    assert tags(signed)["h"] == b"from:subject:from:subject:reply-to"
    assert verify(signed, keys)
    added = signed.replace(b"\r\n\r\nHello", b"\r\nReply-To: evil@attacker.test\r\n\r\nHello")
    assert not verify(added, keys)


def test_expiration_and_identity_tags(keys):
    """expiration sets x= that many seconds after t=; identity sets i=."""
    signer = ed_signer(keys, expiration=3600, identity="news@mail.example.com")
    signed = sign_message(MESSAGE, [signer], 1_800_000_000.5)
    t = tags(signed)
    assert (t["t"], t["x"], t["i"]) == (b"1800000000", b"1800003600", b"news@mail.example.com")


def test_two_signers_last_on_top_both_verify(keys):
    """Several signatures each cover the message; the last requested is the top one."""
    signed = sign_message(MESSAGE, [rsa_signer(keys), ed_signer(keys)], time.time())
    assert tags(signed, 0)["a"] == b"ed25519-sha256" and tags(signed, 1)["a"] == b"rsa-sha256"
    assert verify(signed, keys, 0) and verify(signed, keys, 1)


def test_unusable_key_is_a_dkim_error(keys):
    """A record made with a key that does not parse fails at signing with DkimKeyError."""
    bad = Signer(domain="example.com", selector="s1", key=b"not a key")
    with pytest.raises(DkimKeyError):
        sign_message(MESSAGE, [bad], time.time())


# -- the service ---------------------------------------------------------------------


async def test_service_signs_without_blocking_the_loop(keys):
    """100 signings in worker threads (workers=0) complete, verify, never stall the loop.

    The same with a worker process: tests/integration/test_dkim_service.py."""
    service = DkimService(workers=0)
    try:
        signers = [rsa_signer(keys), ed_signer(keys)]
        results, longest = await ticking_while(
            asyncio.gather(*(service.sign(MESSAGE, signers) for _ in range(100)))
        )
    finally:
        await service.close()
    assert all(verify(r, keys, 0) and verify(r, keys, 1) for r in results)
    # 100 in-loop RSA+Ed25519 signings would block for 100 x ~1 ms at least.
    assert longest < 0.05


async def test_service_without_signers_returns_data_unchanged():
    """No signers: the bytes come back as they were, nothing started."""
    service = DkimService()
    assert await service.sign(MESSAGE, []) == MESSAGE
    await service.close()


async def test_closed_service_refuses(keys):
    """After close, sign raises DkimError."""
    service = DkimService(workers=0)
    await service.close()
    with pytest.raises(DkimError, match="closed"):
        await service.sign(MESSAGE, [rsa_signer(keys)])


# -- PolicyMessage -------------------------------------------------------------------


def test_policy_message_records_dkim_requests(keys):
    """dkim_sign only records the signer; dkim_requests returns them in order."""
    msg = PolicyMessage("id1", "a@example.com", "b@example.net", MESSAGE)
    first, second = rsa_signer(keys), ed_signer(keys)
    msg.dkim_sign(first)
    msg.dkim_sign(second)
    assert msg.dkim_requests() == (first, second)
    assert msg.get_data() == MESSAGE
    with pytest.raises(TypeError):
        msg.dkim_sign({"domain": "example.com"})


# -- dkim_data.toml ----------------------------------------------------------------------


def write(tmp_path, text: str):
    path = tmp_path / "dkim_data.toml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def data_file(keys, tmp_path):
    """A dkim_data.toml with an exact domain, a wildcard and two additional signatures."""
    return write(
        tmp_path,
        f"""
        [base]
        selector = "rsa"
        headers = ["From", "To", "Subject"]
        additional_signatures = ["esp", "fallback"]

        [domain."example.com"]
        filename = "{keys["rsa"]}"

        [domain."*.example.org"]
        selector = "ed"
        algo = "ed25519"
        filename = "{keys["ed"]}"
        over_sign = true

        [signature."esp"]
        domain = "esp.test"
        filename = "{keys["rsa"]}"

        [signature."fallback"]
        domain = "esp.test"
        selector = "ed"
        algo = "ed25519"
        filename = "{keys["ed"]}"
        policy = "OnlyIfMissingDomainBlock"
        """,
    )


def from_msg(from_value: str | None) -> PolicyMessage:
    head = f"From: {from_value}\r\n" if from_value is not None else ""
    return PolicyMessage(
        "id1", "s@x.test", "r@y.test", f"{head}To: r@y.test\r\nSubject: hi\r\n\r\nbody\r\n".encode()
    )


@pytest.mark.parametrize(
    ("from_value", "expected"),
    [
        (
            "Ann <ann@example.com>",
            [("example.com", "rsa", "rsa-sha256"), ("esp.test", "rsa", "rsa-sha256")],
        ),
        (
            "ann@EXAMPLE.com",
            [("example.com", "rsa", "rsa-sha256"), ("esp.test", "rsa", "rsa-sha256")],
        ),
        (
            "x@news.example.org",
            [("news.example.org", "ed", "ed25519-sha256"), ("esp.test", "rsa", "rsa-sha256")],
        ),
        (
            "x@a.b.example.org",
            [("a.b.example.org", "ed", "ed25519-sha256"), ("esp.test", "rsa", "rsa-sha256")],
        ),
        (
            "x@example.org",
            [("esp.test", "rsa", "rsa-sha256"), ("esp.test", "ed", "ed25519-sha256")],
        ),
        ("x@other.test", [("esp.test", "rsa", "rsa-sha256"), ("esp.test", "ed", "ed25519-sha256")]),
    ],
)
def test_signers_for_selects_by_from_domain(data_file, from_value, expected):
    """Exact, then wildcard domain blocks by From domain (d= is that domain), then the
    additional signatures, the OnlyIfMissingDomainBlock one only when no domain matched."""
    signers = DkimData.load(data_file).signers_for(from_msg(from_value))
    assert [(s.domain, s.selector, s.algorithm) for s in signers] == expected


def test_block_options_reach_the_signer(data_file):
    """[base] options apply, a domain block's own options win."""
    data = DkimData.load(data_file)
    plain = data.signers_for(from_msg("a@example.com"))[0]
    wild = data.signers_for(from_msg("a@x.example.org"))[0]
    assert plain.headers == ("From", "To", "Subject") and not plain.over_sign
    assert wild.over_sign and wild.headers == ("From", "To", "Subject")


def test_missing_from_is_rejected_552(data_file):
    """A message without From is rejected with KumoMTA's 552 5.6.0."""
    with pytest.raises(Rejected) as info:
        DkimData.load(data_file).signers_for(from_msg(None))
    assert info.value.response.code == 552
    assert "5.6.0 DKIM signing requires a From header" in str(info.value)


def test_sign_records_on_the_message_and_verifies(data_file, keys):
    """sign(msg) records the signers; signing the result verifies for each of them."""
    msg = from_msg("ann@example.com")
    DkimData.load(data_file).sign(msg)
    assert [s.domain for s in msg.dkim_requests()] == ["example.com", "esp.test"]
    signed = sign_message(msg.get_data(), msg.dkim_requests(), time.time())
    assert verify(signed, keys, 0) and verify(signed, keys, 1)


def test_default_key_path_under_key_dir(keys, tmp_path):
    """Without filename the key is <key_dir>/<domain>/<selector>.key, read at load."""
    (tmp_path / "keys" / "example.com").mkdir(parents=True)
    (tmp_path / "keys" / "example.com" / "rsa.key").write_bytes(keys["rsa"].read_bytes())
    path = write(
        tmp_path,
        """
        [base]
        selector = "rsa"
        key_dir = "keys"
        [domain."example.com"]
        """,
    )
    [signer] = DkimData.load(path).signers_for(from_msg("a@example.com"))
    assert signer.key == keys["rsa"].read_bytes()


def test_wildcard_without_filename_reads_the_from_domain_key(keys, tmp_path):
    """A wildcard block without filename reads <key_dir>/<from domain>/<selector>.key."""
    (tmp_path / "k" / "news.example.org").mkdir(parents=True)
    (tmp_path / "k" / "news.example.org" / "ed.key").write_bytes(keys["ed"].read_bytes())
    path = write(
        tmp_path,
        """
        [domain."*.example.org"]
        selector = "ed"
        algo = "ed25519"
        """,
    )
    data = DkimData.load(path, key_dir=tmp_path / "k")
    [signer] = data.signers_for(from_msg("a@news.example.org"))
    assert (signer.domain, signer.algorithm) == ("news.example.org", "ed25519-sha256")
    with pytest.raises(DkimKeyError, match="other.example.org"):
        data.signers_for(from_msg("a@other.example.org"))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[base]\nselecter = "s1"', r"\[base\] selecter: unknown key"),
        (
            '[domain."example.com"]\nselector = "s1"\nfilename = "k.pem"\nalgoo = "sha256"',
            r"\[domain.'example.com'\] algoo: unknown key",
        ),
        ('[base]\nvault_mount = "secret"', r"\[base\] vault_mount: .*not supported"),
        (
            '[domain."example.com"]\nfilename = "k.pem"',
            r"\[domain.'example.com'\] selector: missing",
        ),
        (
            '[domain."example.com"]\nselector = "s"\nalgo = "rsa"\nfilename = "k.pem"',
            r"algo: must be sha256 or ed25519",
        ),
        ('[base]\nexpiration = "1h"', r"\[base\] expiration: expected int"),
        ('[base]\nadditional_signatures = ["esp"]', r"additional_signatures: 'esp' has no"),
        (
            '[signature.esp]\ndomain = "e.test"\nselector = "s"\nfilename = "k.pem"',
            r"\[signature.esp\]: not listed",
        ),
        ('[base]\nheaders = ["To"]', r"\[base\] headers: must include From"),
        (
            '[domain."example.com"]\nselector = "s"\npolicy = "Never"\nfilename = "k.pem"',
            r"policy: must be one of Always",
        ),
        ("[frobnicate]\nx = 1", r"unknown table \[frobnicate\]"),
    ],
)
def test_config_errors_name_file_table_and_key(tmp_path, body, message):
    """Typos and unsupported settings are ConfigErrors naming the file, table and key."""
    path = write(tmp_path, body)
    with pytest.raises(ConfigError, match=message) as info:
        DkimData.load(path)
    assert str(info.value).startswith(str(path))


def test_missing_key_file_is_a_config_error(tmp_path):
    """A key file that does not exist fails the load, naming the table and the file."""
    path = write(
        tmp_path,
        """
        [base]
        selector = "s1"
        [domain."example.com"]
        """,
    )
    with pytest.raises(ConfigError) as info:
        DkimData.load(path, key_dir=tmp_path / "keys")
    text = str(info.value)
    assert text.startswith(str(path)) and "[domain.'example.com'] filename" in text
    assert str(tmp_path / "keys" / "example.com" / "s1.key") in text


def test_bundled_example_loads_and_signs_nothing():
    """policy/dkim_data.toml (only [base] active) loads clean and selects no signer."""
    from engine.config.settings import BUNDLED_POLICY_DIR

    data = DkimData.load(BUNDLED_POLICY_DIR / "dkim_data.toml")
    assert data.signers_for(from_msg("a@example.com")) == []
