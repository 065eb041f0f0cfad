"""DKIM signatures (RFC 6376; Ed25519 per RFC 8463): signer records and pure signing.

Exports:
    Signer          one signature to add: domain, selector, algorithm, key and options
    DEFAULT_HEADERS the header fields signed unless a signer names its own (dkimpy's list)
    sign_message(data, signers, now) -> data with DKIM-Signature header(s) prepended
    signature_headers(data, signers, now) -> just those header fields
    checked_signature_headers(...)  the same, any failure turned into DkimError
    DkimError, DkimKeyError

Policy handlers only *record* signers (``msg.dkim_sign(signer)``); after the reception
event the acceptor awaits ``engine.dkim.service.DkimService.sign`` and spools the
signed bytes.

Canonicalization and header selection are dkimpy's (``dkim.canonicalization``,
``dkim.hash_headers``, ``dkim.fold``); the RSA signature is made by OpenSSL through
``cryptography`` (0.3 ms instead of dkimpy's pure-Python ~7-9 ms) and Ed25519 by
PyNaCl, as dkimpy does. Parsed keys are cached per process.

    Exception tree:
        Exception
         +-- DkimError          a message could not be signed (the acceptor answers 4xx)
              +-- DkimKeyError  a key is unreadable or not a key of the signer's algorithm
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dkim
import nacl.encoding
import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy

__all__ = [
    "Signer",
    "DEFAULT_HEADERS",
    "sign_message",
    "signature_headers",
    "checked_signature_headers",
    "DkimError",
    "DkimKeyError",
]


#: RFC 6376 5.4.1's recommended fields, as dkimpy signs them by default.
DEFAULT_HEADERS: tuple[str, ...] = tuple(h.decode() for h in dkim.DKIM.SHOULD)
ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
CANONICALIZATIONS = ("relaxed", "simple")
_SIG_NAME = b"DKIM-Signature"


class DkimError(Exception):
    """A message could not be signed; the text says why."""


class DkimKeyError(DkimError, ValueError):
    """A private key is unreadable or not a key for the signer's algorithm."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Signer:
    """One DKIM signature to add to a message.

    domain / selector: the d= and s= tags (the key is at ``selector._domainkey.domain``).
    algorithm: "rsa-sha256" or "ed25519-sha256".
    key: RSA: PEM bytes (PKCS#1 or PKCS#8); Ed25519: the base64 32-byte seed, as dkimpy.
    headers: names of header fields to sign (case-insensitive; From is required).
        Each one present is signed once per occurrence.
    over_sign: also sign each name one extra time, so that adding another such
        header (or one that was absent) breaks the signature (KumoMTA's over_sign).
    header_canonicalization / body_canonicalization: "relaxed" or "simple".
    expiration: seconds from signing until the signature expires (x=), or None.
    identity: the i= tag (AUID, ``[local]@domain-or-subdomain``), or None (``@domain``).
    """

    domain: str
    selector: str
    algorithm: str = "rsa-sha256"
    key: bytes = field(repr=False)
    headers: tuple[str, ...] = DEFAULT_HEADERS
    over_sign: bool = False
    header_canonicalization: str = "relaxed"
    body_canonicalization: str = "relaxed"
    expiration: int | None = None
    identity: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", tuple(self.headers))
        if not self.domain or not self.selector:
            raise ValueError("a DKIM signer needs a domain and a selector")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(
                f"algorithm must be one of {', '.join(ALGORITHMS)}, not {self.algorithm!r}"
            )
        for name in ("header_canonicalization", "body_canonicalization"):
            if getattr(self, name) not in CANONICALIZATIONS:
                raise ValueError(f"{name} must be relaxed or simple, not {getattr(self, name)!r}")
        if "from" not in {h.lower() for h in self.headers}:
            raise ValueError("headers must include From (RFC 6376 5.4)")
        if self.expiration is not None and (
            isinstance(self.expiration, bool)
            or not isinstance(self.expiration, int)
            or self.expiration <= 0
        ):
            raise ValueError(
                f"expiration must be a positive number of seconds, not {self.expiration!r}"
            )
        if self.identity is not None:
            host = self.identity.rpartition("@")[2].lower()
            d = self.domain.lower()
            if "@" not in self.identity or not (host == d or host.endswith("." + d)):
                raise ValueError(
                    f"identity {self.identity!r} must be an address at "
                    f"{self.domain} or a subdomain (RFC 6376 3.5, i=)"
                )

    @classmethod
    def rsa_sha256(
        cls,
        domain: str,
        selector: str,
        *,
        key_file: str | Path | None = None,
        key: bytes | None = None,
        **options: Any,
    ) -> Signer:
        """An RSA-SHA256 signer; the key is read from ``key_file`` (a mounted Secret) or given.

        Raises DkimKeyError naming the file when it is unreadable or not an RSA key.
        """
        raw, where = _key_bytes(key_file, key)
        pem = _rsa_pem(raw, where)
        return cls(domain=domain, selector=selector, algorithm="rsa-sha256", key=pem, **options)

    @classmethod
    def ed25519_sha256(
        cls,
        domain: str,
        selector: str,
        *,
        key_file: str | Path | None = None,
        key: bytes | None = None,
        **options: Any,
    ) -> Signer:
        """An Ed25519-SHA256 signer. The key is a base64 seed (dkimpy) or a PKCS#8 key in
        PEM or DER (KumoMTA). Raises DkimKeyError naming the file when unusable."""
        raw, where = _key_bytes(key_file, key)
        seed = _ed25519_seed(raw, where)
        return cls(
            domain=domain, selector=selector, algorithm="ed25519-sha256", key=seed, **options
        )


# -- keys ----------------------------------------------------------------------------


def _key_bytes(key_file: str | Path | None, key: bytes | None) -> tuple[bytes, str]:
    if (key_file is None) == (key is None):
        raise ValueError("give exactly one of key_file and key")
    if key is not None:
        return key, "key"
    assert key_file is not None  # exactly one of the two was given
    try:
        return Path(key_file).read_bytes(), str(key_file)
    except OSError as exc:
        raise DkimKeyError(f"{key_file}: cannot read DKIM key: {exc.strerror}") from None


def _rsa_pem(raw: bytes, where: str) -> bytes:
    """Validate an RSA private key; returns it as PEM (DER input is converted)."""
    try:
        if b"-----BEGIN" in raw:
            pk = serialization.load_pem_private_key(raw, password=None)
            pem = raw
        else:
            pk = serialization.load_der_private_key(raw, password=None)
            pem = pk.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
    except (ValueError, TypeError) as exc:
        raise DkimKeyError(
            f"{where}: not a usable RSA private key (PEM or DER, unencrypted): {exc}"
        ) from None
    if not isinstance(pk, rsa.RSAPrivateKey):
        raise DkimKeyError(f"{where}: not an RSA private key")
    if pk.key_size < 1024:
        raise DkimKeyError(
            f"{where}: RSA key of {pk.key_size} bits; verifiers require at least 1024 (RFC 8301)"
        )
    return pem


def _ed25519_seed(raw: bytes, where: str) -> bytes:
    """The base64 seed dkimpy uses, from a base64 seed or a PKCS#8 PEM/DER key."""
    text = raw.strip()
    try:
        if len(base64.b64decode(text, validate=True)) == 32:
            return text
    except ValueError:
        pass
    try:
        if b"-----BEGIN" in text:
            pk = serialization.load_pem_private_key(text, password=None)
        else:
            pk = serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        raise DkimKeyError(
            f"{where}: not an Ed25519 key (base64 seed, or PKCS#8 PEM/DER): {exc}"
        ) from None
    if not isinstance(pk, ed25519.Ed25519PrivateKey):
        raise DkimKeyError(f"{where}: not an Ed25519 private key")
    seed = pk.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(seed)


@functools.lru_cache(maxsize=1024)
def _private_key(algorithm: str, key: bytes) -> Any:
    """The parsed key, once per process (a worker parses each key on first use)."""
    try:
        if algorithm == "rsa-sha256":
            return serialization.load_pem_private_key(key, password=None)
        return nacl.signing.SigningKey(key, encoder=nacl.encoding.Base64Encoder)
    except (ValueError, TypeError, nacl.exceptions.CryptoError) as exc:
        raise DkimKeyError(f"cannot load the {algorithm} key for signing: {exc}") from None


# -- signing (pure: bytes and a clock value in, bytes out) ----------------------------


def sign_message(data: bytes, signers: Sequence[Signer], now: float) -> bytes:
    """``data`` with one DKIM-Signature per signer prepended (CRLF).

    now: the signing time (t=, and x= with ``expiration``), in Unix seconds.
    Each signature covers the message as given (not the other signatures). The last
    signer's header ends up on top, as successive KumoMTA ``dkim_sign`` calls.
    Raises DkimError when the header block cannot be parsed or a key cannot sign.
    """
    return signature_headers(data, signers, now) + data


def signature_headers(data: bytes, signers: Sequence[Signer], now: float) -> bytes:
    """Just the DKIM-Signature header fields ``sign_message`` prepends."""
    try:
        headers, body = dkim.rfc822_parse(data)
    except dkim.MessageFormatError as exc:
        raise DkimError(f"message cannot be signed: {exc}") from None
    body_hashes: dict[str, bytes] = {}
    out = []
    for signer in signers:
        canon = signer.body_canonicalization
        if canon not in body_hashes:
            policy = CanonicalizationPolicy.from_c_value(b"simple/" + canon.encode())
            digest = hashlib.sha256(policy.canonicalize_body(body)).digest()
            body_hashes[canon] = base64.b64encode(digest)
        out.append(_signature(headers, body_hashes[canon], signer, int(now)))
    return b"".join(reversed(out))


def checked_signature_headers(data: bytes, signers: Sequence[Signer], now: float) -> bytes:
    """``signature_headers``, with any failure turned into a DkimError for the caller."""
    try:
        return signature_headers(data, signers, now)
    except DkimError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bad message or key must not kill a worker
        raise DkimError(f"DKIM signing failed: {type(exc).__name__}: {exc}") from exc


def _signed_names(headers: list[list[bytes]], signer: Signer) -> list[bytes]:
    """The h= list: every occurrence of each wanted field; +1 each when over-signing."""
    wanted = [h.lower().encode() for h in dict.fromkeys(h.lower() for h in signer.headers)]
    present = [name.lower() for name, _ in headers if name.lower() in wanted]
    if signer.over_sign:
        return present + wanted
    if b"from" not in present:
        present.append(b"from")  # RFC 6376 5.4: From MUST be signed, even if absent
    return present


def _signature(headers: list[list[bytes]], body_hash: bytes, signer: Signer, now: int) -> bytes:
    policy = CanonicalizationPolicy.from_c_value(
        f"{signer.header_canonicalization}/{signer.body_canonicalization}".encode()
    )
    names = _signed_names(headers, signer)
    tags = [
        (b"v", b"1"),
        (b"a", signer.algorithm.encode()),
        (b"c", policy.to_c_value()),
        (b"d", signer.domain.encode()),
    ]
    if signer.identity:
        tags.append((b"i", signer.identity.encode()))
    tags += [(b"q", b"dns/txt"), (b"s", signer.selector.encode()), (b"t", b"%d" % now)]
    if signer.expiration:
        tags.append((b"x", b"%d" % (now + signer.expiration)))
    tags += [(b"h", b" : ".join(names)), (b"bh", body_hash)]
    # b= goes on its own line with an empty value; the signature is appended after it
    # (RFC 6376 3.7: the b= value is hashed as the empty string).
    value = (
        dkim.fold(b"; ".join(k + b"=" + v for k, v in tags) + b";", namelen=len(_SIG_NAME))
        + b"\r\n\tb="
    )
    hasher = hashlib.sha256()
    dkim.hash_headers(
        hasher, policy, policy.canonicalize_headers(headers), names, (_SIG_NAME, b" " + value), None
    )
    key = _private_key(signer.algorithm, signer.key)
    if signer.algorithm == "rsa-sha256":
        raw = key.sign(hasher.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    else:
        raw = key.sign(hasher.digest()).signature  # RFC 8463 3: Ed25519 over the SHA-256
    b64 = base64.b64encode(raw)
    folded = b"\r\n\t".join(b64[i : i + 72] for i in range(0, len(b64), 72))
    return _SIG_NAME + b": " + value + folded + b"\r\n"
