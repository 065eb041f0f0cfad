"""MxResolver against an in-process FakeDns on loopback (UDP and TCP sockets)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from engine.config.settings import DnsSettings
from engine.delivery.mx import (
    HostResolutionError,
    MxPermanentError,
    MxResolver,
    MxTemporaryError,
)
from tests.support.dns_server import FakeDns

GMAIL = [
    "gmail-smtp-in.l.google.com",
    "alt1.gmail-smtp-in.l.google.com",
    "alt2.gmail-smtp-in.l.google.com",
    "alt3.gmail-smtp-in.l.google.com",
    "alt4.gmail-smtp-in.l.google.com",
]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server():
    async with FakeDns(ttl=60) as fake:
        yield fake


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def resolver(server: FakeDns, clock: Clock) -> MxResolver:
    settings = DnsSettings(nameservers=[server.nameserver], timeout=0.2, lifetime=0.5)
    return MxResolver(settings, clock=clock)


async def test_hosts_ordered_by_preference_then_name(server, resolver) -> None:
    """MX hosts come back by preference, ties broken by name, lowercased without the dot."""
    server.add("example.test", "MX", "20 b.example.test.")
    server.add("example.test", "MX", "10 Z.example.test.")
    server.add("example.test", "MX", "10 a.example.test.")
    mx = await resolver.resolve_mx("Example.Test.")
    assert (mx.domain, mx.hosts) == (
        "example.test",
        ("a.example.test", "z.example.test", "b.example.test"),
    )


async def test_site_name_is_factored(server, resolver) -> None:
    """The site name is the factor_names rollup of the ordered hosts."""
    for pref, host in enumerate(GMAIL):
        server.add("gmail.test", "MX", f"{(pref + 1) * 10} {host}.")
    mx = await resolver.resolve_mx("gmail.test")
    assert mx.site_name == "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"
    assert not mx.is_implicit


async def test_expiry_is_now_plus_ttl(server, resolver, clock) -> None:
    """An answer expires after its TTL on the resolver's clock."""
    server.add("example.test", "MX", "10 mx.example.test.", ttl=42)
    mx = await resolver.resolve_mx("example.test")
    assert mx.expires == clock.now + 42


async def test_second_lookup_is_cached(server, resolver) -> None:
    """A second lookup within the TTL sends no query."""
    server.add("example.test", "MX", "10 mx.example.test.")
    first = await resolver.resolve_mx("example.test")
    assert await resolver.resolve_mx("example.test") == first
    assert server.count("example.test", "MX") == 1


async def test_cache_is_bounded_by_cache_size(server, clock) -> None:
    """Past dns.cache_size the least recently used answer is dropped and asked again."""
    settings = DnsSettings(nameservers=[server.nameserver], timeout=0.2, lifetime=0.5, cache_size=1)
    resolver = MxResolver(settings, clock=clock)
    server.add("a.test", "MX", "10 mx.a.test.")
    server.add("b.test", "MX", "10 mx.b.test.")
    await resolver.resolve_mx("a.test")
    await resolver.resolve_mx("b.test")
    await resolver.resolve_mx("a.test")
    assert server.count("a.test", "MX") == 2


async def test_lookup_after_expiry_requeries(server, resolver, clock) -> None:
    """Once the TTL has passed the next lookup queries again."""
    server.add("example.test", "MX", "10 mx.example.test.")
    await resolver.resolve_mx("example.test")
    clock.now += 61
    await resolver.resolve_mx("example.test")
    assert server.count("example.test", "MX") == 2


async def test_no_mx_falls_back_to_address(server, resolver) -> None:
    """A domain with an A record but no MX is its own implicit MX."""
    server.add("plain.test", "A", "192.0.2.1")
    mx = await resolver.resolve_mx("plain.test")
    assert (mx.hosts, mx.site_name, mx.is_implicit) == (("plain.test",), "plain.test", True)


async def test_no_mx_and_no_address_is_permanent(server, resolver) -> None:
    """A domain with neither MX nor A/AAAA fails permanently with 550 5.1.2."""
    server.add("empty.test", "TXT", "v=spf1 -all")
    with pytest.raises(MxPermanentError) as info:
        await resolver.resolve_mx("empty.test")
    assert (info.value.code, info.value.enhanced) == (550, "5.1.2")


async def test_null_mx_is_permanent(server, resolver) -> None:
    """A null MX (RFC 7505) fails permanently with 556 5.1.10."""
    server.add("nomail.test", "MX", "0 .")
    with pytest.raises(MxPermanentError) as info:
        await resolver.resolve_mx("nomail.test")
    assert (info.value.code, info.value.enhanced) == (556, "5.1.10")


async def test_nxdomain_is_permanent(server, resolver) -> None:
    """A domain that does not exist fails permanently with 550 5.1.2."""
    with pytest.raises(MxPermanentError) as info:
        await resolver.resolve_mx("nowhere.test")
    assert (info.value.code, info.value.enhanced) == (550, "5.1.2")


@pytest.mark.parametrize("domain", ["", "a..test", "x" * 64 + ".test"])
async def test_invalid_domain_is_permanent(resolver, domain: str) -> None:
    """A domain that is not a valid DNS name fails permanently without a query."""
    with pytest.raises(MxPermanentError) as info:
        await resolver.resolve_mx(domain)
    assert (info.value.code, info.value.enhanced) == (550, "5.1.2")


async def test_permanent_failure_is_cached(server, resolver) -> None:
    """A second lookup of a nonexistent domain fails again without a query."""
    for _ in range(2):
        with pytest.raises(MxPermanentError):
            await resolver.resolve_mx("nowhere.test")
    assert server.count("nowhere.test", "MX") == 1


async def test_permanent_failure_expires_after_negative_ttl(server, resolver, clock) -> None:
    """A cached NXDOMAIN is asked again once the SOA negative TTL has passed."""
    with pytest.raises(MxPermanentError):
        await resolver.resolve_mx("nowhere.test")
    clock.now += 61
    with pytest.raises(MxPermanentError):
        await resolver.resolve_mx("nowhere.test")
    assert server.count("nowhere.test", "MX") == 2


async def test_servfail_is_temporary(server, resolver) -> None:
    """SERVFAIL fails temporarily with 451 4.4.3."""
    server.servfail("broken.test")
    with pytest.raises(MxTemporaryError) as info:
        await resolver.resolve_mx("broken.test")
    assert (info.value.code, info.value.enhanced) == (451, "4.4.3")


async def test_temporary_failure_is_not_cached(server, resolver) -> None:
    """After a SERVFAIL the next lookup queries again."""
    server.servfail("broken.test")
    for _ in range(2):
        with pytest.raises(MxTemporaryError):
            await resolver.resolve_mx("broken.test")
    assert server.count("broken.test", "MX") == 2


async def test_timeout_is_temporary(server, resolver) -> None:
    """A server that never answers gives a temporary failure within the lifetime."""
    server.drop("slow.test")
    with pytest.raises(MxTemporaryError):
        async with asyncio.timeout(3):
            await resolver.resolve_mx("slow.test")


async def test_concurrent_lookups_share_one_query(server, resolver) -> None:
    """Concurrent lookups of one domain send a single query."""
    server.add("example.test", "MX", "10 mx.example.test.")
    results = await asyncio.gather(*(resolver.resolve_mx("example.test") for _ in range(5)))
    assert len(set(results)) == 1
    assert server.count("example.test", "MX") == 1


async def test_large_answer_falls_back_to_tcp(server, resolver) -> None:
    """An MX set too big for 512 bytes of UDP is fetched again over TCP."""
    for i in range(40):
        server.add("big.test", "MX", f"10 mx{i:02}.some-long-mail-host-name.big.test.")
    mx = await resolver.resolve_mx("big.test")
    assert len(mx.hosts) == 40
    assert server.count("big.test", "MX") == 2


async def test_addresses_ipv4_first(server, resolver) -> None:
    """A host's addresses list all IPv4 before IPv6."""
    server.add("mx.example.test", "AAAA", "2001:db8::1")
    server.add("mx.example.test", "A", "192.0.2.1")
    server.add("mx.example.test", "A", "192.0.2.2")
    addresses = await resolver.resolve_addresses("mx.example.test")
    assert [ipaddress.ip_address(a).version for a in addresses] == [4, 4, 6]
    assert set(addresses) == {"192.0.2.1", "192.0.2.2", "2001:db8::1"}


async def test_addresses_are_cached(server, resolver) -> None:
    """A second address lookup within the TTL sends no query."""
    server.add("mx.example.test", "A", "192.0.2.1")
    await resolver.resolve_addresses("mx.example.test")
    await resolver.resolve_addresses("mx.example.test")
    assert server.count("mx.example.test", "A") == 1


async def test_unknown_host_is_not_transient(server, resolver) -> None:
    """An MX host that does not exist is a non-transient HostResolutionError."""
    with pytest.raises(HostResolutionError) as info:
        await resolver.resolve_addresses("gone.example.test")
    assert (info.value.host, info.value.transient) == ("gone.example.test", False)


async def test_host_servfail_is_transient(server, resolver) -> None:
    """An MX host whose lookup hits SERVFAIL is a transient HostResolutionError."""
    server.servfail("mx.broken.test")
    with pytest.raises(HostResolutionError) as info:
        await resolver.resolve_addresses("mx.broken.test")
    assert info.value.transient


async def test_close_cancels_a_lookup_in_flight(server, resolver) -> None:
    """close() cancels a lookup still waiting for DNS (its waiter sees the cancellation) at
    once, instead of leaving the query task running until the lifetime runs out."""
    server.drop("slow.test")
    waiter = asyncio.create_task(resolver.resolve_mx("slow.test"))
    await asyncio.sleep(0)  # one loop turn: the waiter starts the shared query task
    async with asyncio.timeout(0.2):  # under the 0.5 s lookup lifetime
        await resolver.close()
        with pytest.raises(asyncio.CancelledError):
            await waiter
