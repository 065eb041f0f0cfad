"""MTA-STS (RFC 8461): a recipient domain's policy, its fetch over HTTPS, and its cache.

Exports:
    StsMode                 enforce / testing / none (RFC 8461 §5)
    MtaStsPolicy            a parsed policy: mode, max_age, mx patterns, and the TXT id
    parse_txt(strings)      the id of a ``v=STSv1; id=...`` record, or None (§3.1)
    parse_policy(text, id)  the policy file's fields (§3.2); raises ValueError
    mx_matches(patterns, host) -> bool   §4.1 (``*.`` matches exactly one leftmost label)
    policy_url(domain)      ``https://mta-sts.<domain>/.well-known/mta-sts.txt``
    PolicyFetcher           HTTPS GET with certificate validation, no redirects, bounded
    MtaStsPolicies          policy(domain): TXT id check, cache by max_age, refresh on id change
    FAILED_FETCH_TTL        how long a failed fetch is not repeated for the same TXT id

Exceptions: ``PolicyFetchError`` (the fetch or the policy failed), ``TxtLookupFailed``
(the TXT lookup did not complete; the cached policy, if any, stays in use).

The cache (§3.3, §5.1): a policy is used until ``max_age`` after it was fetched. Each
lookup asks the TXT record (itself cached for its DNS TTL); a different id, or no
cached policy, means a fetch. A failed fetch keeps an unexpired cached policy and
otherwise means no policy (§5: "treat as if no policy"); so does a missing TXT record
with nothing cached. A failed fetch is not retried for the same TXT id for
``FAILED_FETCH_TTL`` (5 minutes), so a broken policy host costs one fetch (and at most
one timeout) per domain per 5 minutes, not one per message.
"""

from __future__ import annotations

import enum
import logging
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from cachetools import LRUCache

from engine.delivery.mx import MxError

__all__ = [
    "StsMode",
    "MtaStsPolicy",
    "parse_txt",
    "parse_policy",
    "mx_matches",
    "policy_url",
    "PolicyFetcher",
    "PolicyFetchError",
    "TxtLookupFailed",
    "MtaStsPolicies",
    "FAILED_FETCH_TTL",
]

log = logging.getLogger("nimbus.mta_sts")

MAX_POLICY_BYTES = 64 * 1024  # §3.3: senders may limit the body size (64 KiB suggested)
MAX_AGE_LIMIT = 31_557_600  # §3.2: at most one year
CACHE_SIZE = 100_000
FAILED_FETCH_TTL = 300.0
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")  # §3.1: id = 1*32(ALPHA / DIGIT)


class StsMode(enum.Enum):
    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


@dataclass(frozen=True, slots=True, kw_only=True)
class MtaStsPolicy:
    """domain: the policy domain. mode: what a failure means. max_age: seconds the policy
    may be cached. mx: the ``mx:`` patterns, lowercased. id: the TXT record's id when
    fetched."""

    domain: str
    mode: StsMode
    max_age: int
    mx: tuple[str, ...]
    id: str


class PolicyFetchError(Exception):
    """The policy could not be fetched or is not a valid policy (the reason)."""


class TxtLookupFailed(Exception):
    """The ``_mta-sts`` TXT lookup did not complete (SERVFAIL, timeout)."""


def parse_txt(strings: Sequence[str]) -> str | None:
    """The id of the one ``v=STSv1`` record among a TXT RRset's texts, else None (§3.1:
    several STSv1 records, or a malformed one, mean no policy)."""
    found: list[str] = []
    for text in strings:
        fields = [f.strip() for f in text.split(";")]
        if not fields or fields[0] != "v=STSv1":
            continue
        ids = [f[3:] for f in fields[1:] if f.startswith("id=")]
        found.append(ids[0] if ids and _ID.match(ids[0]) else "")
    if len(found) != 1 or not found[0]:
        return None
    return found[0]


def parse_policy(text: str, *, domain: str, id: str) -> MtaStsPolicy:
    """The policy file (§3.2): ``key: value`` lines, CRLF or LF; unknown keys ignored.

    Raises ValueError naming the missing or bad field.
    """
    values: dict[str, list[str]] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        key, sep, value = line.partition(":")
        if sep:
            values.setdefault(key.strip(), []).append(value.strip())
    if values.get("version") != ["STSv1"]:
        raise ValueError("version: must be STSv1")
    try:
        mode = StsMode(values.get("mode", [""])[0])
    except ValueError:
        raise ValueError("mode: must be enforce, testing or none") from None
    raw_age = values.get("max_age", [""])[0]
    if not raw_age.isdigit() or len(raw_age) > 10:
        raise ValueError("max_age: must be a number of seconds")
    mx = tuple(p.lower().rstrip(".") for p in values.get("mx", ()) if p)
    if not mx and mode is not StsMode.NONE:
        raise ValueError("mx: at least one pattern is required")
    return MtaStsPolicy(
        domain=domain, mode=mode, max_age=min(int(raw_age), MAX_AGE_LIMIT), mx=mx, id=id
    )


def mx_matches(patterns: Sequence[str], host: str) -> bool:
    """Whether MX ``host`` matches a policy ``mx:`` pattern (§4.1).

    ``mail.example.com`` matches itself; ``*.example.com`` matches exactly one more
    leftmost label (``mx1.example.com``, not ``example.com`` nor ``a.b.example.com``).
    Case-insensitive, trailing dots ignored.
    """
    name = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern.startswith("*."):
            label, _, rest = name.partition(".")
            if label and rest == pattern[2:]:
                return True
        elif name == pattern:
            return True
    return False


def policy_url(domain: str, port: int = 443) -> str:
    """§3.3: the policy host is ``mta-sts.<domain>``; ``port`` other than 443 is for tests."""
    netloc = f"mta-sts.{domain}" + ("" if port == 443 else f":{port}")
    return f"https://{netloc}/.well-known/mta-sts.txt"


class _Resolver(AbstractResolver):
    """Resolves the policy host through the node's DNS (``dns.nameservers``), like MX hosts."""

    def __init__(self, resolve: Callable[[str], Awaitable[list[str]]]) -> None:
        self._resolve = resolve

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await self._resolve(host)
        except MxError as exc:  # aiohttp expects OSError (it becomes a ClientConnectorError)
            raise OSError(f"{host}: {exc}") from exc
        out: list[ResolveResult] = []
        for address in addresses:
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            out.append(
                ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0, flags=0)
            )
        return out

    async def close(self) -> None:
        return None


class PolicyFetcher:
    """Fetches policy files (§3.3): HTTPS with the certificate validated for
    ``mta-sts.<domain>``, redirects not followed, only 200, at most 64 KiB, ``timeout``.

    resolve_addresses: host -> IP literals (the node's resolver).
    ssl_context: verifying context (system CAs or ``delivery.tls_ca_file``).
    port: the policy host's port (``delivery.mta_sts_port``; 443 but in tests).
    """

    def __init__(
        self,
        *,
        resolve_addresses: Callable[[str], Awaitable[list[str]]],
        ssl_context: ssl.SSLContext,
        port: int = 443,
        timeout: float = 10.0,
    ) -> None:
        self._resolve = resolve_addresses
        self._ssl = ssl_context
        self._port = port
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl, resolver=_Resolver(self._resolve))
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        return self._session

    async def fetch(self, domain: str) -> str:
        """The policy text of ``domain``. Raises PolicyFetchError with the reason."""
        url = policy_url(domain, self._port)
        try:
            async with self._client().get(url, allow_redirects=False) as reply:
                if reply.status != 200:  # §3.3: 3xx must not be followed
                    raise PolicyFetchError(f"{url}: HTTP {reply.status}")
                body = await reply.content.read(MAX_POLICY_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise PolicyFetchError(f"{url}: {type(exc).__name__}: {exc}") from None
        if len(body) > MAX_POLICY_BYTES:
            raise PolicyFetchError(f"{url}: policy larger than {MAX_POLICY_BYTES} bytes")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyFetchError(f"{url}: policy is not UTF-8") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class MtaStsPolicies:
    """Each recipient domain's current policy.

    txt_id: domain -> the ``_mta-sts`` record's id or None (raises TxtLookupFailed).
    fetch: domain -> policy text (raises PolicyFetchError).
    clock: monotonic seconds (tests inject one to expire ``max_age``).
    """

    def __init__(
        self,
        *,
        txt_id: Callable[[str], Awaitable[str | None]],
        fetch: Callable[[str], Awaitable[str]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._txt_id = txt_id
        self._fetch = fetch
        self._clock = clock
        self._cache: LRUCache[str, tuple[MtaStsPolicy, float]] = LRUCache(CACHE_SIZE)
        # (domain, id) -> until when a failed fetch is not repeated
        self._failed: LRUCache[tuple[str, str], float] = LRUCache(CACHE_SIZE)

    def _cached(self, domain: str, now: float) -> MtaStsPolicy | None:
        entry = self._cache.get(domain)
        if entry is None:
            return None
        if entry[1] <= now:  # max_age ran out: never used past it (§3.3)
            del self._cache[domain]
            return None
        return entry[0]

    async def policy(self, domain: str) -> MtaStsPolicy | None:
        """The policy to apply to mail for ``domain`` now, or None (no policy)."""
        domain = domain.lower().rstrip(".")
        now = self._clock()
        cached = self._cached(domain, now)
        try:
            txt = await self._txt_id(domain)
        except TxtLookupFailed as exc:
            log.info("mta_sts_txt_lookup_failed", extra={"domain": domain, "error": str(exc)})
            return cached
        if txt is None or (cached is not None and cached.id == txt):
            return cached  # §5.1: no TXT record, yet an unexpired cached policy applies
        if self._failed.get((domain, txt), 0.0) > now:
            return cached  # this id's fetch failed recently: not again per message
        try:
            text = await self._fetch(domain)
            policy = parse_policy(text, domain=domain, id=txt)
        except (PolicyFetchError, ValueError) as exc:
            self._failed[(domain, txt)] = now + FAILED_FETCH_TTL
            log.warning(
                "mta_sts_fetch_failed",
                extra={"domain": domain, "error": str(exc), "cached": cached is not None},
            )
            return cached
        self._cache[domain] = (policy, now + policy.max_age)
        log.info(
            "mta_sts_policy_fetched",
            extra={
                "domain": domain,
                "id": txt,
                "mode": policy.mode.value,
                "max_age": policy.max_age,
                "mx": list(policy.mx),
            },
        )
        return policy
