"""The status page's pure parts: node state, the status model, record rates, cell formats,
the rendered page (escaping) and the package data that ships its templates."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from pathlib import Path
from typing import Any

import pytest
import tomli

from engine.admin.entries import BounceEntry, ReadyQSuspendEntry, SuspendEntry
from engine.admin.status import (
    TOP,
    QueueReading,
    Readings,
    ReadyReading,
    build_status,
    node_state,
)
from engine.admin.status_page import format_value, render_page
from engine.logs.rates import RecordRates
from engine.reception.shedding import Reason, Shedding
from engine.records import LogRecord, RecordType, Response
from engine.shaping.overlay import ConfigOverride, Suspension

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_700_000_000.0
BASE = Readings(now=NOW, node_id="mta-1")
SHED = Shedding(reason=Reason.DISK, detail="5 MB free on the spool filesystem, below 128 MB")


def readings(**changes: Any) -> Readings:
    return dataclasses.replace(BASE, **changes)


# -- node state ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "draining, not_ready, shedding, state",
    [
        (False, None, None, "up"),
        (False, None, SHED, "shedding"),
        (False, "waiting for spool startup", None, "starting"),
        (False, "waiting for spool startup", SHED, "starting"),
        (True, "shutting down", None, "draining"),
        (True, "shutting down", SHED, "draining"),
        (True, None, None, "draining"),  # stop requested, acceptor not yet told
    ],
)
def test_node_state(draining, not_ready, shedding, state):
    """A shutdown wins over not ready, which wins over shedding; else up."""
    assert node_state(draining, not_ready, shedding) == state


@pytest.mark.parametrize(
    "changes, why",
    [
        ({}, None),
        (
            {"shedding": SHED},
            "shedding load (disk): 5 MB free on the spool filesystem, below 128 MB",
        ),
        ({"not_ready": "waiting for spool startup"}, "waiting for spool startup"),
        ({"draining": True, "not_ready": "shutting down"}, "shutting down"),
    ],
)
def test_node_why_says_the_reason(changes, why):
    """The one-line reason names what keeps the node from being plainly up."""
    assert build_status(readings(**changes)).node.why == why


# -- queues --------------------------------------------------------------------------


def test_scheduled_counts_oldest_and_top_busiest_first():
    """Totals over every queue; the top list is busiest first, names breaking ties."""
    status = build_status(
        readings(
            scheduled=[
                QueueReading(name="b.test", count=2, oldest=NOW - 30),
                QueueReading(name="a.test", count=2, oldest=NOW - 90.04),
                QueueReading(name="c.test", count=5, oldest=None),
            ]
        )
    )
    s = status.queues.scheduled
    assert (s.messages, s.queues, s.oldest_age_seconds, s.hidden) == (9, 3, 90.0, 0)
    assert [(q.name, q.count, q.oldest_age_seconds) for q in s.top] == [
        ("c.test", 5, None),
        ("a.test", 2, 90.0),
        ("b.test", 2, 30.0),
    ]


def test_scheduled_top_is_bounded_and_says_how_many_are_hidden():
    """Past TOP queues the rest are counted, not listed."""
    many = [QueueReading(name=f"d{i:03}.test", count=i + 1) for i in range(TOP + 7)]
    s = build_status(readings(scheduled=many)).queues.scheduled
    assert len(s.top) == TOP and s.hidden == 7 and s.top[0].name == f"d{TOP + 6:03}.test"


@pytest.mark.parametrize(
    "scheduled, by_queue, destinations",
    [
        ([], {}, []),
        ([("example.com", 3)], {}, [("example.com", 3)]),
        # tenant and campaign queues of one domain add up; routing_domain is where it goes
        (
            [("t1@example.com", 2), ("c:t2@example.com", 1), ("x.test!relay.test", 4)],
            {},
            [("relay.test", 4), ("example.com", 3)],
        ),
        # ready messages count by their scheduled queue's destination
        (
            [("example.com", 1)],
            {"example.com": 2, "other.test": 2},
            [("example.com", 3), ("other.test", 2)],
        ),
    ],
)
def test_top_destinations(scheduled, by_queue, destinations):
    """Destinations sum scheduled and ready messages per destination domain."""
    status = build_status(
        readings(
            scheduled=[QueueReading(name=n, count=c) for n, c in scheduled],
            ready=[
                ReadyReading(
                    name="r",
                    site="s",
                    source="unspecified",
                    count=sum(by_queue.values()),
                    connections=0,
                    connection_limit=32,
                    by_queue=by_queue,
                )
            ],
        )
    )
    assert [(d.domain, d.count) for d in status.queues.destinations] == destinations


def test_ready_queues_with_connections_and_states():
    """Ready rows carry connections, the limit, the oldest age and the throttle states."""
    ready = [
        ReadyReading(
            name="unspecified->mx.a@smtp_client",
            site="mx.a",
            source="unspecified",
            count=4,
            connections=2,
            connection_limit=3,
            oldest=NOW - 12,
            states={
                "message_rate_throttled": {"context": "100/s", "since": "t"},
                "connection_limited": {"context": "limit reached", "since": "t"},
            },
        ),
        ReadyReading(
            name="unspecified->mx.b@smtp_client",
            site="mx.b",
            source="unspecified",
            count=0,
            connections=1,
            connection_limit=32,
        ),
    ]
    status = build_status(readings(ready=ready))
    r = status.queues.ready
    assert (r.messages, r.queues, r.connections, r.oldest_age_seconds) == (4, 2, 3, 12.0)
    first = status.ready_queues[0]
    assert (first.site, first.connections, first.connection_limit) == ("mx.a", 2, 3)
    assert [s["state"] for s in first.states] == ["connection_limited", "message_rate_throttled"]


def test_admin_and_tsa_suspensions_mark_their_scheduled_queues():
    """A scheduled queue held by an admin or TSA suspension shows its reason."""
    status = build_status(
        readings(
            scheduled=[
                QueueReading(name="a.test", count=1),
                QueueReading(name="t@b.test", count=1),
                QueueReading(name="c.test", count=1),
            ],
            admin_suspensions=[
                SuspendEntry(id="1", reason="maint", expires=NOW + 60, domain="a.test")
            ],
            overlay=[
                Suspension(
                    id="2", scope="scheduled", reason="421s", expires=NOW + 60, domain="b.test"
                )
            ],
        )
    )
    assert {q.name: q.suspended for q in status.queues.scheduled.top} == {
        "a.test": "maint",
        "t@b.test": "TSA: 421s",
        "c.test": None,
    }


# -- holds ---------------------------------------------------------------------------


def test_holds_list_admin_and_tsa_entries_soonest_end_first():
    """Every live hold, admin and TSA, with its target, reason and expiry, soonest first."""
    status = build_status(
        readings(
            admin_suspensions=[SuspendEntry(id="s1", reason="maint", expires=NOW + 3600)],
            admin_ready_suspensions=[
                ReadyQSuspendEntry(
                    id="r1", name="src->mx.a@smtp_client", reason="r", expires=NOW + 60
                )
            ],
            admin_bounces=[
                BounceEntry(id="b1", reason="gone", expires=NOW + 600, created=NOW, domain="x.test")
            ],
            overlay=[
                Suspension(
                    id="t1",
                    scope="ready",
                    reason="blocked",
                    expires=NOW + 30,
                    source="src",
                    site="mx.b",
                ),
                ConfigOverride(
                    id="t2",
                    reason="slow down",
                    expires=NOW + 120,
                    domain="y.test",
                    name="max_message_rate",
                    value="10/min",
                ),
                Suspension(id="old", scope="ready", reason="over", expires=NOW - 1, site="mx.c"),
            ],
        )
    )
    assert [
        (h.origin, h.kind, h.id, h.target, h.expires_in_seconds, h.detail) for h in status.holds
    ] == [
        ("tsa", "ReadyQSuspension", "t1", "source=src site=mx.b", 30.0, ""),
        ("admin", "suspend-ready-q", "r1", "src->mx.a@smtp_client", 60.0, ""),
        ("tsa", "ConfigOverride", "t2", "domain=y.test", 120.0, "max_message_rate = 10/min"),
        ("admin", "bounce", "b1", "domain=x.test", 600.0, ""),
        ("admin", "suspend", "s1", "every queue", 3600.0, ""),
    ]
    assert status.holds[-1].expires == "2023-11-14T23:13:20.000000Z"


# -- rates, bounces, health, spool ---------------------------------------------------


def test_rates_list_the_mail_types_first_and_skip_audit_records():
    """The six mail types always appear, in flow order; others follow; AdminAudit never."""
    status = build_status(
        readings(
            rates_1m={"Delivery": 6, "AdminAudit": 2},
            rates_5m={"Delivery": 25, "XferOut": 3, "AdminAudit": 4},
        )
    )
    rows = [(r.type, r.last_1m, r.last_5m, r.per_minute_5m) for r in status.rates]
    assert rows == [
        ("Reception", 0, 0, 0.0),
        ("Delivery", 6, 25, 5.0),
        ("TransientFailure", 0, 0, 0.0),
        ("Bounce", 0, 0, 0.0),
        ("Expiration", 0, 0, 0.0),
        ("Rejection", 0, 0, 0.0),
        ("XferOut", 0, 3, 0.6),
    ]


def test_bounces_by_classification_busiest_recently_first():
    """Classifications sorted by the last 5 minutes, then since start."""
    status = build_status(
        readings(
            bounces_5m={"InvalidRecipient": 1}, bounce_totals={"InvalidRecipient": 4, "Spam": 9}
        )
    )
    assert [(b.classification, b.last_5m, b.total) for b in status.bounces] == [
        ("InvalidRecipient", 1, 4),
        ("Spam", 0, 9),
    ]


@pytest.mark.parametrize(
    "changes, redis, tsa",
    [
        ({}, "not configured", "not configured"),
        ({"redis_configured": True}, "ok", "not configured"),
        ({"redis_configured": True, "redis_degraded": True}, "degraded", "not configured"),
        ({"tsa_configured": True}, "not configured", "not synced"),
        ({"tsa_configured": True, "tsa_synced": True}, "not configured", "unreachable"),
        ({"tsa_configured": True, "tsa_synced": True, "tsa_healthy": True}, "not configured", "ok"),
    ],
)
def test_health_states(changes, redis, tsa):
    """Redis and TSA health in one word each."""
    health = build_status(readings(**changes)).health
    assert (health.redis["state"], health.tsa["state"]) == (redis, tsa)


def test_spool_disk_use():
    """Disk use is the share of the spool filesystem not free; unknown when unmeasured."""
    assert build_status(readings()).spool.disk_used_percent is None
    spool = build_status(readings(disk_total=1000, disk_free=250, spool_bytes=7)).spool
    assert (spool.disk_used_percent, spool.bytes) == (75.0, 7)


def test_json_is_plain_data():
    """to_json() is JSON-able dicts and lists, with the documented top-level keys."""
    body: Any = build_status(readings(scheduled=[QueueReading(name="a", count=1)])).to_json()
    assert list(body) == [
        "generated", "node", "queues", "ready_queues", "ready_queues_hidden", "rates",
        "bounces", "holds", "health", "spool", "transfers", "warmup",
    ]  # fmt: skip
    assert body["queues"]["scheduled"]["top"] == [
        {"name": "a", "count": 1, "oldest_age_seconds": None, "suspended": None}
    ]


# -- the record-rate ring ------------------------------------------------------------


def record(kind: RecordType, classification: str = "Uncategorized") -> LogRecord:
    return LogRecord(
        type=kind,
        id="x",
        sender="a@b",
        recipient="c@d",
        queue="d",
        site="",
        size=1,
        response=Response(code=250, content="ok"),
        timestamp=0.0,
        created=0.0,
        nodeid="n",
        bounce_classification=classification,
    )


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_rates_count_trailing_windows_and_forget_old_seconds():
    """Counts fall out of a window as it slides; slots are reused after the ring wraps."""
    clock = Clock()
    rates = RecordRates(window=300, clock=clock)
    for _ in range(3):
        rates.count(record(RecordType.DELIVERY))
    clock.t += 100
    rates.count(record(RecordType.DELIVERY))
    rates.count(record(RecordType.BOUNCE, "InvalidRecipient"))
    assert rates.counts(60) == {"Delivery": 1, "Bounce": 1}
    assert rates.counts(300) == {"Delivery": 4, "Bounce": 1}
    clock.t += 250  # the first three are 350 s old now
    assert rates.counts(300) == {"Delivery": 1, "Bounce": 1}
    clock.t += 50  # 300 s after the first batch: its slot is reused, old counts gone
    rates.count(record(RecordType.DELIVERY))
    assert rates.counts(60) == {"Delivery": 1} and rates.counts(300) == {"Delivery": 1}
    assert rates.bounce_totals() == {"InvalidRecipient": 1}


def test_rates_classify_bounces_expirations_and_oob_only():
    """Bounce classifications count Bounce, Expiration and OOB records, not deferrals."""
    rates = RecordRates(clock=Clock())
    for kind, name in [
        (RecordType.BOUNCE, "InvalidRecipient"),
        (RecordType.EXPIRATION, "Uncategorized"),
        (RecordType.OOB, "InvalidRecipient"),
        (RecordType.TRANSIENT_FAILURE, "Spam"),
    ]:
        rates.count(record(kind, name))
    assert rates.bounces(300) == {"InvalidRecipient": 2, "Uncategorized": 1}


def test_rates_cap_classification_names():
    """Past max_classifications distinct names, the rest count as (other): memory is bounded."""
    rates = RecordRates(max_classifications=2, clock=Clock())
    for name in ("a", "b", "c", "d", "a"):
        rates.count(record(RecordType.BOUNCE, name))
    assert rates.bounce_totals() == {"a": 2, "b": 1, "(other)": 2}


def test_rates_refuse_windows_they_do_not_keep():
    """Asking for more seconds than the ring holds is an error, not a silent undercount."""
    with pytest.raises(ValueError):
        RecordRates(window=60, clock=Clock()).counts(300)


# -- formats and the page ------------------------------------------------------------


@pytest.mark.parametrize(
    "value, kind, text",
    [
        (None, "int", "\u2014"),
        (1234567, "int", "1,234,567"),
        (59.9, "age", "59s"),
        (61, "age", "1m 01s"),
        (3 * 3600 + 5 * 60, "in", "3h 05m"),
        (2 * 86400 + 3600, "age", "2d 01h"),
        (999, "bytes", "999 B"),
        (1_500_000, "bytes", "1.5 MB"),
        (75, "percent", "75.0 %"),
        ("2025-01-02T03:04:05.123456Z", "time", "2025-01-02 03:04:05Z"),
        (
            [{"state": "connection_limited", "context": "full"}],
            "states",
            "connection_limited: full",
        ),
        ([], "states", "\u2014"),
        ("<b>", "text", "<b>"),
    ],
)
def test_format_value(value, kind, text):
    """Cells read the same on the server as the page's script writes them."""
    assert format_value(value, kind) == text


EVIL = '<script>alert("x")</script>&'


def test_page_escapes_queue_names_and_reasons():
    """User-controlled strings reach the HTML escaped, never as markup."""
    status = build_status(
        readings(
            node_id="mta-<1>",
            scheduled=[QueueReading(name=f"{EVIL}@evil.test", count=2)],
            admin_suspensions=[SuspendEntry(id="s", reason=EVIL, expires=NOW + 60)],
        )
    ).to_json()
    html = render_page(status, nonce="abc", poll_seconds=2)
    assert "<script>alert" not in html
    assert (
        html.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;") >= 3
    )  # queue, hold, suspended
    assert "mta-&lt;1&gt;" in html
    assert len(re.findall(r"<script nonce=\"abc\">", html)) == 1  # only the page's own script


def test_page_needs_nothing_from_outside():
    """No external scripts, styles, fonts or images: everything is inline."""
    html = render_page(build_status(readings()).to_json(), nonce="n", poll_seconds=2)
    html = html.replace('<link rel="icon" href="data:,">', "")  # no favicon request either
    assert not re.search(r"(src|href)=|@import|url\(|https?://", html, re.IGNORECASE)
    assert 'data-endpoint="/api/admin/status/v1"' in html and 'data-poll-ms="2000"' in html


def test_templates_ship_as_package_data():
    """Every template file matches the package-data globs, so an installed node has them."""
    config = tomli.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["engine.admin"]
    package = ROOT / "engine" / "admin"
    files = [p.relative_to(package).as_posix() for p in (package / "templates").iterdir()]
    assert files and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), (files, globs)


def test_warmup_rows_flatten_each_source_and_provider():
    status = build_status(
        readings(
            warmup=[
                {
                    "source": "ip-2",
                    "day": 3,
                    "counters": [
                        {
                            "provider": None,
                            "state": "warming",
                            "used": 5,
                            "allowed": 9,
                            "window_end": "2026-12-05T00:00:00.000000Z",
                        },
                        {
                            "provider": "google",
                            "state": "done",
                            "used": 2,
                            "allowed": None,
                            "window_end": "2026-12-05T00:00:00.000000Z",
                        },
                    ],
                }
            ]
        )
    ).to_json()
    assert [
        (r["source"], r["provider"], r["day"], r["used"], r["allowed"]) for r in status["warmup"]
    ] == [
        ("ip-2", "*", 3, 5, 9),
        ("ip-2", "google", 3, 2, None),
    ]
