"""DANE (RFC 7672): TLSA usability and matching a certificate chain, with trustme certificates."""

from __future__ import annotations

import datetime
import hashlib
import ssl

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from engine.delivery.dane import (
    DaneVerdict,
    Tlsa,
    TlsaAnswer,
    dane_applies,
    dane_verdict,
    tlsa_matches,
    tlsa_name,
    usable,
)

NOW = datetime.datetime.now(datetime.UTC)
CA = trustme.CA()
INTERMEDIATE = CA.create_child_ca()
LEAF = INTERMEDIATE.issue_cert("mx.example.com")
OTHER = trustme.CA().issue_cert("mx.example.com")


def der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


# As sent by the server: leaf, intermediate, and (for DANE-TA, §3.1.2) the anchor too.
CHAIN = [der(blob.bytes()) for blob in LEAF.cert_chain_pems] + [der(CA.cert_pem.bytes())]
LEAF_DER, INTERMEDIATE_DER, ROOT_DER = CHAIN


def spki(cert_der: bytes) -> bytes:
    cert = x509.load_der_x509_certificate(cert_der)
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def record(usage: int, selector: int, matching: int, cert_der: bytes) -> Tlsa:
    data = cert_der if selector == 0 else spki(cert_der)
    digest = {0: lambda d: d, 1: lambda d: hashlib.sha256(d).digest()}.get(
        matching, lambda d: hashlib.sha512(d).digest()
    )
    return Tlsa(usage=usage, selector=selector, matching=matching, data=digest(data))


def test_tlsa_name():
    """The owner name is _25._tcp.<host>, lowercased, no trailing dot (RFC 7672 §2.2.3)."""
    assert tlsa_name("MX.Example.com.") == "_25._tcp.mx.example.com"


@pytest.mark.parametrize(
    ("usage", "selector", "matching", "is_usable"),
    [
        (3, 1, 1, True),
        (3, 0, 0, True),
        (2, 0, 2, True),
        (0, 1, 1, False),  # PKIX-TA: unusable for SMTP (§3.1.3)
        (1, 1, 1, False),  # PKIX-EE
        (3, 2, 1, False),  # unknown selector
        (3, 1, 3, False),  # unknown matching type
    ],
)
def test_usable(usage, selector, matching, is_usable):
    """Only DANE-TA/DANE-EE with selectors 0/1 and matching types 0/1/2 are usable."""
    r = Tlsa(usage=usage, selector=selector, matching=matching, data=b"x")
    assert (usable([r]) == (r,)) is is_usable


@pytest.mark.parametrize(
    ("answer", "applies"),
    [
        (TlsaAnswer(records=(record(3, 1, 1, LEAF_DER),), validated=True), True),
        (TlsaAnswer(records=(record(3, 1, 1, LEAF_DER),), validated=False), False),
        (TlsaAnswer(records=(), validated=True), False),
    ],
)
def test_dane_applies_only_to_a_validated_non_empty_rrset(answer, applies):
    """An unvalidated RRset is ignored; no records means no DANE."""
    assert dane_applies(answer) is applies


SECURE_RRSET = TlsaAnswer(records=(record(3, 1, 1, LEAF_DER),), validated=True)


@pytest.mark.parametrize(
    ("tlsa", "address_secure", "verdict"),
    [
        (SECURE_RRSET, True, DaneVerdict.APPLY),
        (SECURE_RRSET, False, DaneVerdict.NOT_APPLICABLE),  # a forged address proves nothing
        (None, True, DaneVerdict.SKIP_HOST),  # lookup failed: no downgrade to plain TLS
        (None, False, DaneVerdict.NOT_APPLICABLE),
        (TlsaAnswer(), True, DaneVerdict.NOT_APPLICABLE),  # none published
        (TlsaAnswer(records=SECURE_RRSET.records), True, DaneVerdict.NOT_APPLICABLE),  # no AD
    ],
)
def test_dane_verdict_follows_rfc7672_2_2(tlsa, address_secure, verdict):
    assert dane_verdict(tlsa=tlsa, address_secure=address_secure) is verdict


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("matching", [0, 1, 2])
def test_dane_ee_matches_the_leaf(selector, matching):
    """DANE-EE with every selector and matching type matches the server's own certificate."""
    assert tlsa_matches(CHAIN, [record(3, selector, matching, LEAF_DER)], host="x", now=NOW)


def test_dane_ee_ignores_names_and_issuer():
    """DANE-EE ignores the name (§3.1.1): a certificate for another host from an unknown CA
    matches when its key is the one published."""
    other = [der(OTHER.cert_chain_pems[0].bytes())]
    assert tlsa_matches(other, [record(3, 1, 1, other[0])], host="mx.other.test", now=NOW)


# trustme certificates are valid from 2000 to 3000.
LATE = datetime.datetime(3001, 1, 1, tzinfo=datetime.UTC)


def test_dane_ee_ignores_expiry():
    """DANE-EE ignores validity dates (§3.1.1): past the certificate's expiry it matches."""
    late = LATE
    assert tlsa_matches(CHAIN, [record(3, 1, 1, LEAF_DER)], host="mx.example.com", now=late)


def test_dane_ee_mismatch():
    """A record for another key does not match."""
    other = der(OTHER.cert_chain_pems[0].bytes())
    assert not tlsa_matches(CHAIN, [record(3, 1, 1, other)], host="mx.example.com", now=NOW)


@pytest.mark.parametrize("anchor", [ROOT_DER, INTERMEDIATE_DER])
@pytest.mark.parametrize(("selector", "matching"), [(0, 1), (1, 1), (0, 0), (1, 2)])
def test_dane_ta_matches_an_anchor_in_the_chain(anchor, selector, matching):
    """DANE-TA: the leaf chains to the anchor the record names, with the MX name."""
    records = [record(2, selector, matching, anchor)]
    assert tlsa_matches(CHAIN, records, host="mx.example.com", now=NOW)


def test_dane_ta_checks_the_name():
    """DANE-TA checks the MX host name (§3.2.2): another name does not match."""
    records = [record(2, 1, 1, ROOT_DER)]
    assert not tlsa_matches(CHAIN, records, host="mx.elsewhere.test", now=NOW)


def test_dane_ta_checks_expiry():
    """DANE-TA checks validity: after the leaf expired the chain does not match."""
    late = LATE
    assert not tlsa_matches(CHAIN, [record(2, 1, 1, ROOT_DER)], host="mx.example.com", now=late)


def test_dane_ta_needs_the_anchor_in_the_chain():
    """A server that does not send the anchor does not match (§3.1.2: it MUST send it)."""
    records = [record(2, 1, 1, ROOT_DER)]
    assert not tlsa_matches(CHAIN[:2], records, host="mx.example.com", now=NOW)


def test_dane_ta_from_another_ca_does_not_match():
    """An anchor the chain does not lead to does not match."""
    foreign = der(trustme.CA().cert_pem.bytes())
    assert not tlsa_matches(CHAIN, [record(2, 0, 1, foreign)], host="mx.example.com", now=NOW)


def test_a_leaf_record_as_dane_ta_does_not_match():
    """The leaf is not its own trust anchor: usage 2 names an issuer."""
    assert not tlsa_matches(CHAIN, [record(2, 0, 1, LEAF_DER)], host="mx.example.com", now=NOW)


def test_unusable_records_never_match():
    """A PKIX-EE record for the very leaf is unusable for SMTP, so nothing matches."""
    assert not tlsa_matches(CHAIN, [record(1, 1, 1, LEAF_DER)], host="mx.example.com", now=NOW)


def test_empty_or_garbage_chain_does_not_match():
    """No certificate, or bytes that are not one, never match."""
    records = [record(3, 1, 1, LEAF_DER)]
    assert not tlsa_matches([], records, host="x", now=NOW)
    assert not tlsa_matches([b"not a certificate"], records, host="x", now=NOW)
