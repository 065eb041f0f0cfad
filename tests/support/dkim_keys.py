"""DKIM test material: a message, keys on disk with their TXT records, dkimpy checks.

Exports:
    MESSAGE                   a message with folded headers and trailing blank lines
    make_keys(directory)      an RSA key (PKCS#1 PEM) and an Ed25519 seed on disk + TXT
    dnsfunc / verify          dkimpy's DNS answers from those keys; its verdict
    rsa_signer / ed_signer    Signers for those keys
    ticking_while(coro)       (result, longest loop stall) while ``coro`` runs
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import dkim
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.dkim.signer import Signer

MESSAGE = (
    b"Received: from client.test by mta.test\r\n"
    b"From: Ann <ann@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: a  long\r\n  subject\r\n"
    b"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <m1@example.com>\r\n"
    b"\r\n"
    b"Hello,  \r\n\r\nbody text\twith  spaces\r\n\r\n\r\n"
)


def make_keys(d: Path) -> dict[str, Any]:
    """An RSA key (PKCS#1 PEM, as ``openssl genrsa -traditional``) and an Ed25519 seed,
    written under ``d``, with their DNS TXT records."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "rsa.pem").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    rsa_pub = base64.b64encode(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    ed_key = nacl.signing.SigningKey.generate()
    (d / "ed.key").write_bytes(base64.b64encode(bytes(ed_key)) + b"\n")
    ed_pub = base64.b64encode(bytes(ed_key.verify_key))
    return {
        "dir": d,
        "rsa": d / "rsa.pem",
        "ed": d / "ed.key",
        "ed_seed": bytes(ed_key),
        "txt": {"rsa": b"v=DKIM1; k=rsa; p=" + rsa_pub, "ed": b"v=DKIM1; k=ed25519; p=" + ed_pub},
    }


def dnsfunc(keys, domains=("example.com", "esp.test", "mail.example.com")):
    """A dkimpy ``dnsfunc`` answering ``<selector>._domainkey.<domain>`` from ``keys``."""
    records = {
        f"{sel}._domainkey.{dom}.".encode(): txt
        for sel, txt in keys["txt"].items()
        for dom in domains
    }
    return lambda name, timeout=5: records.get(name)


def verify(data: bytes, keys, index: int = 0) -> bool:
    """dkimpy's verdict on the index-th signature (a body hash mismatch is False too)."""
    try:
        return dkim.DKIM(data).verify(index, dnsfunc=dnsfunc(keys))
    except dkim.ValidationError:
        return False


def rsa_signer(keys, **options) -> Signer:
    return Signer.rsa_sha256("example.com", "rsa", key_file=keys["rsa"], **options)


def ed_signer(keys, **options) -> Signer:
    return Signer.ed25519_sha256("example.com", "ed", key_file=keys["ed"], **options)


async def ticking_while(coro) -> tuple[object, float]:
    """Run ``coro`` while a task wakes every millisecond; returns (result, longest gap)."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        result = await coro
    finally:
        stop.set()
        await ticker
    return result, max(gaps)
