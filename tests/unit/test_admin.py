"""Admin bounces and suspensions: criteria matching, request parsing, state, AdminApi."""

from __future__ import annotations

import pytest

from engine.admin.entries import (
    BounceEntry,
    Criteria,
    ReadyQSuspendEntry,
    SuspendEntry,
    matches_queue,
)
from engine.admin.requests import (
    AdminInputError,
    parse_bounce,
    parse_ready_suspend,
    parse_rebind,
    parse_suspend,
)
from engine.admin.state import AdminApi, AdminState, UnknownEntry
from engine.admin.views import format_summary, format_table

NOW = 1_800_000_000.0


def bounce(id: str = "b1", expires: float = NOW + 300, **criteria) -> BounceEntry:
    return BounceEntry(id=id, reason="r", expires=expires, created=NOW, **criteria)


def suspend(id: str = "s1", expires: float = NOW + 300, **criteria) -> SuspendEntry:
    return SuspendEntry(id=id, reason="r", expires=expires, **criteria)


MATCHES = [
    # (criteria, queue name, matches)
    ({}, "example.com", True),
    ({}, "camp:tenant@example.com!relay.example", True),
    ({}, "@", True),  # unparseable names too: everything means everything
    ({"domain": "example.com"}, "example.com", True),
    ({"domain": "Example.COM"}, "example.com", True),
    ({"domain": "example.com"}, "t@example.com", True),
    ({"domain": "example.com"}, "c:t@example.com!relay.example", True),
    ({"domain": "example.com"}, "example.org", False),
    ({"domain": "example.com"}, "sub.example.com", False),
    ({"domain": "example.com"}, "@", False),
    ({"routing_domain": "relay.example"}, "example.com!relay.example", True),
    ({"routing_domain": "relay.example"}, "example.com", False),
    ({"tenant": "t"}, "t@example.com", True),
    ({"tenant": "t"}, "c:t@example.com", True),
    ({"tenant": "t"}, "other@example.com", False),
    ({"tenant": "t"}, "example.com", False),
    ({"campaign": "c"}, "c:@example.com", True),
    ({"campaign": "c"}, "c:t@example.com", True),
    ({"campaign": "c"}, "t@example.com", False),
    ({"tenant": "t", "domain": "example.com"}, "t@example.com", True),
    ({"tenant": "t", "domain": "example.com"}, "t@example.org", False),
    ({"tenant": "t", "campaign": "c"}, "c:t@example.com", True),
    ({"tenant": "t", "campaign": "c"}, "d:t@example.com", False),
    ({"queue_names": ("t@example.com",)}, "t@example.com", True),
    ({"queue_names": ("t@example.com",)}, "example.com", False),
    # queue_names wins over the other criteria
    ({"queue_names": ("t@example.com",), "domain": "example.org"}, "t@example.com", True),
]


@pytest.mark.parametrize(("criteria", "queue", "expected"), MATCHES)
def test_bounce_matches_queue(criteria, queue, expected):
    """A bounce's criteria select exactly the queue names in the table."""
    assert matches_queue(bounce(**criteria), queue) is expected


@pytest.mark.parametrize(
    ("criteria", "queue", "expected"), [m for m in MATCHES if "routing_domain" not in m[0]]
)
def test_suspension_matches_queue_like_a_bounce(criteria, queue, expected):
    """Suspensions use the same criteria rules (without routing_domain)."""
    assert matches_queue(suspend(**criteria), queue) is expected


def test_criteria_record_matches_like_entries():
    """A bare Criteria (rebind) matches by the same rules."""
    assert matches_queue(Criteria(routing_domain="relay.example"), "x.com!relay.example")
    assert matches_queue(Criteria(), "anything")


# -- parsing -------------------------------------------------------------------------


def test_parse_bounce_defaults_to_five_minutes():
    """No duration or expires gives KumoMTA's 5 minute lifetime."""
    entry = parse_bounce({"domain": "example.com", "reason": "bad send"}, id="x", now=NOW)
    assert entry == BounceEntry(
        id="x", reason="bad send", created=NOW, expires=NOW + 300, domain="example.com"
    )


def test_parse_bounce_duration_and_queue_names():
    """duration is a humantime string; queue_names becomes a tuple."""
    entry = parse_bounce(
        {
            "queue_names": ["a.com", "t@b.com"],
            "reason": "r",
            "duration": "1h",
            "suppress_logging": True,
        },
        id="x",
        now=NOW,
    )
    assert entry.expires == NOW + 3600
    assert entry.queue_names == ("a.com", "t@b.com")
    assert entry.suppress_logging is True


def test_parse_expires_wins_over_duration():
    """An RFC 3339 expires sets the expiry (as KumoMTA, it wins over duration)."""
    entry = parse_suspend(
        {"reason": "r", "duration": "1m", "expires": "2027-01-15T09:00:00Z"}, id="x", now=NOW
    )  # NOW is 2027-01-15T08:00:00Z
    assert entry.expires == NOW + 3600


def test_parse_expires_in_the_past_clamps_to_now():
    """An expiry already past makes an entry that is immediately expired, not an error."""
    entry = parse_bounce({"reason": "r", "expires": "2000-01-01T00:00:00+00:00"}, id="x", now=NOW)
    assert entry.expires == NOW


def test_parse_expires_exact_timestamp():
    """expires is converted to unix seconds in UTC."""
    entry = parse_ready_suspend(
        {"name": "q", "reason": "r", "expires": "2030-01-01T01:00:00+01:00"}, id="x", now=NOW
    )
    assert entry.expires == 1_893_456_000.0


BAD_BODIES = [
    (parse_bounce, {"domain": "example.com"}, "reason"),
    (parse_bounce, {"reason": ""}, "reason"),
    (parse_bounce, {"reason": "r", "domian": "example.com"}, "domian"),
    (parse_bounce, {"reason": "r", "domain": ""}, "domain"),
    (parse_bounce, {"reason": "r", "tenant": 5}, "tenant"),
    (parse_bounce, {"reason": "r", "duration": "5 fortnights"}, "duration"),
    (parse_bounce, {"reason": "r", "duration": -1}, "duration"),
    (parse_bounce, {"reason": "r", "expires": "tomorrow"}, "expires"),
    (parse_bounce, {"reason": "r", "expires": "2030-01-01T00:00:00"}, "expires"),
    (parse_bounce, {"reason": "r", "queue_names": "a.com"}, "queue_names"),
    (parse_bounce, {"reason": "r", "suppress_logging": "yes"}, "suppress_logging"),
    (parse_suspend, {"reason": "r", "routing_domain": "x"}, "routing_domain"),
    (parse_ready_suspend, {"reason": "r"}, "name"),
    (parse_ready_suspend, {"name": "q"}, "reason"),
]


@pytest.mark.parametrize(("parse", "body", "field"), BAD_BODIES)
def test_parse_rejects_bad_fields_naming_them(parse, body, field):
    """Each malformed or unknown field is refused, naming the field."""
    with pytest.raises(AdminInputError) as err:
        parse(body, id="x", now=NOW)
    assert err.value.field == field


def test_parse_rejects_a_non_object():
    """A JSON array or string is not a request."""
    with pytest.raises(AdminInputError) as err:
        parse_bounce(["reason"], id="x", now=NOW)
    assert err.value.field is None


def test_parse_rebind():
    """A rebind has criteria, string meta data and a reason."""
    req = parse_rebind(
        {
            "domain": "example.com",
            "reason": "move",
            "data": {"queue": "x.com"},
            "trigger_rebind_event": True,
        }
    )
    assert req.criteria == Criteria(domain="example.com")
    assert req.data == {"queue": "x.com"}
    assert req.trigger_rebind_event is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reason": "r"}, "data"),
        ({"reason": "r", "data": {}}, "data"),
        ({"reason": "r", "data": {"k": 1}}, "data"),
        ({"data": {"k": "v"}}, "reason"),
        ({"reason": "r", "data": {"k": "v"}, "queue_names": ["a"]}, "queue_names"),
    ],
)
def test_parse_rebind_rejects(body, field):
    """Rebind needs non-empty string data and a reason; it takes no queue_names."""
    with pytest.raises(AdminInputError) as err:
        parse_rebind(body)
    assert err.value.field == field


# -- state ---------------------------------------------------------------------------


def test_state_add_list_cancel_each_kind():
    """Entries are listed in insertion order and cancelled by id."""
    state = AdminState()
    state.add_bounce(bounce("b1"))
    state.add_bounce(bounce("b2", domain="x.com"))
    state.add_suspension(suspend("s1"))
    state.add_ready_suspension(ReadyQSuspendEntry(id="r1", name="q", reason="r", expires=NOW + 60))
    assert [e.id for e in state.bounces(NOW)] == ["b1", "b2"]
    assert state.cancel_bounce("b1").id == "b1"
    assert [e.id for e in state.bounces(NOW)] == ["b2"]
    assert state.cancel_suspension("s1").id == "s1"
    assert state.suspensions(NOW) == []
    assert state.cancel_ready_suspension("r1").name == "q"
    assert state.ready_suspensions(NOW) == []


@pytest.mark.parametrize(
    "cancel", ["cancel_bounce", "cancel_suspension", "cancel_ready_suspension"]
)
def test_state_cancel_unknown_id_raises(cancel):
    """Cancelling an id that isn't there raises UnknownEntry."""
    with pytest.raises(UnknownEntry):
        getattr(AdminState(), cancel)("nope")


def test_state_prune_drops_only_expired_entries():
    """prune(now) removes entries whose expiry has come and returns them."""
    state = AdminState()
    state.add_bounce(bounce("old", expires=NOW))
    state.add_bounce(bounce("new", expires=NOW + 1))
    state.add_suspension(suspend("s-old", expires=NOW - 5))
    state.add_ready_suspension(ReadyQSuspendEntry(id="r", name="q", reason="r", expires=NOW + 9))
    gone = state.prune(NOW)
    assert sorted(e.id for e in gone) == ["old", "s-old"]
    assert [e.id for e in state.bounces(0)] == ["new"]
    assert state.suspensions(0) == []
    assert state.prune(NOW) == []


def test_state_lookups_ignore_expired_entries_without_prune():
    """Lookups at ``now`` skip expired entries even before a prune."""
    state = AdminState()
    state.add_bounce(bounce("b", expires=NOW + 10, domain="x.com"))
    assert state.bounce_for("x.com", NOW).id == "b"
    assert state.bounce_for("x.com", NOW + 10) is None
    assert state.bounce_for("y.com", NOW) is None


def test_state_lookup_returns_oldest_match():
    """When several entries match, the first added answers."""
    state = AdminState()
    state.add_suspension(suspend("first", domain="x.com"))
    state.add_suspension(suspend("everything"))
    assert state.suspension_for("t@x.com", NOW).id == "first"
    assert state.suspension_for("y.com", NOW).id == "everything"


def test_state_ready_suspension_is_by_exact_name():
    """A ready-queue suspension applies to that one ready queue name."""
    state = AdminState()
    state.add_ready_suspension(
        ReadyQSuspendEntry(id="r", name="ip-1->mx.x.com@smtp_client", reason="r", expires=NOW + 60)
    )
    assert state.ready_suspension_for("ip-1->mx.x.com@smtp_client", NOW).id == "r"
    assert state.ready_suspension_for("ip-2->mx.x.com@smtp_client", NOW) is None
    assert state.ready_suspension_for("ip-1->mx.x.com@smtp_client", NOW + 60) is None


def test_state_note_bounced_counts_per_queue():
    """Bounced counts accumulate per queue for a live bounce only."""
    state = AdminState()
    state.add_bounce(bounce("b"))
    state.note_bounced("b", "x.com", 2)
    state.note_bounced("b", "x.com")
    state.note_bounced("gone", "x.com")
    assert state.bounced_counts("b") == {"x.com": 3}
    assert state.bounced_counts("gone") == {}


# -- AdminApi with fakes -------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def make_api(clock: Clock, *, bounced=0, summary=None):
    calls: list[tuple] = []

    async def bounce_now(entry):
        calls.append(("bounce_now", entry))
        return bounced

    def rebind(criteria, data, reason, trigger):
        calls.append(("rebind", criteria, data, reason, trigger))
        return 1

    api = AdminApi(
        bounce_now=bounce_now,
        rebind=rebind,
        inspect_message=lambda id, body: None,
        inspect_sched_q=lambda name, body, limit: None,
        ready_q_states=lambda queues: {},
        queue_summary=lambda: summary or {"scheduled": [], "ready": []},
        clock=clock,
    )
    return api, calls


async def test_api_bounce_adds_entry_then_bounces_now():
    """A bounce is active for new mail and the node's bounce_now runs with it."""
    clock = Clock()
    api, calls = make_api(clock, bounced={"x.com": 4})
    answer = await api.bounce({"domain": "x.com", "reason": "oops"})
    assert answer == {"id": answer["id"], "bounced": {"x.com": 4}, "total_bounced": 4}
    assert calls[0][0] == "bounce_now" and calls[0][1].domain == "x.com"
    assert api.state.bounce_for("x.com", NOW).id == answer["id"]
    [listed] = api.list_bounces()
    assert listed["total_bounced"] == 4 and listed["duration"] == "5m"


async def test_api_bounce_count_as_int():
    """bounce_now may answer a plain count."""
    api, _ = make_api(Clock(), bounced=7)
    answer = await api.bounce({"reason": "all"})
    assert (answer["bounced"], answer["total_bounced"]) == ({}, 7)


async def test_api_lists_drop_expired_entries():
    """After its expiry an entry is neither listed nor cancellable."""
    clock = Clock()
    api, _ = make_api(clock)
    sid = api.suspend({"domain": "x.com", "reason": "r", "duration": "10s"})["id"]
    assert [e["id"] for e in api.list_suspensions()] == [sid]
    clock.now += 10
    assert api.list_suspensions() == []
    with pytest.raises(UnknownEntry):
        api.cancel_suspension({"id": sid})


async def test_api_queue_summary_marks_admin_suspensions():
    """queue_summary adds the suspension reason to matching queues."""
    summary = {
        "scheduled": [{"name": "x.com", "count": 2}, {"name": "y.com", "count": 1}],
        "ready": [{"name": "a->mx@smtp_client", "count": 1, "connections": 1}],
    }
    api, _ = make_api(Clock(), summary=summary)
    api.suspend({"domain": "x.com", "reason": "blocked"})
    api.suspend_ready_q({"name": "a->mx@smtp_client", "reason": "maint"})
    out = await api.queue_summary()
    assert [q["suspended"] for q in out["scheduled"]] == ["blocked", None]
    assert out["ready"][0]["suspended"] == "maint"


async def test_api_rebind_passes_parsed_request():
    """rebind hands criteria, data, reason and trigger to the node; answers {}."""
    api, calls = make_api(Clock())
    assert await api.rebind({"tenant": "t", "reason": "r", "data": {"k": "v"}}) == {}
    assert calls == [("rebind", Criteria(tenant="t"), {"k": "v"}, "r", False)]


# -- CLI formatting ------------------------------------------------------------------


def test_format_table_aligns_columns():
    """Text columns pad left-aligned, numeric ones right-aligned."""
    text = format_table(("NAME", "N"), [("a.com", 5), ("longer.example", 120)], (False, True))
    assert text.splitlines() == [
        "NAME              N",
        "a.com             5",
        "longer.example  120",
    ]


def test_format_summary_sorts_by_name_or_by_volume():
    """As kcli: queues by name, or the busiest first with by_volume."""
    summary = {"scheduled": [{"name": "a", "count": 1}, {"name": "b", "count": 9}], "ready": []}
    by_name = format_summary(summary).splitlines()
    assert "(no ready queues)" in by_name
    sched = by_name[by_name.index("") + 1 :]
    assert sched[1].startswith("a") and sched[2].startswith("b")
    by_volume = format_summary(summary, by_volume=True).splitlines()
    sched = by_volume[by_volume.index("") + 1 :]
    assert sched[1].startswith("b") and sched[2].startswith("a")
