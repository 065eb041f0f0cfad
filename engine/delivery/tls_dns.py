"""DNS for outbound TLS policy: the ``_mta-sts`` TXT record and DNSSEC-checked TLSA records.

Exports:
    TlsDnsResolver   mta_sts_id(domain) (RFC 8461 §3.1), tlsa(host, port) and
                     address_secure(host) (RFC 7672 §2.2);
                     TTL cache (cachetools.TLRUCache), the same nameservers and timeouts
                     as ``delivery.mx``

TLSA and address queries set DO and AD (RFC 6840 §5.7) and trust the answer only when
the resolver sets AD: like Postfix's ``smtp_dns_support_level = dnssec``, validation is
the job of the configured resolver (``dns.nameservers``, e.g. a local unbound),
reached over a trusted path. An RRset without AD is returned as not validated and
logged once per lookup (``dane_tlsa_unvalidated``); the caller ignores it. A TLSA
lookup that fails (SERVFAIL, timeout) raises ``TlsaLookupFailed`` (logged as
``dane_tlsa_lookup_failed``, not cached); ``address_secure(host)`` says whether the
host's A (else AAAA) RRset is validated, which decides what that failure means
(``delivery.dane.dane_verdict``, RFC 7672 §2.2).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.rdatatype
import dns.resolver
from cachetools import TLRUCache

from engine.config.settings import DnsSettings
from engine.delivery.dane import Tlsa, TlsaAnswer, TlsaLookupFailed, tlsa_name
from engine.delivery.mta_sts import TxtLookupFailed, parse_txt
from engine.delivery.mx import BACKSTOP, NEGATIVE_TTL_MAX, build_resolver

__all__ = ["TlsDnsResolver"]

log = logging.getLogger("nimbus.tls_dns")


def _expiry(_key: Hashable, entry: tuple[Any, float], _now: float) -> float:
    return entry[1]


class TlsDnsResolver:
    """TXT and TLSA lookups, cached for their TTL (negative answers at most 300 s).

    settings: ``dns`` settings (nameservers, timeout, lifetime, cache_size).
    clock: monotonic seconds (tests inject one).
    """

    def __init__(
        self, settings: DnsSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._resolver = build_resolver(settings)
        self._dnssec = build_resolver(settings)
        # RFC 6840 §5.7/§5.9: ask for DNSSEC records (DO) and for the AD bit in the answer.
        self._dnssec.use_edns(0, dns.flags.DO, 1232)
        self._dnssec.flags = dns.flags.RD | dns.flags.AD
        self._cache: TLRUCache[Hashable, tuple[Any, float]] = TLRUCache(
            maxsize=max(settings.cache_size, 1), ttu=_expiry, timer=clock
        )

    async def _query(
        self, resolver: dns.asyncresolver.Resolver, name: str, rdtype: dns.rdatatype.RdataType
    ) -> dns.resolver.Answer:
        async with asyncio.timeout(self._settings.lifetime + BACKSTOP):
            answer: dns.resolver.Answer = await resolver.resolve(
                dns.name.from_text(name), rdtype, search=False, raise_on_no_answer=False
            )
        return answer

    async def mta_sts_id(self, domain: str) -> str | None:
        """The id of ``_mta-sts.<domain>``'s STSv1 record, or None (none, or not valid).

        Raises TxtLookupFailed when the lookup did not complete.
        """
        key = ("txt", domain)
        entry = self._cache.get(key)
        if entry is not None:
            cached: str | None = entry[0]
            return cached
        now = self._clock()
        try:
            answer = await self._query(self._resolver, f"_mta-sts.{domain}", dns.rdatatype.TXT)
        except dns.resolver.NXDOMAIN:
            self._cache[key] = (None, now + NEGATIVE_TTL_MAX)
            return None
        except (dns.exception.DNSException, OSError, TimeoutError) as exc:
            raise TxtLookupFailed(f"_mta-sts.{domain}: TXT lookup failed: {exc}") from exc
        texts = [b"".join(r.strings).decode("utf-8", "replace") for r in answer.rrset or ()]
        ttl = answer.chaining_result.minimum_ttl
        if not texts:  # NODATA: a negative answer (RFC 2308), bounded like MX ones
            ttl = min(ttl, NEGATIVE_TTL_MAX)
        value = parse_txt(texts)
        self._cache[key] = (value, now + ttl)
        return value

    async def tlsa(self, host: str, port: int = 25) -> TlsaAnswer:
        """The TLSA RRset of ``host``'s SMTP port and whether DNSSEC validated it.

        Raises TlsaLookupFailed when the lookup did not complete.
        """
        name = tlsa_name(host, port)
        entry = self._cache.get(("tlsa", name))
        if entry is not None:
            hit: TlsaAnswer = entry[0]
            return hit
        now = self._clock()
        try:
            answer = await self._query(self._dnssec, name, dns.rdatatype.TLSA)
        except dns.resolver.NXDOMAIN:
            self._cache[("tlsa", name)] = (TlsaAnswer(), now + NEGATIVE_TTL_MAX)
            return TlsaAnswer()
        except (dns.exception.DNSException, OSError, TimeoutError) as exc:
            log.warning("dane_tlsa_lookup_failed", extra={"tlsa_name": name, "error": str(exc)})
            raise TlsaLookupFailed(f"TLSA lookup of {name} failed: {exc}") from exc
        records = tuple(
            Tlsa(usage=r.usage, selector=r.selector, matching=r.mtype, data=bytes(r.cert))
            for r in answer.rrset or ()
        )
        validated = bool(answer.response.flags & dns.flags.AD)
        if records and not validated:
            log.warning("dane_tlsa_unvalidated", extra={"tlsa_name": name, "records": len(records)})
        result = TlsaAnswer(records=records, validated=validated)
        ttl = answer.chaining_result.minimum_ttl if records else NEGATIVE_TTL_MAX
        self._cache[("tlsa", name)] = (result, now + ttl)
        return result

    async def address_secure(self, host: str) -> bool:
        """Whether ``host``'s A RRset (AAAA when it has no A records) is DNSSEC-validated.

        A lookup that fails counts as not secure: the address lookup of the connection
        itself then fails too, and the host is skipped for that reason.
        """
        key = ("addr", host.rstrip(".").lower())
        entry = self._cache.get(key)
        if entry is not None:
            hit: bool = entry[0]
            return hit
        now = self._clock()
        secure, ttl = False, float(NEGATIVE_TTL_MAX)
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = await self._query(self._dnssec, host, rdtype)
            except (dns.exception.DNSException, OSError, TimeoutError):
                return False
            if answer.rrset:
                secure = bool(answer.response.flags & dns.flags.AD)
                ttl = answer.chaining_result.minimum_ttl
                break
        self._cache[key] = (secure, now + ttl)
        return secure
