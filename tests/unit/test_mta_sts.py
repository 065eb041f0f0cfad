"""MTA-STS (RFC 8461): TXT and policy parsing, mx pattern matching, and the policy cache."""

from __future__ import annotations

import ssl

import pytest

from engine.delivery.mta_sts import (
    FAILED_FETCH_TTL,
    MtaStsPolicies,
    PolicyFetcher,
    PolicyFetchError,
    StsMode,
    TxtLookupFailed,
    mx_matches,
    parse_policy,
    parse_txt,
    policy_url,
)
from engine.delivery.mx import HostResolutionError

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n"


@pytest.mark.parametrize(
    ("strings", "expected"),
    [
        (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
        (["v=STSv1;id=abc"], "abc"),
        (["v=STSv1; id=abc; ext=1"], "abc"),
        (["v=spf1 -all", "v=STSv1; id=x1"], "x1"),
        (["v=STSv1; id=a", "v=STSv1; id=b"], None),  # §3.1: several records, no policy
        (["v=STSv1;"], None),  # no id
        (["v=STSv1; id=not-alnum"], None),
        (["v=STSv1; id=" + "a" * 33], None),  # at most 32 characters
        (["v=STSv2; id=abc"], None),
        ([], None),
    ],
)
def test_parse_txt(strings, expected):
    """The id of exactly one valid STSv1 record, else no policy."""
    assert parse_txt(strings) == expected


def test_parse_policy_reads_every_field():
    """mode, max_age and every mx line (CRLF separated, as §3.2 shows)."""
    policy = parse_policy(POLICY, domain="example.com", id="1")
    assert policy.mode is StsMode.ENFORCE
    assert policy.max_age == 86400
    assert policy.mx == ("mx1.example.com", "*.example.net")
    assert (policy.domain, policy.id) == ("example.com", "1")


@pytest.mark.parametrize(
    ("text", "mode", "max_age"),
    [
        ("version: STSv1\nmode: testing\nmx: a.example\nmax_age: 10\n", StsMode.TESTING, 10),
        ("version: STSv1\nmode: none\nmax_age: 10\n", StsMode.NONE, 10),  # none needs no mx
        (
            "version: STSv1\nmode: enforce\nmx: a\nmax_age: 99999999\nx: y\n",
            StsMode.ENFORCE,
            31557600,
        ),
    ],
)
def test_parse_policy_modes_and_limits(text, mode, max_age):
    """LF line endings work, unknown keys are ignored, max_age is capped at a year."""
    policy = parse_policy(text, domain="d", id="1")
    assert (policy.mode, policy.max_age) == (mode, max_age)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("mode: enforce\nmx: a\nmax_age: 1\n", "version"),
        ("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n", "version"),
        ("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n", "mode"),
        ("version: STSv1\nmode: enforce\nmx: a\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmax_age: 1\n", "mx"),
        ("<html>not a policy</html>", "version"),
    ],
)
def test_parse_policy_refuses_invalid_policies(text, error):
    """A missing or bad field is a ValueError naming it (the fetch then counts as failed)."""
    with pytest.raises(ValueError, match=error):
        parse_policy(text, domain="d", id="1")


@pytest.mark.parametrize(
    ("patterns", "host", "expected"),
    [
        (("mx1.example.com",), "mx1.example.com", True),
        (("mx1.example.com",), "MX1.Example.COM.", True),  # case and trailing dot
        (("mx1.example.com",), "mx2.example.com", False),
        (("*.example.com",), "mx1.example.com", True),
        (("*.example.com",), "example.com", False),  # §4.1: the wildcard is one label
        (("*.example.com",), "a.b.example.com", False),  # only the leftmost label
        (("*.example.com",), "mx1.example.com.evil.test", False),
        (("a.test", "*.example.com"), "mx.example.com", True),
        ((), "mx.example.com", False),
    ],
)
def test_mx_matches(patterns, host, expected):
    """RFC 8461 §4.1 wildcard and exact matches."""
    assert mx_matches(patterns, host) is expected


def test_policy_url():
    """The well-known URL on mta-sts.<domain>; a non-443 port only for tests."""
    assert policy_url("example.com") == "https://mta-sts.example.com/.well-known/mta-sts.txt"
    assert policy_url("d.test", 8443) == "https://mta-sts.d.test:8443/.well-known/mta-sts.txt"


class Source:
    """Scripted TXT ids and policy texts, counting fetches, with a settable clock."""

    def __init__(self) -> None:
        self.txt: str | None | Exception = "id1"
        self.text: str | Exception = POLICY
        self.fetches = 0
        self.now = 1000.0

    async def txt_id(self, domain: str) -> str | None:
        if isinstance(self.txt, Exception):
            raise self.txt
        return self.txt

    async def fetch(self, domain: str) -> str:
        self.fetches += 1
        if isinstance(self.text, Exception):
            raise self.text
        return self.text

    def policies(self) -> MtaStsPolicies:
        return MtaStsPolicies(txt_id=self.txt_id, fetch=self.fetch, clock=lambda: self.now)


async def test_policy_is_fetched_once_while_the_id_is_unchanged():
    """Same TXT id, unexpired: the cached policy, no second fetch."""
    src = Source()
    cache = src.policies()
    first = await cache.policy("example.com")
    second = await cache.policy("example.com")
    assert first is second and first is not None and src.fetches == 1


async def test_a_new_txt_id_refetches():
    """A changed id means the policy changed (§3.1): fetch again and use the new one."""
    src = Source()
    cache = src.policies()
    await cache.policy("example.com")
    src.txt, src.text = "id2", POLICY.replace("enforce", "testing")
    policy = await cache.policy("example.com")
    assert src.fetches == 2
    assert policy is not None and policy.mode is StsMode.TESTING and policy.id == "id2"


async def test_max_age_expiry_refetches():
    """Past max_age the cached policy is not used: the next lookup fetches again."""
    src = Source()
    cache = src.policies()
    await cache.policy("example.com")
    src.now += 86400 - 1
    await cache.policy("example.com")
    assert src.fetches == 1
    src.now += 1
    await cache.policy("example.com")
    assert src.fetches == 2


async def test_expired_policy_with_failing_fetch_is_no_policy():
    """After max_age, a failed refetch leaves no policy (§5: as if none)."""
    src = Source()
    cache = src.policies()
    await cache.policy("example.com")
    src.now += 86400
    src.text = PolicyFetchError("HTTP 500")
    assert await cache.policy("example.com") is None


async def test_failed_fetch_without_cache_is_no_policy():
    """§5: a policy that cannot be fetched, with none cached, is no policy."""
    src = Source()
    src.text = PolicyFetchError("connection refused")
    assert await src.policies().policy("example.com") is None


async def test_failed_refetch_keeps_the_cached_policy():
    """A new id whose policy cannot be fetched keeps the unexpired cached one (§5.1)."""
    src = Source()
    cache = src.policies()
    first = await cache.policy("example.com")
    src.txt, src.text = "id2", PolicyFetchError("timeout")
    assert await cache.policy("example.com") is first


async def test_invalid_policy_counts_as_a_failed_fetch():
    """A body that is not a policy is a failed fetch: no policy when nothing is cached."""
    src = Source()
    src.text = "hello"
    assert await src.policies().policy("example.com") is None


@pytest.mark.parametrize("txt", [None, TxtLookupFailed("SERVFAIL")])
async def test_cached_policy_survives_a_missing_or_failing_txt(txt):
    """No TXT record (or no answer) with an unexpired cached policy: keep using it."""
    src = Source()
    cache = src.policies()
    first = await cache.policy("example.com")
    src.txt = txt
    assert await cache.policy("example.com") is first
    assert src.fetches == 1


@pytest.mark.parametrize("txt", [None, TxtLookupFailed("SERVFAIL")])
async def test_no_txt_and_nothing_cached_is_no_policy(txt):
    """Without a TXT record nothing is fetched (§3.1)."""
    src = Source()
    src.txt = txt
    assert await src.policies().policy("example.com") is None
    assert src.fetches == 0


async def test_failed_fetch_is_not_repeated_per_lookup():
    """A failed fetch for an id is retried only after FAILED_FETCH_TTL, not per message."""
    src = Source()
    src.text = PolicyFetchError("timeout")
    cache = src.policies()
    assert await cache.policy("example.com") is None
    assert await cache.policy("example.com") is None
    assert src.fetches == 1
    src.now += FAILED_FETCH_TTL
    src.text = POLICY
    policy = await cache.policy("example.com")
    assert src.fetches == 2 and policy is not None and policy.mode is StsMode.ENFORCE


async def test_a_new_id_is_fetched_even_after_a_failure():
    """A failure remembered for one id does not stop fetching a new id's policy."""
    src = Source()
    src.text = PolicyFetchError("HTTP 404")
    cache = src.policies()
    await cache.policy("example.com")
    src.txt, src.text = "id2", POLICY
    assert await cache.policy("example.com") is not None
    assert src.fetches == 2


async def test_unresolvable_policy_host_is_a_failed_fetch():
    """mta-sts.<domain> without an address: a PolicyFetchError (no policy), not a crash of
    the routing batch. No socket is opened: resolution fails first."""

    async def no_address(host: str) -> list[str]:
        raise HostResolutionError(host, transient=False, message=f"{host}: no A/AAAA record")

    fetcher = PolicyFetcher(resolve_addresses=no_address, ssl_context=ssl.create_default_context())
    try:
        with pytest.raises(PolicyFetchError, match="mta-sts.example.com"):
            await fetcher.fetch("example.com")
    finally:
        await fetcher.close()
