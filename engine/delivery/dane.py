"""DANE for SMTP (RFC 7672): an MX host's TLSA records and whether a certificate chain matches.

Exports:
    Tlsa                 one TLSA record: usage, selector, matching type, association data
    TlsaAnswer           the TLSA RRset of ``_25._tcp.<host>`` and whether DNSSEC validated it
    tlsa_name(host, port) -> str          the TLSA owner name (RFC 6698 §3)
    usable(records) -> tuple[Tlsa, ...]   the records SMTP may use (RFC 7672 §3.1)
    dane_applies(answer) -> bool          a validated, non-empty RRset: TLS is mandatory
    DaneVerdict, dane_verdict(tlsa=, address_secure=)   RFC 7672 §2.2: apply, not, skip host
    TlsaLookupFailed     the TLSA lookup did not complete (SERVFAIL, timeout)
    tlsa_matches(chain, records, *, host, now) -> bool   the chain satisfies a record
    peer_chain(ssl_object) -> list[bytes]   the certificates a TLS peer sent (DER)

All pure: the lookup is ``delivery.tls_dns``, the handshake ``delivery.client``.

RFC 7672 §3.1: SMTP uses only DANE-TA(2) and DANE-EE(3); PKIX-TA(0) and PKIX-EE(1)
are unusable (no common CA set for MTAs). DANE-EE(3) matches the server's own
certificate or public key and ignores names and expiry (§3.1.1). DANE-TA(2) names a
trust anchor that the server must include in its chain (§3.1.2); the leaf must chain
to it, be unexpired and carry the MX host name (§3.2.2). Unknown selectors and
matching types make a record unusable (RFC 6698 §4.1).
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.verification import (
    Criticality,
    DNSName,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

__all__ = [
    "Tlsa",
    "TlsaAnswer",
    "tlsa_name",
    "usable",
    "dane_applies",
    "DaneVerdict",
    "dane_verdict",
    "TlsaLookupFailed",
    "tlsa_matches",
    "peer_chain",
    "DANE_TA",
    "DANE_EE",
]

DANE_TA = 2
DANE_EE = 3
_SELECTORS = (0, 1)  # full certificate, SubjectPublicKeyInfo
_MATCHING = (0, 1, 2)  # exact, SHA2-256, SHA2-512
# DANE-TA anchors are often private CAs: the CA/Browser Forum's leaf profile (e.g. "SAN
# not critical") is not SMTP's, so the leaf needs only a subjectAltName to match names.
_LEAF_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Tlsa:
    """usage: 0-3 (RFC 6698 §2.1.1). selector: 0 full certificate, 1 SubjectPublicKeyInfo.
    matching: 0 exact, 1 SHA-256, 2 SHA-512. data: the certificate association data."""

    usage: int
    selector: int
    matching: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsaAnswer:
    """records: the TLSA RRset (empty: none published). validated: the resolver set the
    AD bit (RFC 4035 §3.2.3), so the RRset is DNSSEC-secure; otherwise it is ignored."""

    records: tuple[Tlsa, ...] = ()
    validated: bool = False


NO_TLSA = TlsaAnswer()


def tlsa_name(host: str, port: int = 25) -> str:
    """``_25._tcp.mx.example.com``: the TLSA owner name of ``host`` (RFC 7672 §2.2.3)."""
    return f"_{port}._tcp.{host.rstrip('.').lower()}"


def usable(records: Sequence[Tlsa]) -> tuple[Tlsa, ...]:
    """The records SMTP may use: DANE-TA/DANE-EE with a known selector and matching type."""
    return tuple(
        r
        for r in records
        if r.usage in (DANE_TA, DANE_EE) and r.selector in _SELECTORS and r.matching in _MATCHING
    )


def dane_applies(answer: TlsaAnswer) -> bool:
    """A validated, non-empty TLSA RRset: TLS is mandatory for the host (RFC 7672 §2.2),
    authenticated by the usable records (none usable: encrypted but unauthenticated, §3)."""
    return answer.validated and bool(answer.records)


class TlsaLookupFailed(Exception):
    """The TLSA lookup of a host did not complete (SERVFAIL, timeout, network error)."""


class DaneVerdict(enum.Enum):
    NOT_APPLICABLE = "not_applicable"  # no DANE for this host: the path's own TLS mode
    APPLY = "apply"  # TLS mandatory, authenticated by the TLSA RRset
    SKIP_HOST = "skip_host"  # the host may be DANE-protected but we cannot tell: skip it


def dane_verdict(*, tlsa: TlsaAnswer | None, address_secure: bool) -> DaneVerdict:
    """What RFC 7672 §2.2 makes of one MX host.

    tlsa: its TLSA answer, or None when the lookup failed.
    address_secure: its A/AAAA RRset is DNSSEC-validated.

    TLSA records count only for a host whose address records are secure (an insecure
    address may have been forged, so its TLSA records prove nothing). For such a host a
    failed TLSA lookup must not downgrade to plain opportunistic TLS: an attacker could
    provoke it, so the host is skipped (as unreachable) and the mail deferred if no other
    host remains. A failed lookup for an insecure host is simply no DANE.
    """
    if not address_secure:
        return DaneVerdict.NOT_APPLICABLE
    if tlsa is None:
        return DaneVerdict.SKIP_HOST
    return DaneVerdict.APPLY if dane_applies(tlsa) else DaneVerdict.NOT_APPLICABLE


def _selected(cert: x509.Certificate, der: bytes, selector: int) -> bytes:
    if selector == 0:
        return der
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _digest(data: bytes, matching: int) -> bytes:
    if matching == 1:
        return hashlib.sha256(data).digest()
    if matching == 2:
        return hashlib.sha512(data).digest()
    return data


def _matches(cert: x509.Certificate, der: bytes, record: Tlsa) -> bool:
    return _digest(_selected(cert, der, record.selector), record.matching) == record.data


def _chains_to(
    chain: Sequence[x509.Certificate], anchor: int, host: str, now: datetime.datetime
) -> bool:
    """The leaf chains to ``chain[anchor]`` (the trust anchor), unexpired, naming ``host``."""
    verifier = (
        PolicyBuilder()
        .store(Store([chain[anchor]]))
        .time(now)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_LEAF_POLICY)
        .build_server_verifier(DNSName(host.rstrip(".").lower()))
    )
    try:
        verifier.verify(chain[0], list(chain[1:anchor]))
    except (VerificationError, ValueError):
        return False
    return True


def tlsa_matches(
    chain: Sequence[bytes], records: Sequence[Tlsa], *, host: str, now: datetime.datetime
) -> bool:
    """Whether the server's chain satisfies one of the usable ``records``.

    chain: DER certificates as the server sent them, leaf first.
    host: the MX host name, checked for DANE-TA (DANE-EE ignores names, §3.1.1).
    now: the time a DANE-TA chain must be valid at (DANE-EE ignores expiry).
    """
    if not chain:
        return False
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError:
        return False
    good = usable(records)
    for record in good:
        if record.usage == DANE_EE and _matches(certs[0], chain[0], record):
            return True
    for record in good:
        if record.usage != DANE_TA:
            continue
        for i in range(1, len(certs)):  # the anchor is an issuer the server included
            if _matches(certs[i], chain[i], record) and _chains_to(certs, i, host, now):
                return True
    return False


def peer_chain(ssl_object: ssl.SSLObject | None) -> list[bytes]:
    """The certificates the server sent (DER, leaf first). Python < 3.13 has no public API
    for the chain, so the SSL object's own ``get_unverified_chain`` is used there."""
    if ssl_object is None:
        return []
    public = getattr(ssl_object, "get_unverified_chain", None)  # Python >= 3.13
    if public is not None:
        return [bytes(c) for c in public() or ()]
    internal = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if internal is not None:
        return [ssl.PEM_cert_to_DER_cert(c.public_bytes()) for c in internal() or ()]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []
