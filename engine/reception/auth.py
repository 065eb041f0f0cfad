"""Credentials for HTTP basic auth and SMTP AUTH, from a directory of files, and the
brake on guessing them.

Exports:
    Credentials     check(user, password) -> bool; parse_basic(header) -> (user, password)
    FailureLimiter  per-peer token bucket of failed attempts: HTTP basic auth (429) and
                    SMTP AUTH (454 4.7.0, auth_limited_reply) while empty
    Bucket, FailureBudget, retry_after, after_failure, peer_key   its pure decisions

The directory holds one file per user: the file name is the username and the
content the password (trailing newline ignored) - exactly what a mounted
Kubernetes Secret looks like, including its hidden ``..data`` entries, which are
skipped. The directory is re-read when its modification time changes (a Secret
update swaps the ``..data`` symlink), checked at most once a second. Passwords
are compared in constant time (``hmac.compare_digest``) against a SHA-256 of
each, so neither length nor content leaks through timing.

Brute force: every failed basic-auth attempt takes a token from its peer's bucket
(``http.auth_failure_burst`` tokens, one back per ``http.auth_failure_refill``);
while the bucket holds less than one token the peer gets 429 with ``Retry-After``
before its credentials are even checked (good ones too: otherwise guessing would go
on). Successful attempts take nothing. Peers are IPv4 addresses or IPv6 /64s (one
host usually owns a whole /64, RFC 4291 §2.5.4). The table is a TTL+LRU cache of
``http.auth_failure_peers`` entries: an entry expires when its bucket would be full
again, and the least recently failing peer is evicted first, so memory is bounded
whatever an attacker sends.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cachetools import TTLCache

from engine.config.settings import HttpSettings

__all__ = [
    "Credentials",
    "parse_basic",
    "MalformedAuthorization",
    "FailureLimiter",
    "auth_limited_reply",
    "FailureBudget",
    "Bucket",
    "retry_after",
    "after_failure",
    "peer_key",
    "too_many_failures_reason",
]

log = logging.getLogger("nimbus.auth")


class MalformedAuthorization(ValueError):
    """The Authorization header is not valid Basic credentials (HTTP 400, as KumoMTA)."""


def _digest(password: str) -> bytes:
    return hashlib.sha256(password.encode("utf-8")).digest()


def parse_basic(header: str) -> tuple[str, str] | None:
    """``Basic <base64 user:password>`` -> (user, password); None for other schemes."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise MalformedAuthorization("Authorization header is not valid base64 UTF-8") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise MalformedAuthorization("Basic credentials must be user:password")
    return user, password


class Credentials:
    """Users from ``directory`` (None or empty: nobody can authenticate)."""

    def __init__(self, directory: str | None) -> None:
        self._dir = Path(directory) if directory else None
        self._users: dict[str, bytes] = {}
        self._mtime: float | None = None
        self._checked = 0.0
        self._refresh(force=True)

    @property
    def configured(self) -> bool:
        self._refresh()
        return bool(self._users)

    def _refresh(self, force: bool = False) -> None:
        if self._dir is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return
        self._checked = now
        try:
            mtime = os.stat(self._dir).st_mtime
        except OSError:
            if self._users:
                log.warning("auth_dir_unreadable", extra={"dir": str(self._dir)})
            self._users, self._mtime = {}, None
            return
        if mtime == self._mtime and not force:
            return
        users = {}
        for entry in self._dir.iterdir():
            if entry.name.startswith(".") or not entry.is_file():
                continue
            try:
                users[entry.name] = _digest(entry.read_text("utf-8").rstrip("\r\n"))
            except (OSError, UnicodeDecodeError) as exc:
                log.warning("auth_file_unreadable", extra={"file": str(entry), "error": str(exc)})
        self._users, self._mtime = users, mtime
        log.info("auth_users_loaded", extra={"count": len(users), "dir": str(self._dir)})

    def check(self, user: str, password: str) -> bool:
        """True when ``user`` exists and ``password`` matches (constant-time compare)."""
        self._refresh()
        expected = self._users.get(user)
        given = _digest(password)
        if expected is None:
            hmac.compare_digest(given, given)  # same work whether or not the user exists
            return False
        return hmac.compare_digest(given, expected)


# -- brute-force brake ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureBudget:
    """burst: failed attempts a fresh peer may make at once; refill: seconds per token back."""

    burst: int
    refill: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Bucket:
    """tokens: failures still allowed at ``at`` (monotonic seconds)."""

    tokens: float
    at: float


def _refilled(bucket: Bucket | None, now: float, budget: FailureBudget) -> Bucket:
    if bucket is None:
        return Bucket(tokens=float(budget.burst), at=now)
    gained = max(0.0, now - bucket.at) / budget.refill
    return Bucket(tokens=min(float(budget.burst), bucket.tokens + gained), at=now)


def retry_after(bucket: Bucket | None, now: float, budget: FailureBudget) -> int:
    """0 when the peer may try now, else the whole seconds until it may (at least 1)."""
    tokens = _refilled(bucket, now, budget).tokens
    if tokens >= 1.0:
        return 0
    return max(1, math.ceil((1.0 - tokens) * budget.refill - 1e-9))


def after_failure(bucket: Bucket | None, now: float, budget: FailureBudget) -> Bucket:
    """The peer's bucket once one failed attempt has been paid for."""
    current = _refilled(bucket, now, budget)
    return Bucket(tokens=max(0.0, current.tokens - 1.0), at=now)


def peer_key(address: str | None) -> str:
    """The bucket a peer address shares: IPv4 itself, IPv6 its /64, else the raw text."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or ""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureLimiter:
    """Failed authentication attempts per peer, shared by SMTP AUTH and the inject and admin APIs.

    budget: burst and refill (``burst == 0`` turns the brake off).
    max_peers: table bound; clock: monotonic seconds (tests inject one).
    """

    def __init__(
        self,
        budget: FailureBudget,
        *,
        max_peers: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self._clock = clock
        # An entry untouched for burst*refill seconds is a full bucket: the same as none.
        ttl = max(budget.burst * budget.refill, 1e-3)
        self._buckets: TTLCache[str, Bucket] = TTLCache(
            maxsize=max(1, max_peers), ttl=ttl, timer=clock
        )

    @classmethod
    def from_settings(cls, http: HttpSettings) -> FailureLimiter:
        budget = FailureBudget(burst=http.auth_failure_burst, refill=http.auth_failure_refill)
        return cls(budget, max_peers=http.auth_failure_peers)

    def retry_after(self, peer: str | None) -> int:
        """0 when ``peer`` may attempt authentication now, else seconds to wait."""
        if not self.budget.burst:
            return 0
        return retry_after(self._buckets.get(peer_key(peer)), self._clock(), self.budget)

    def failed(self, peer: str | None) -> None:
        """Charge ``peer`` one failed attempt."""
        if not self.budget.burst:
            return
        key = peer_key(peer)
        bucket = after_failure(self._buckets.get(key), self._clock(), self.budget)
        self._buckets[key] = bucket
        if bucket.tokens < 1.0:
            log.warning("auth_failures_limited", extra={"peer": key})

    @property
    def tracked(self) -> int:
        """Peers with a bucket in the table now."""
        return len(self._buckets)


def too_many_failures_reason(wait: int) -> str:
    """The 429 body's reason, the same for every API."""
    return f"too many failed authentication attempts from this address; retry in {wait}s"


def auth_limited_reply(wait: int) -> str:
    """The SMTP AUTH answer while a peer's failure budget is empty (RFC 4954: 454 4.7.0)."""
    return f"454 4.7.0 Too many failed authentication attempts from this address; retry in {wait}s"
