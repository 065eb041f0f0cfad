"""MX resolution: a destination domain -> its mail exchangers, and a host -> its addresses.

Exports:
    MailExchanger                  a domain's MX hosts in try order, its site name and expiry
    MxResolver                     resolve_mx(domain), resolve_addresses(host); TTL cache
                                   (cachetools.TLRUCache, bounded by dns.cache_size),
                                   one shared in-flight query per name; close()
    factor_names(hosts) -> str     KumoMTA's site-name rollup of MX host names (pure)
    order_addresses(addresses, strategy, limit) -> list   ip_lookup_strategy (pure)
    build_resolver(settings), BACKSTOP   the dnspython resolver and timeout backstop
                                   (shared with ``delivery.tls_dns``)

Exceptions (each carries an SMTP ``code``, RFC 3463 ``enhanced`` code and message):

    MxError
    ├── MxTemporaryError      451 4.4.3: SERVFAIL, timeout, no nameserver answered
    ├── MxPermanentError      550 5.1.2: NXDOMAIN, or no MX and no A/AAAA (RFC 5321 5.1);
    │                         556 5.1.10: null MX (RFC 7505)
    └── HostResolutionError   one MX host has no address; ``transient`` says whether a
                              later retry may succeed (451 4.4.3) or not (550 5.4.4)

Answers are cached until their TTL runs out; permanent failures are cached for
their negative TTL (RFC 2308: SOA minimum) but at most 300s, as KumoMTA's
``MX_NEGATIVE_TTL``; temporary failures are never cached.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from cachetools import TLRUCache

from engine.config.settings import DnsSettings
from engine.config.units import parse_hostport
from engine.policy.egress import IpLookupStrategy

__all__ = [
    "MailExchanger",
    "MxResolver",
    "factor_names",
    "order_addresses",
    "MxError",
    "MxTemporaryError",
    "MxPermanentError",
    "HostResolutionError",
    "build_resolver",
    "BACKSTOP",
]

_T = TypeVar("_T")

NEGATIVE_TTL_MAX = 300
# dnspython enforces ``lifetime`` itself; this backstop only catches a hung resolver.
BACKSTOP = 1.0


class MxError(Exception):
    """MX resolution failed; ``code`` and ``enhanced`` are the reply to log or bounce with.

    ``str(error)`` is the message alone, so ``f"{e.code} {e.enhanced} {e}"`` is the reply.
    """

    def __init__(self, code: int, enhanced: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.enhanced = enhanced
        self.message = message


class MxTemporaryError(MxError):
    """The lookup did not complete (SERVFAIL, timeout, no nameserver): retry later."""


class MxPermanentError(MxError):
    """The domain cannot receive mail: NXDOMAIN, null MX, or no MX and no address."""


class HostResolutionError(MxError):
    """An MX host has no usable address.

    host: the MX host name. transient: True when a retry may succeed (SERVFAIL,
    timeout), False when the name has no A/AAAA (NXDOMAIN, NODATA); either way the
    caller may try the domain's next MX host.
    """

    def __init__(self, host: str, *, transient: bool, message: str) -> None:
        code, enhanced = (451, "4.4.3") if transient else (550, "5.4.4")
        super().__init__(code, enhanced, message)
        self.host = host
        self.transient = transient


@dataclass(frozen=True, slots=True, kw_only=True)
class MailExchanger:
    """Where mail for a domain goes.

    domain: the destination domain, lowercased, without trailing dot.
    hosts: MX hosts by preference then name, lowercased, without trailing dot.
    site_name: ``factor_names(hosts)``; domains sharing MX hosts share a ready queue.
    is_implicit: True when the domain has no MX and is its own MX (RFC 5321 5.1).
    expires: ``clock()`` time at which this answer stops being valid.
    """

    domain: str
    hosts: tuple[str, ...]
    site_name: str
    is_implicit: bool = False
    expires: float


def _split_port(host: str) -> tuple[str, str | None]:
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and name and ":" not in name:
        return name, port
    return host, None


def _reversed_labels(host: str) -> list[str] | None:
    name, port = _split_port(host.strip())
    name = name.lower().rstrip(".")
    labels = name.split(".") if name else []
    if any(not label for label in labels):
        return None  # not a valid name; KumoMTA drops what fully_qualify rejects
    if port is not None and labels:
        labels[-1] += f":{port}"
    return labels[::-1]


def factor_names(hosts: Sequence[str]) -> str:
    """Roll MX host names up into one site name (KumoMTA ``factor_names``).

    hosts: MX host names in preference-then-name order, optionally ``name:port``.
    Labels are compared from the right; a position where hosts differ becomes
    ``(a|b)`` in first-seen order, and one that some hosts lack gets a ``?``:
    ``["mx.g.com", "alt1.mx.g.com", "alt2.mx.g.com"]`` -> ``"(alt1|alt2)?.mx.g.com"``.
    Returns ``""`` for no hosts (or only the null MX ``.``).
    """
    split = [labels for labels in map(_reversed_labels, hosts) if labels is not None]
    width = max((len(labels) for labels in split), default=0)
    columns: list[list[str]] = [[] for _ in range(width)]
    for labels in split:
        for i, column in enumerate(columns):
            label = labels[i] if i < len(labels) else "?"
            if label not in column:
                column.append(label)
    parts = []
    for column in columns:
        names = [label for label in column if label != "?"]
        text = names[0] if len(names) == 1 else f"({'|'.join(names)})"
        parts.append(text + "?" if "?" in column else text)
    return ".".join(reversed(parts))


def _normalize(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _is_valid_name(name: str) -> bool:
    try:
        return bool(name) and bool(dns.name.from_text(name).labels[:-1])
    except dns.exception.DNSException:  # empty or over-long label, name too long, ...
        return False


def _nameserver(entry: str) -> dns.nameserver.Do53Nameserver:
    """``host`` or ``host:port`` (``[v6]:port``) -> a nameserver; raises ValueError."""
    host, port = parse_hostport(entry, default_port=53)
    ipaddress.ip_address(host)  # dnspython needs an address, not a name
    if port == 0:
        raise ValueError(f"nameserver {entry!r}: port must be 1-65535")
    return dns.nameserver.Do53Nameserver(host, port)


def build_resolver(settings: DnsSettings) -> dns.asyncresolver.Resolver:
    """A dnspython resolver over ``dns.nameservers`` with the configured timeouts, no cache."""
    if settings.nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        # Do53Nameserver carries its own port, so entries may use different ports.
        resolver.nameservers = [_nameserver(entry) for entry in settings.nameservers]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.timeout = settings.timeout
    resolver.lifetime = settings.lifetime
    resolver.cache = None  # MxResolver caches, with its own clock
    return resolver


def _nxdomain_ttl(exc: dns.resolver.NXDOMAIN) -> int:
    for response in exc.responses().values():
        try:
            return response.resolve_chaining().minimum_ttl
        except dns.exception.DNSException:
            break
    return NEGATIVE_TTL_MAX


def _entry_expiry(_key: Hashable, entry: tuple[Any, float], _now: float) -> float:
    """TLRUCache's time-to-use: each entry carries its own expiry (its DNS TTL)."""
    return entry[1]


_Addresses = tuple[tuple[str, ...], float]  # (addresses, expires)


class MxResolver:
    """Resolves MX and A/AAAA with a TTL-honouring cache, never blocking the loop.

    settings: nameservers (``host`` or ``host:port``; empty = /etc/resolv.conf),
        per-server ``timeout``, whole-lookup ``lifetime`` and ``cache_size``.
    clock: monotonic seconds; tests inject one to expire cache entries.
    Raises ValueError when a nameserver entry is not an IP address with a valid port.
    """

    def __init__(
        self, settings: DnsSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._resolver = build_resolver(settings)
        # Per-entry expiry (each answer's own TTL); least recently used evicted at cache_size.
        self._cache: TLRUCache[Hashable, tuple[Any, float]] = TLRUCache(
            maxsize=max(settings.cache_size, 1), ttu=_entry_expiry, timer=clock
        )
        self._inflight: dict[Hashable, asyncio.Task[Any]] = {}

    async def resolve_mx(self, domain: str) -> MailExchanger:
        """The mail exchangers of ``domain`` (no trailing dot needed).

        Raises MxTemporaryError (retry later) or MxPermanentError (bounce).
        """
        domain = _normalize(domain)
        if not _is_valid_name(domain):
            raise MxPermanentError(550, "5.1.2", f"{domain!r} is not a valid domain name")
        return await self._cached(("mx", domain), lambda: self._lookup_mx(domain))

    async def resolve_addresses(self, host: str) -> list[str]:
        """The addresses of MX ``host``: all A (IPv4) first, then all AAAA.

        Raises HostResolutionError; the caller may try the next MX host.
        """
        host = _normalize(host)
        if not _is_valid_name(host):
            raise HostResolutionError(host, transient=False, message=f"{host!r} is not a host name")
        addresses, _ = await self._addresses(host)
        return list(addresses)

    async def _addresses(self, host: str) -> _Addresses:
        return await self._cached(("addr", host), lambda: self._lookup_addresses(host))

    async def close(self) -> None:
        """Cancel lookups still running (their waiters are gone at shutdown)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _cached(self, key: Hashable, lookup: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """A cached value or permanent error for ``key``, else one shared ``lookup``."""
        entry = self._cache.get(key)
        hit = None if entry is None else entry[0]
        if isinstance(hit, MxError):
            raise hit.with_traceback(None)
        if hit is not None:
            return hit
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(lookup())
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        # shield: one waiter's cancellation must not cancel the others' query.
        return await asyncio.shield(task)

    def _forget(self, key: Hashable, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here, in case every waiter was cancelled

    def _remember(self, key: Hashable, error: MxError, ttl: float, now: float) -> MxError:
        self._cache[key] = (error, now + min(ttl, NEGATIVE_TTL_MAX))
        return error

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> tuple[list[Any], int]:
        """(records, ttl) for one RRset; NODATA gives ([], negative TTL). Raises DNSException."""
        qname = dns.name.from_text(name)
        async with asyncio.timeout(self._settings.lifetime + BACKSTOP):
            answer = await self._resolver.resolve(
                qname, rdtype, search=False, raise_on_no_answer=False
            )
        return list(answer.rrset or ()), answer.chaining_result.minimum_ttl

    async def _lookup_mx(self, domain: str) -> MailExchanger:
        key, now = ("mx", domain), self._clock()
        try:
            records, ttl = await self._query(domain, dns.rdatatype.MX)
        except dns.resolver.NXDOMAIN as exc:
            raise self._remember(
                key,
                MxPermanentError(550, "5.1.2", f"{domain}: no such domain (NXDOMAIN)"),
                _nxdomain_ttl(exc),
                now,
            ) from None
        except (dns.exception.DNSException, OSError, TimeoutError) as exc:
            raise MxTemporaryError(451, "4.4.3", f"{domain}: MX lookup failed: {exc}") from exc
        if not records:
            return await self._implicit_mx(domain, ttl, now)
        exchanges = [r for r in records if r.exchange != dns.name.root]
        if not exchanges:
            # RFC 7505 3: a lone MX of "." says the domain accepts no mail.
            raise self._remember(
                key,
                MxPermanentError(556, "5.1.10", f"{domain}: domain does not accept mail (null MX)"),
                ttl,
                now,
            )
        hosts = _order_hosts(exchanges)
        mx = MailExchanger(
            domain=domain, hosts=hosts, site_name=factor_names(hosts), expires=now + ttl
        )
        self._cache[key] = (mx, mx.expires)
        return mx

    async def _implicit_mx(self, domain: str, mx_ttl: int, now: float) -> MailExchanger:
        """No MX: the domain is its own MX when it has an address (RFC 5321 5.1)."""
        try:
            _, expires = await self._addresses(domain)
        except HostResolutionError as exc:
            if exc.transient:
                raise MxTemporaryError(451, "4.4.3", exc.message) from exc
            raise self._remember(
                ("mx", domain),
                MxPermanentError(550, "5.1.2", f"{domain}: no MX and no A/AAAA record"),
                mx_ttl,
                now,
            ) from exc
        mx = MailExchanger(
            domain=domain,
            hosts=(domain,),
            site_name=domain,
            is_implicit=True,
            expires=min(now + mx_ttl, expires),
        )
        self._cache[("mx", domain)] = (mx, mx.expires)
        return mx

    async def _lookup_addresses(self, host: str) -> _Addresses:
        key, now = ("addr", host), self._clock()
        results = await asyncio.gather(
            self._query(host, dns.rdatatype.A),
            self._query(host, dns.rdatatype.AAAA),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, dns.resolver.NXDOMAIN):
                raise self._remember(
                    key,
                    HostResolutionError(
                        host, transient=False, message=f"{host}: no such host (NXDOMAIN)"
                    ),
                    _nxdomain_ttl(result),
                    now,
                )
        answers = [r for r in results if not isinstance(r, BaseException)]
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if not isinstance(failure, (dns.exception.DNSException, OSError, TimeoutError)):
                raise failure  # a bug or a cancellation: never turn it into a DNS error
        addresses = tuple(r.address for records, _ in answers for r in records)
        ttl = min((t for _, t in answers), default=0)
        if addresses:
            if failures:
                # One family failed transiently: use what we have, but do not cache it.
                return addresses, now
            self._cache[key] = ((addresses, now + ttl), now + ttl)
            return addresses, now + ttl
        if failures:
            raise HostResolutionError(
                host, transient=True, message=f"{host}: address lookup failed: {failures[0]}"
            )
        raise self._remember(
            key,
            HostResolutionError(host, transient=False, message=f"{host}: no A/AAAA record"),
            ttl,
            now,
        )


def _order_hosts(records: Sequence[Any]) -> tuple[str, ...]:
    """MX rdatas -> host names by preference, then name; each host once."""
    ranked = sorted((r.preference, _normalize(r.exchange.to_text())) for r in records)
    return tuple(dict.fromkeys(host for _, host in ranked))


def order_addresses(addresses: Sequence[str], strategy: IpLookupStrategy, limit: int) -> list[str]:
    """An MX host's addresses in the order to try, per ``ip_lookup_strategy``.

    addresses: IP literals as resolved (A first, then AAAA). strategy: ``Ipv4Only`` /
    ``Ipv6Only`` keep one family; ``Ipv4ThenIpv6`` / ``Ipv6ThenIpv4`` put one family
    first; ``Ipv4AndIpv6`` (KumoMTA's default) keeps the resolver's order.
    limit: ``max_mx_addresses_per_host``, at most this many are returned.
    """
    v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
    v6 = [a for a in addresses if ipaddress.ip_address(a).version == 6]
    ordered = {
        IpLookupStrategy.IPV4_ONLY: v4,
        IpLookupStrategy.IPV6_ONLY: v6,
        IpLookupStrategy.IPV4_THEN_IPV6: v4 + v6,
        IpLookupStrategy.IPV6_THEN_IPV4: v6 + v4,
    }.get(strategy, list(addresses))
    return ordered[:limit]
