"""One admin answer and one scrape for the node from every worker's (pure)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from engine.workers.merge import merge_admin, merge_live_metrics


def test_queue_summary_sums_queues_by_name():
    """Counts and connections of same-named queues add up; the others are kept."""
    a = {
        "scheduled": [{"name": "d.test", "count": 2, "suspended": None}],
        "ready": [{"name": "r", "site": "s", "count": 1, "connections": 1, "suspended": None}],
        "xfer": [],
    }
    b = {
        "scheduled": [
            {"name": "d.test", "count": 3, "suspended": "hold"},
            {"name": "e.test", "count": 1, "suspended": None},
        ],
        "ready": [{"name": "r", "site": "s", "count": 4, "connections": 2, "suspended": None}],
        "xfer": [],
    }
    status, body = merge_admin("GET", "/api/admin/queue-summary/v1", [(200, a), (200, b)])
    assert status == 200
    assert body["scheduled"] == [
        {"name": "d.test", "count": 5, "suspended": "hold"},
        {"name": "e.test", "count": 1, "suspended": None},
    ]
    assert body["ready"] == [
        {"name": "r", "site": "s", "count": 5, "connections": 3, "suspended": None}
    ]


def test_bounce_adds_the_workers_counts():
    """A bounce applied on every worker reports the node's counts under one id."""
    answers = [
        (200, {"id": "e1", "bounced": {"q": 2}, "total_bounced": 2}),
        (200, {"id": "e1", "bounced": {"q": 1, "r": 4}, "total_bounced": 5}),
    ]
    assert merge_admin("POST", "/api/admin/bounce/v1", answers) == (
        200,
        {"id": "e1", "bounced": {"q": 3, "r": 4}, "total_bounced": 7},
    )


def test_entry_lists_have_one_entry_per_id():
    """Every worker holds the same bounce: listed once, its counts added."""
    entry = {"id": "e1", "reason": "x", "bounced": {"q": 1}, "total_bounced": 1}
    status, body = merge_admin("GET", "/api/admin/bounce/v1", [(200, [entry]), (200, [entry])])
    assert body == [{"id": "e1", "reason": "x", "bounced": {"q": 2}, "total_bounced": 2}]


def test_a_message_found_on_one_worker_wins_over_404s():
    """inspect-message: the worker holding the message answers for the node."""
    found = {"id": "m1", "message": {}}
    answers = [(404, {"error": "no message"}), (200, found), (503, {"error": "down"})]
    assert merge_admin("GET", "/api/admin/inspect-message/v1", answers) == (200, found)


def test_all_refused_is_the_receiving_workers_answer():
    """No worker succeeded: the first (receiving) worker's refusal."""
    answers = [(404, {"error": "no entry"}), (404, {"error": "no entry"})]
    assert merge_admin("DELETE", "/api/admin/bounce/v1", answers) == answers[0]


def test_xfer_jobs_are_joined_and_a_transfer_counts_every_worker():
    """GET xfer lists every worker's jobs; POST xfer adds the messages each took."""
    status, jobs = merge_admin("GET", "/api/admin/xfer/v1", [(200, [{"a": 1}]), (200, [{"b": 2}])])
    assert jobs == [{"a": 1}, {"b": 2}]
    answers = [(200, {"queue_name": "q", "messages": 2}), (200, {"queue_name": "q", "messages": 3})]
    assert merge_admin("POST", "/api/admin/xfer/v1", answers)[1] == {
        "queue_name": "q",
        "messages": 5,
    }


def _render(families) -> str:
    class C(Collector):
        def collect(self):
            return families

    registry = CollectorRegistry()
    registry.register(C())
    return generate_latest(registry).decode()


def test_live_metrics_are_summed_and_node_wide_gauges_take_the_largest():
    """Queue gauges add up per label set; the oldest message age is the largest."""
    w0 = (
        "# HELP nimbus_queued_messages q\n# TYPE nimbus_queued_messages gauge\n"
        "nimbus_queued_messages 3.0\n"
        "# HELP nimbus_oldest_message_age_seconds a\n"
        "# TYPE nimbus_oldest_message_age_seconds gauge\n"
        "nimbus_oldest_message_age_seconds 10.0\n"
        "# HELP nimbus_scheduled_messages s\n# TYPE nimbus_scheduled_messages gauge\n"
        'nimbus_scheduled_messages{queue="a"} 1.0\n'
    )
    w1 = w0.replace(" 3.0", " 4.0").replace(" 10.0", " 25.0").replace('"a"} 1.0', '"a"} 2.0')
    text = _render(merge_live_metrics([w0, w1]))
    assert "nimbus_queued_messages 7.0" in text
    assert "nimbus_oldest_message_age_seconds 25.0" in text
    assert 'nimbus_scheduled_messages{queue="a"} 3.0' in text


def _status(state: str, messages: int, top: list, rates: list, spool: int) -> dict:
    return {
        "generated": "t",
        "node": {"id": "n", "state": state, "why": None, "uptime_seconds": 1.0, "workers": []},
        "queues": {
            "scheduled": {
                "messages": messages,
                "queues": len(top),
                "oldest_age_seconds": float(messages),
                "top": top,
                "hidden": 0,
            },
            "ready": {"messages": 1, "queues": 1, "connections": 2, "oldest_age_seconds": None},
            "destinations": [{"domain": t["name"], "count": t["count"]} for t in top],
        },
        "ready_queues": [{"name": "q", "count": 1, "connections": 2}],
        "ready_queues_hidden": 0,
        "rates": rates,
        "bounces": [{"classification": "InvalidRecipient", "last_5m": 1, "total": 3}],
        "holds": [{"id": "h1"}],
        "health": {"redis": {"state": "ok"}, "tsa": {"state": "not configured"}},
        "spool": {"messages": spool, "bytes": 10 * spool},
        "transfers": [{"queue_name": f"x{messages}"}],
        "warmup": [],
    }


def test_the_status_page_sums_the_workers():
    """queues, connections, rates, bounces, spool and transfers add up; the state is the
    worst; holds come once; the engine workers are listed."""
    a = _status(
        "up",
        2,
        [{"name": "a.test", "count": 2}],
        [{"type": "Delivery", "last_1m": 5, "last_5m": 9}],
        3,
    )
    b = _status(
        "shedding",
        3,
        [{"name": "a.test", "count": 1}, {"name": "b.test", "count": 2}],
        [{"type": "Delivery", "last_1m": 1, "last_5m": 2}],
        4,
    )
    status, body = merge_admin("GET", "/api/admin/status/v1", [(200, a), (200, b)])
    assert status == 200
    assert body["node"]["state"] == "shedding"
    assert body["node"]["workers"][0] == {
        "name": "engine workers",
        "count": 2,
        "detail": "this view sums them",
    }
    sched = body["queues"]["scheduled"]
    assert (sched["messages"], sched["oldest_age_seconds"]) == (5, 3.0)
    assert [(t["name"], t["count"]) for t in sched["top"]] == [("a.test", 3)]
    assert body["queues"]["ready"]["connections"] == 4
    assert {d["domain"]: d["count"] for d in body["queues"]["destinations"]} == {
        "a.test": 3,
        "b.test": 2,
    }
    assert body["ready_queues"] == [{"name": "q", "count": 2, "connections": 4}]
    assert body["rates"] == [{"type": "Delivery", "last_1m": 6, "last_5m": 11}]
    assert body["bounces"] == [{"classification": "InvalidRecipient", "last_5m": 2, "total": 6}]
    assert (body["spool"]["messages"], body["spool"]["bytes"]) == (7, 70)
    assert [t["queue_name"] for t in body["transfers"]] == ["x2", "x3"]
    assert body["holds"] == [{"id": "h1"}]


def test_retry_now_adds_every_workers_counts():
    status, body = merge_admin(
        "POST",
        "/api/admin/retry-now/v1",
        [(200, {"retried": {"a": 1}, "total_retried": 1}), (200, {"retried": {"a": 2, "b": 1}})],
    )
    assert (status, body) == (200, {"retried": {"a": 3, "b": 1}, "total_retried": 4})
