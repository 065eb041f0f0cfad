"""Routing decisions: SourcePicker, destination_for and the policy-answer caches."""

from __future__ import annotations

from collections import Counter

import pytest

from engine.config.settings import Settings
from engine.policy.egress import EgressPool
from engine.policy.events import PolicyFailure
from engine.policy.queue_config import QueueConfig
from engine.queues import routing
from engine.queues.ready import Target
from engine.queues.routing import CONFIG_TTL, Router, SourcePicker, destination_for
from tests.support.fakes import FakeConnector


def picks(entries, n):
    picker = SourcePicker(EgressPool(name="p", entries=tuple(entries)))
    return [picker.pick() for _ in range(n)]


def test_weights_three_to_one_interleaved():
    """Weights 3:1 give a,a,b,a repeated: 6 and 2 over 8 picks, interleaved."""
    assert picks([("a", 3), ("b", 1)], 8) == ["a", "a", "b", "a"] * 2


@pytest.mark.parametrize(
    ("entries", "n", "counts"),
    [
        ([("a", 1)], 4, {"a": 4}),
        ([("a", 1), ("b", 1)], 6, {"a": 3, "b": 3}),
        ([("a", 3), ("b", 1)], 8, {"a": 6, "b": 2}),
        ([("a", 5), ("b", 3), ("c", 2)], 100, {"a": 50, "b": 30, "c": 20}),
        ([("a", 2), ("z", 0), ("b", 1)], 9, {"a": 6, "b": 3}),
    ],
)
def test_pick_counts_follow_weights(entries, n, counts):
    """Over whole cycles each source is picked in proportion to its weight; weight 0 never."""
    assert Counter(picks(entries, n)) == counts


def test_equal_weights_alternate():
    """Equal weights alternate rather than bunching."""
    assert picks([("a", 1), ("b", 1)], 4) == ["a", "b", "a", "b"]


@pytest.mark.parametrize("entries", [[], [("a", 0)], [("a", 0), ("b", 0)]])
def test_no_weighted_source_picks_none(entries):
    """A pool with no positive weight picks None."""
    assert picks(entries, 3) == [None, None, None]


def test_sink_endpoint_wins():
    """With a sink endpoint every queue goes there, even with mx_list and MX hosts."""
    d = destination_for(
        sink_endpoint="sink.local:2525",
        mx_list=("h1",),
        mx_hosts=("mx1",),
        mx_site="mx1",
        smtp_port=25,
    )
    assert (d.site, d.targets, d.explicit) == (
        "mx_list:sink.local:2525",
        (Target(host="sink.local", port=2525),),
        True,
    )


def test_mx_list_site_and_ports():
    """mx_list gives site 'mx_list:h1,h2' and targets with parsed or default ports."""
    d = destination_for(
        sink_endpoint=None, mx_list=("h1", "h2:2525"), mx_hosts=None, mx_site=None, smtp_port=587
    )
    assert (d.site, d.targets, d.explicit) == (
        "mx_list:h1,h2:2525",
        (Target(host="h1", port=587), Target(host="h2", port=2525)),
        True,
    )


def test_mx_hosts_otherwise():
    """Without sink or mx_list the MX hosts are used, in order, on the path's port; not explicit."""
    d = destination_for(
        sink_endpoint=None,
        mx_list=None,
        mx_hosts=("mx1.x", "mx2.x"),
        mx_site="(mx1|mx2).x",
        smtp_port=25,
    )
    assert (d.site, d.targets, d.explicit) == (
        "(mx1|mx2).x",
        (Target(host="mx1.x", port=25), Target(host="mx2.x", port=25)),
        False,
    )


def test_empty_sink_endpoint_is_not_a_sink():
    """An empty sink endpoint falls through to mx_list."""
    d = destination_for(
        sink_endpoint="", mx_list=("h1",), mx_hosts=None, mx_site=None, smtp_port=25
    )
    assert d.site == "mx_list:h1"


def test_sink_endpoint_ipv6_literal():
    """A bracketed IPv6 sink endpoint gives host ::1 and its port."""
    d = destination_for(
        sink_endpoint="[::1]:2525", mx_list=None, mx_hosts=None, mx_site=None, smtp_port=25
    )
    assert d.targets == (Target(host="::1", port=2525),)


class _CountingPolicy:
    """A policy whose get_queue_config answers are counted; ``fail`` makes it raise."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def dispatch(self, name, *args, default=None):
        self.calls += 1
        if self.fail:
            raise PolicyFailure(name, "boom")
        return QueueConfig(retry_interval=float(self.calls))


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _router(policy: _CountingPolicy, clock: _Clock) -> Router:
    return Router(
        settings=Settings(),
        policy=lambda: policy,
        resolver=None,
        spool=None,
        outcomes=None,
        connector=FakeConnector(),
        clock=clock,
    )


async def test_queue_config_is_cached_for_config_ttl():
    """get_queue_config is asked once per queue per CONFIG_TTL, then again."""
    policy, clock = _CountingPolicy(), _Clock()
    router = _router(policy, clock)
    first = await router.queue_config("example.test")
    clock.now += CONFIG_TTL - 1
    assert await router.queue_config("example.test") is first
    clock.now += 2
    assert (await router.queue_config("example.test")).retry_interval == 2.0
    assert policy.calls == 2


async def test_failing_policy_keeps_last_good_config_past_ttl():
    """After the TTL a failing get_queue_config keeps the last good answer, not defaults."""
    policy, clock = _CountingPolicy(), _Clock()
    router = _router(policy, clock)
    good = await router.queue_config("example.test")
    clock.now += CONFIG_TTL + 1
    policy.fail = True
    assert await router.queue_config("example.test") is good


async def test_policy_answer_cache_is_bounded(monkeypatch):
    """Past POLICY_CACHE_SIZE queues the least recently used answer is asked again."""
    monkeypatch.setattr(routing, "POLICY_CACHE_SIZE", 2)
    policy = _CountingPolicy()
    router = _router(policy, _Clock())
    for queue in ("a.test", "b.test", "c.test", "a.test"):
        await router.queue_config(queue)
    assert policy.calls == 4
