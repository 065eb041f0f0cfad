"""The delivery gate: which limits and rates apply to a path, and how tickets behave."""

from __future__ import annotations

import pytest

from engine.policy.egress_options import egress_path_from_options
from engine.shaping.gate import Gate, Ticket, connection_limits, message_rates
from engine.shaping.throttle.embedded import EmbeddedStore

READY = "ip-1->mx.example.com@smtp_client"


def path(**options):
    return egress_path_from_options(options, where="test")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, [("nimbus:connection_limit:" + READY, 32, False)]),
        ({"connection_limit": 5}, [("nimbus:connection_limit:" + READY, 5, False)]),
        ({"connection_limit": "local:3"}, [("nimbus:connection_limit:" + READY, 3, True)]),
        (
            {
                "connection_limit": 4,
                "additional_connection_limits": {"shaping-provider-google-ip-1-limit": 10},
            },
            [
                ("nimbus:connection_limit:" + READY, 4, False),
                ("nimbus:limit:shaping-provider-google-ip-1-limit", 10, False),
            ],
        ),
    ],
)
def test_connection_limits_table(options, expected):
    """A path's connection limit and every additional limit become lease sets."""
    got = [
        (lk.key, lk.limit, lk.local) for lk in connection_limits(path(**options), READY, "nimbus")
    ]
    assert got == expected


def test_no_message_rate_means_no_buckets():
    """Without max_message_rate or additional throttles messages draw from no bucket."""
    assert message_rates(path(), READY, "nimbus") == []


def test_message_rates_smallest_first():
    """Buckets are checked smallest rate first so a throttled message spends no other token."""
    rates = message_rates(
        path(max_message_rate="100/s", additional_message_rate_throttles={"p-rate": "10/s"}),
        READY,
        "nimbus",
    )
    assert [str(r.spec) for r in rates] == ["10/s", "100/s"]
    assert rates[1].key.startswith("nimbus:max_message_rate:" + READY)


async def test_open_takes_every_lease_and_close_frees_them():
    """A ticket holds one lease per limit; when any limit is full nothing is held."""
    store = EmbeddedStore()
    gate = Gate(store, "nimbus")
    cfg = path(connection_limit=1)
    first = await gate.open(cfg, READY)
    second = await gate.open(cfg, READY)
    assert isinstance(first, Ticket) and len(first.held) == 1
    assert isinstance(second, float) and second > 0
    await gate.close(first)
    third = await gate.open(cfg, READY)
    assert isinstance(third, Ticket)
    await gate.aclose()


async def test_message_wait_reports_time_until_the_next_token():
    """With max_message_rate 2/s (burst 2) the third immediate message waits ~0.5 s."""
    gate = Gate(EmbeddedStore(), "nimbus")
    cfg = path(max_message_rate="2/s")
    assert await gate.message_wait(cfg, READY) is None
    assert await gate.message_wait(cfg, READY) is None
    wait = await gate.message_wait(cfg, READY)
    assert wait is not None and 0.3 < wait <= 0.5
    await gate.aclose()


async def test_connection_rate_refusal_releases_the_leases():
    """A connection refused by max_connection_rate holds no lease afterwards."""
    store = EmbeddedStore()
    gate = Gate(store, "nimbus")
    cfg = path(connection_limit=5, max_connection_rate="1/min")
    ok = await gate.open(cfg, READY)
    refused = await gate.open(cfg, READY)
    assert isinstance(ok, Ticket) and isinstance(refused, float)
    assert await store.count_leases("nimbus:connection_limit:" + READY) == 1
    await gate.aclose()


def test_selection_rates_keyed_per_pool_source_and_site():
    """source_selection_rate is its own bucket per pool, source and site; named extras too."""
    from engine.shaping.gate import selection_rates

    rates = selection_rates(
        path(source_selection_rate="10/min", additional_source_selection_rates={"p-sel": "5/min"}),
        "pool-1",
        "ip-1",
        "mx.example.com",
        "nimbus",
    )
    assert [r.key for r in rates] == [
        "nimbus:limit:source_selection_rate:pool-1:ip-1:mx.example.com:10:10:60",
        "nimbus:limit:p-sel:5:5:60",
    ]
