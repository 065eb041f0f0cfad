"""The ready queue's TLS policy per target (queues/connect.py) with the in-memory fakes."""

from __future__ import annotations

import pytest

from engine.delivery.dane import Tlsa, TlsaAnswer, TlsaLookupFailed
from engine.delivery.mta_sts import MtaStsPolicy, StsMode
from engine.policy.egress import EgressPathConfig, EgressSource, TlsMode
from engine.queues.connect import NoTargetAvailable, ReadyRoute, Target, open_session
from engine.records import Response
from tests.support.fakes import FakeConnector, FakeResolver, FakeTlsPolicy, HostScript

ADDRESSES = {"mx1.shared.test": ["192.0.2.1"], "mx2.shared.test": ["192.0.2.2"]}
RECORD = Tlsa(usage=3, selector=1, matching=1, data=b"\x01" * 32)
ENFORCE = MtaStsPolicy(
    domain="broken.test", mode=StsMode.ENFORCE, max_age=86400, mx=("*.elsewhere.test",), id="1"
)


def route(*, mta_sts=None, dane=False, hosts=("mx1.shared.test", "mx2.shared.test")):
    return ReadyRoute(
        name="default->(mx1|mx2).shared.test@smtp_client",
        site="(mx1|mx2).shared.test",
        source=EgressSource(name="default"),
        pool="default",
        path=EgressPathConfig(enable_dane=dane, enable_tls=TlsMode.REQUIRED),
        targets=tuple(Target(host=h, port=25) for h in hosts),
        mta_sts=mta_sts,
    )


async def session(r: ReadyRoute, tls: FakeTlsPolicy, connector: FakeConnector | None = None):
    connector = connector or FakeConnector()
    conn = await open_session(
        r,
        connector=connector,
        resolver=FakeResolver(addresses=ADDRESSES),
        allow_loopback_mx=False,
        tls_policy=tls,
    )
    return connector, conn


async def test_enforce_skips_hosts_matching_no_pattern():
    """No MX host matches the enforce policy: a transient 4.7.5 naming the domain and
    patterns, and nothing is connected to."""
    connector = FakeConnector()
    with pytest.raises(NoTargetAvailable) as info:
        await session(route(mta_sts=ENFORCE), FakeTlsPolicy(), connector)
    assert not info.value.permanent
    response = info.value.response
    assert response.code == 451 and str(response.enhanced_code) == "4.7.5"
    assert "MTA-STS policy of broken.test (enforce)" in response.content
    assert "*.elsewhere.test" in response.content
    assert connector.connects == []


async def test_enforce_uses_the_hosts_that_match():
    """Only hosts matching a pattern are tried, in MX order."""
    policy = MtaStsPolicy(
        domain="d.test", mode=StsMode.ENFORCE, max_age=60, mx=("mx2.shared.test",), id="1"
    )
    connector, conn = await session(route(mta_sts=policy), FakeTlsPolicy())
    assert [c[0] for c in connector.connects] == ["mx2.shared.test"]
    assert conn.peer.name == "mx2.shared.test"


async def test_tls_failure_under_enforce_names_mta_sts():
    """A TLS failure to a matching host says it was the MTA-STS policy that required TLS."""
    policy = MtaStsPolicy(
        domain="d.test", mode=StsMode.ENFORCE, max_age=60, mx=("*.shared.test",), id="1"
    )
    failure = Response.parse(451, "4.7.5 TLS handshake with mx failed: CERTIFICATE_VERIFY_FAILED")
    scripts = {h: HostScript(tls_failure=failure) for h in ADDRESSES}
    with pytest.raises(NoTargetAvailable) as info:
        await session(route(mta_sts=policy), FakeTlsPolicy(), FakeConnector(scripts))
    assert info.value.response.content.startswith("MTA-STS policy of d.test (enforce): ")
    assert "CERTIFICATE_VERIFY_FAILED" in info.value.response.content


async def test_dane_takes_precedence_over_mta_sts_mx_patterns():
    """A host with a validated TLSA RRset is used despite matching no MTA-STS pattern
    (RFC 8461 §2), and its Endpoint carries the records."""
    tls = FakeTlsPolicy(tlsa={"mx1.shared.test": TlsaAnswer(records=(RECORD,), validated=True)})
    connector, conn = await session(route(mta_sts=ENFORCE, dane=True), tls)
    assert conn.peer.name == "mx1.shared.test"
    assert connector.endpoints[0].tlsa == (RECORD,)


async def test_unvalidated_tlsa_is_ignored():
    """TLSA records without the AD bit do not reach the connection."""
    tls = FakeTlsPolicy(tlsa={"mx1.shared.test": TlsaAnswer(records=(RECORD,), validated=False)})
    connector, _ = await session(route(dane=True), tls)
    assert connector.endpoints[0].tlsa is None


async def test_dane_disabled_looks_nothing_up():
    """With enable_dane false no TLSA query is made."""
    tls = FakeTlsPolicy(tlsa={"mx1.shared.test": TlsaAnswer(records=(RECORD,), validated=True)})
    connector, _ = await session(route(dane=False), tls)
    assert tls.lookups == [] and connector.endpoints[0].tlsa is None


async def test_ip_literal_targets_get_no_tlsa_lookup():
    """An IP-literal smarthost has no TLSA owner name: no lookup."""
    tls = FakeTlsPolicy()
    connector, _ = await session(route(dane=True, hosts=("192.0.2.9",)), tls)
    assert tls.lookups == [] and connector.endpoints[0].tlsa is None


async def test_unusable_tlsa_does_not_outrank_mta_sts():
    """A validated RRset with only PKIX-EE records is not usable DANE: the enforce
    policy's mx check still applies (RFC 8461 §2 speaks of usable TLSA)."""
    pkix = Tlsa(usage=1, selector=1, matching=1, data=b"\x01" * 32)
    tls = FakeTlsPolicy(tlsa={h: TlsaAnswer(records=(pkix,), validated=True) for h in ADDRESSES})
    connector = FakeConnector()
    with pytest.raises(NoTargetAvailable, match="matches no mx pattern"):
        await session(route(mta_sts=ENFORCE, dane=True), tls, connector)
    assert connector.connects == []


async def test_unusable_validated_tlsa_still_makes_tls_mandatory():
    """Without MTA-STS, a validated RRset of unusable records still reaches the connection:
    TLS is mandatory, unauthenticated (RFC 7672 §3)."""
    pkix = Tlsa(usage=1, selector=1, matching=1, data=b"\x01" * 32)
    tls = FakeTlsPolicy(tlsa={"mx1.shared.test": TlsaAnswer(records=(pkix,), validated=True)})
    connector, _ = await session(route(dane=True), tls)
    assert connector.endpoints[0].tlsa == (pkix,)


async def test_failed_tlsa_lookup_skips_a_secure_host_and_tries_the_next():
    """mx1's TLSA lookup fails and its addresses are secure: mx1 is skipped (no connect),
    mx2 (no TLSA) takes the session (RFC 7672 §2.2)."""
    tls = FakeTlsPolicy(tlsa={"mx1.shared.test": TlsaLookupFailed("SERVFAIL")})
    connector, conn = await session(route(dane=True), tls)
    assert conn.peer.name == "mx2.shared.test"
    assert [e.host for e in connector.endpoints] == ["mx2.shared.test"]


async def test_failed_tlsa_lookups_on_every_host_defer_with_4_7_5():
    """Every host's TLSA lookup fails: nothing is tried, a transient 451 4.7.5 naming DANE."""
    tls = FakeTlsPolicy(tlsa={h: TlsaLookupFailed(f"TLSA lookup of {h} failed") for h in ADDRESSES})
    connector = FakeConnector()
    with pytest.raises(NoTargetAvailable) as info:
        await session(route(dane=True), tls, connector)
    assert connector.connects == [] and not info.value.permanent
    assert info.value.response.code == 451
    assert str(info.value.response.enhanced_code) == "4.7.5"


async def test_secure_tlsa_of_an_insecure_host_is_ignored():
    """A validated RRset for a host whose addresses are not validated does not apply."""
    tls = FakeTlsPolicy(
        tlsa={"mx1.shared.test": TlsaAnswer(records=(RECORD,), validated=True)},
        insecure={"mx1.shared.test"},
    )
    connector, _ = await session(route(dane=True), tls)
    assert connector.endpoints[0].tlsa is None


async def test_no_address_check_when_no_tlsa_is_published():
    """No TLSA records: the host's address status is not looked up (one query saved)."""
    tls = FakeTlsPolicy()
    await session(route(dane=True), tls)
    assert ("addr", "mx1.shared.test") not in tls.lookups
