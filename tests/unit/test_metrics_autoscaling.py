"""The autoscaling gauges: their pure computation and their exposition."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from engine.logs.metrics import GaugeReading, Metrics, oldest_age, per_site

BASE: GaugeReading = {
    "scheduled": {},
    "ready": {},
    "connections_in": {},
    "connections_out": {},
    "spool_bytes": 0,
    "spool_messages": 0,
}


def samples(reading: GaugeReading) -> dict[tuple[str, tuple], float]:
    metrics = Metrics()
    metrics.attach_gauges(lambda: reading)
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_oldest_age_table():
    """now - created; 0 with nothing held, and never negative (clock stepped back)."""
    cases = [
        ((None, 100.0), 0.0),
        ((40.0, 100.0), 60.0),
        ((100.0, 100.0), 0.0),
        ((150.0, 100.0), 0.0),
    ]
    for (created, now), want in cases:
        assert oldest_age(created, now) == want, (created, now)


def test_per_site_sums_the_ready_queues_of_a_site():
    """Queues of several sources (and an MTA-STS domain's own queue) on one site add up;
    a site whose queues hold nothing is still named, with 0."""
    waiting = [
        ("(mx1|mx2).example.com", 3),
        ("(mx1|mx2).example.com", 4),
        ("(mx1|mx2).example.com", 1),
        ("mx.other.test", 0),
        ("mx_list:127.0.0.1:2526", 9),
    ]
    assert per_site(waiting) == {
        "(mx1|mx2).example.com": 8,
        "mx.other.test": 0,
        "mx_list:127.0.0.1:2526": 9,
    }
    assert per_site([]) == {}


def test_autoscaling_gauges_are_exported_from_the_reading():
    """nimbus_queued_messages, nimbus_oldest_message_age_seconds and
    nimbus_site_backlog_messages{site} carry the reading's values."""
    got = samples(
        {
            **BASE,
            "queued": 12,
            "oldest_message_age": 90.5,
            "site_backlog": {"mx.a.test": 5, "mx.b.test": 0},
        }
    )
    assert got[("nimbus_queued_messages", ())] == 12
    assert got[("nimbus_oldest_message_age_seconds", ())] == 90.5
    assert got[("nimbus_site_backlog_messages", (("site", "mx.a.test"),))] == 5
    assert got[("nimbus_site_backlog_messages", (("site", "mx.b.test"),))] == 0


def test_autoscaling_gauges_read_zero_when_the_reading_lacks_them():
    """A reading without the keys exports 0 and no site series."""
    got = samples(BASE)
    assert got[("nimbus_queued_messages", ())] == 0
    assert got[("nimbus_oldest_message_age_seconds", ())] == 0
    assert not [k for k in got if k[0] == "nimbus_site_backlog_messages"]
