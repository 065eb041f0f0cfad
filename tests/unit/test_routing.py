"""Routing decisions: SourcePicker and destination_for."""

from __future__ import annotations

from collections import Counter

import pytest

from engine.policy.egress import EgressPool
from engine.queues.ready import Target
from engine.queues.routing import SourcePicker, destination_for


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
