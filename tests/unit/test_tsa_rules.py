"""TSA decisions by table: record parsing, rule matching, Threshold windows, planned
overlay entries, the KumoMTA-format exports, and the MTA-side Overlay."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
import tomli

from engine.config.throttle_spec import ThrottleSpec
from engine.policy.egress_options import apply_egress_options
from engine.policy.helpers.shaping_load import load_shaping
from engine.shaping.overlay import (
    READY,
    SCHEDULED,
    BounceRule,
    ConfigOverride,
    Overlay,
    Suspension,
    entry_from_json,
)
from tsa.exports import bounces_json, render_shaping_toml, suspensions_json, toml_value
from tsa.ingest import Ingestor
from tsa.metrics import TsaMetrics
from tsa.rules import RecordInvalid, evaluate, parse_record, reason_for, window_count
from tsa.shaping_file import ShapingFile

T0 = 1_800_000_000.0

SHAPING = r"""
["default"]
connection_limit = 10

[["default".automation]]
regex = '\[TS04\]'
action = "Suspend"
duration = "2h"

[["default".automation]]
regex = "RL0000"
action = {SetConfig = {name = "max_connection_rate", value = "10/h"}}
trigger = {Threshold = "3/min"}
duration = "1h"

[["default".automation]]
regex = "tenant-block"
action = ["SuspendTenant", "SuspendCampaign", "Bounce", "BounceTenant", "BounceCampaign"]
duration = "10m"

[["default".automation]]
regex = "loop-me"
match_internal = true
action = "Suspend"
duration = "1m"

[provider."bigmail"]
match = [{MXSuffix = ".bigmail.test"}]

[[provider."bigmail".automation]]
regex = "slow down"
action = {SetConfig = {name = "connection_limit", value = 1}}
duration = "30m"

["example.com"]
mx_rollup = false

[["example.com".automation]]
regex = "domain-only"
action = {SetDomainConfig = {name = "max_message_rate", value = "1/s"}}
duration = "5m"

["rollup.test"]

[["rollup.test".automation]]
regex = "site rule"
action = {SetConfig = {name = "max_message_rate", value = "2/s"}}
duration = "5m"
"""


@pytest.fixture
def shaping_path(tmp_path):
    path = tmp_path / "shaping.toml"
    path.write_text(SHAPING)
    return path


@pytest.fixture
def shaping(shaping_path):
    return load_shaping([shaping_path])


def record(
    text="421 4.7.0 [TS04] deferred",
    *,
    rid="r1",
    ts=T0,
    rcpt="u@example.net",
    site="ip-1->mx.example.net@smtp_client",
    queue="example.net",
    kind="TransientFailure",
    peer="mx1.example.net",
    source="ip-1",
):
    code, _, rest = text.partition(" ")
    enhanced = None
    parts = rest.split(" ", 1)
    if parts and parts[0].count(".") == 2 and parts[0][0].isdigit():
        c, s, d = parts[0].split(".")
        enhanced = {"class": int(c), "subject": int(s), "detail": int(d)}
        rest = parts[1] if len(parts) > 1 else ""
    return {
        "type": kind,
        "id": rid,
        "sender": "s@x.test",
        "recipient": rcpt,
        "queue": queue,
        "site": site,
        "size": 10,
        "timestamp": ts,
        "egress_source": source,
        "response": {
            "code": int(code),
            "enhanced_code": enhanced,
            "content": rest,
            "command": None,
        },
        "peer_address": {"name": peer, "addr": "192.0.2.1"} if peer else None,
    }


# --- record parsing -------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,field,expected",
    [
        ({}, "site", "mx.example.net"),
        ({}, "source", "ip-1"),
        ({"source": None}, "source", "ip-1"),
        ({"source": None, "site": "mx.example.net@smtp_client"}, "source", "unspecified"),
        ({"site": "mx_list:10.0.0.1@smtp_client"}, "site", "mx_list:10.0.0.1"),
        ({}, "response_line", "421 4.7.0 [TS04] deferred"),
        ({"text": "550 no such user"}, "response_line", "550 no such user"),
        (
            {"rcpt": ["a@B.example", "b@b.example", "c@other.test"]},
            "domains",
            ("b.example", "other.test"),
        ),
        ({"rcpt": "postmaster"}, "domains", ()),
        ({"peer": None}, "mx_hosts", ()),
        ({}, "mx_hosts", ("mx1.example.net",)),
        ({"ts": "2027-01-15T08:00:00Z"}, "timestamp", T0),
    ],
)
def test_parse_record_fields(overrides, field, expected):
    """parse_record reads the fields TSA uses from a KumoMTA-shaped record."""
    kwargs = dict(overrides)
    text = kwargs.pop("text", "421 4.7.0 [TS04] deferred")
    assert getattr(parse_record(record(text, **kwargs)), field) == expected


def test_parse_record_joins_multiline_content():
    """A response with line breaks is matched as one line."""
    rec = record()
    rec["response"]["content"] = "first line\r\nsecond\nthird"
    assert parse_record(rec).response_line == "421 4.7.0 first line second third"


@pytest.mark.parametrize(
    "mutate,fragment",
    [
        (lambda r: r.pop("type"), "type"),
        (lambda r: r.update(response="oops"), "response"),
        (lambda r: r.update(timestamp="yesterday"), "timestamp"),
        (lambda r: r.update(recipient=5), "recipient"),
        (lambda r: r["response"].update(enhanced_code={"class": 4}), "enhanced_code"),
    ],
)
def test_parse_record_rejects(mutate, fragment):
    """A record missing what TSA needs is RecordInvalid naming the field."""
    rec = record()
    mutate(rec)
    with pytest.raises(RecordInvalid, match=fragment):
        parse_record(rec)


def test_record_without_id_gets_a_content_hash():
    """Two identical id-less records get the same key, so they still dedupe."""
    a, b = record(), record()
    del a["id"], b["id"]
    assert parse_record(a).key == parse_record(b).key


# --- matching ------------------------------------------------------------------------


def _rules(shaping, rec, now=T0):
    return [m.rule.regexes[0].pattern for m in evaluate(shaping, parse_record(rec), now=now)]


@pytest.mark.parametrize(
    "text,rcpt,peer,expected",
    [
        ("421 4.7.0 [TS04] deferred", "u@example.net", None, [r"\[TS04\]"]),
        ("250 2.0.0 ok", "u@example.net", None, []),
        ("421 4.7.0 RL0000 slow", "u@example.net", None, ["RL0000"]),
        ("421 slow down please", "u@x.test", "mx3.bigmail.test.", ["slow down"]),
        ("421 slow down please", "u@x.test", "mx.other.test", []),
        ("451 domain-only", "u@example.com", None, ["domain-only"]),
        ("451 domain-only", "u@example.org", None, []),
        ("451 site rule", "u@rollup.test", None, ["site rule"]),
        ("451 4.4.1 Nimbus internal: [TS04] suspended", "u@example.net", None, []),
        ("451 KumoMTA internal: [TS04] suspended", "u@example.net", None, []),
        ("451 4.4.1 Nimbus internal: loop-me", "u@example.net", None, ["loop-me"]),
    ],
)
def test_rule_matching(shaping, text, rcpt, peer, expected):
    """Rules match the single response line; internal replies only with match_internal."""
    assert _rules(shaping, record(text, rcpt=rcpt, peer=peer)) == expected


@pytest.mark.parametrize("kind", ["Reception", "Delayed", "Rejection", "AdminRebind"])
def test_ignored_record_types(shaping, kind):
    """Record types KumoMTA never ships to TSA match nothing."""
    assert _rules(shaping, record(kind=kind)) == []


@pytest.mark.parametrize("age,matches", [(0, 1), (7199, 1), (7200, 0), (10_000, 0)])
def test_expired_record_is_ignored(shaping, age, matches):
    """A record whose timestamp + duration (2h) is already past matches nothing."""
    assert len(_rules(shaping, record(), now=T0 + age)) == matches


def test_event_time_gives_the_expiry_its_sub_second_precision(shaping):
    """With event_time present the expiry counts from it, not from the whole-second timestamp
    (which would end the action up to a second early)."""
    from engine.records import rfc3339

    rec = {**record(ts=int(T0)), "event_time": rfc3339(int(T0) + 0.75)}
    (entry,) = _entries(shaping, rec)
    (plain,) = _entries(shaping, record(ts=int(T0)))
    assert entry.expires - plain.expires == 0.75


# --- planned entries -----------------------------------------------------------------


def _entries(shaping, rec, now=T0):
    return [e for m in evaluate(shaping, parse_record(rec), now=now) for e in m.entries]


def test_suspend_entry_for_the_ready_queue(shaping):
    """Suspend suspends (source, site) until record timestamp + duration."""
    (entry,) = _entries(shaping, record())
    assert isinstance(entry, Suspension) and entry.scope == READY
    assert (entry.source, entry.site, entry.queue) == (
        "ip-1",
        "mx.example.net",
        "ip-1->mx.example.net@smtp_client",
    )
    assert entry.expires == T0 + 7200
    assert entry.reason == r"automation rule: \[TS04\]"


def test_action_ids_are_stable(shaping):
    """The same rule, action and scope give the same id, whatever record triggered it."""
    a = _entries(shaping, record(rid="a", ts=T0))[0]
    b = _entries(shaping, record(rid="b", ts=T0 + 60, rcpt="z@example.net"))[0]
    c = _entries(shaping, record(site="ip-2->mx.example.net@smtp_client", source="ip-2"))[0]
    d = _entries(shaping, record(site="ip-1->mx.other.test@smtp_client"))[0]
    assert a.id == b.id and b.expires > a.expires
    assert len({a.id, c.id, d.id}) == 3


@pytest.mark.parametrize(
    "queue,expected",
    [
        ("example.net", [("SchedQBounce", "example.net", None, None)]),
        (
            "acme@example.net",
            [
                ("SchedQSuspension", "example.net", "acme", None),
                ("SchedQBounce", "example.net", "acme", None),
            ],
        ),
        (
            "spring:acme@example.net",
            [
                ("SchedQSuspension", "example.net", "acme", None),
                ("SchedQSuspension", "example.net", "acme", "spring"),
                ("SchedQBounce", "example.net", "acme", None),
                ("SchedQBounce", "example.net", "acme", "spring"),
            ],
        ),
    ],
)
def test_tenant_and_campaign_actions(shaping, queue, expected):
    """Tenant/campaign actions use the queue name; without a tenant they do nothing."""
    entries = _entries(shaping, record("451 tenant-block", queue=queue))
    got = sorted(
        {(e.kind, e.domain, e.tenant, e.campaign) for e in entries},
        key=lambda t: (t[0], t[3] or ""),
    )
    assert got == sorted(expected, key=lambda t: (t[0], t[3] or ""))


@pytest.mark.parametrize(
    "text,rcpt,peer,rollup,domain,site",
    [
        ("421 RL0000", "u@example.net", None, True, "example.net", "mx.example.net"),
        ("421 slow down", "u@x.test", "a.bigmail.test", False, "x.test", "mx.example.net"),
        ("451 domain-only", "u@example.com", None, False, "example.com", "mx.example.net"),
        ("451 site rule", "u@rollup.test", None, True, "rollup.test", "mx.example.net"),
    ],
)
def test_config_override_scope(shaping, text, rcpt, peer, rollup, domain, site):
    """Default and site rules override the site (mx_rollup); provider/domain rules the domain."""
    (entry,) = _entries(shaping, record(text, rcpt=rcpt, peer=peer))
    assert isinstance(entry, ConfigOverride)
    assert (entry.mx_rollup, entry.domain, entry.site, entry.source) == (
        rollup,
        domain,
        site,
        "ip-1",
    )


# --- Threshold windows ---------------------------------------------------------------


@pytest.mark.parametrize(
    "scores,ts,period,count",
    [
        ([0, 10, 20], 20, 60, 3),
        ([0, 30, 60], 60, 60, 2),  # (0, 60]: the sample at 0 is a full period old
        ([0, 30, 59], 59, 60, 3),
        ([0, 100, 200], 200, 60, 1),
        ([50, 10, 30], 30, 60, 2),  # out of order: a sample newer than ts is not counted
    ],
)
def test_window_count(scores, ts, period, count):
    """A window counts the samples in (ts - period, ts]."""
    assert window_count(scores, ts=ts, period=period) == count


class FakeState:
    """TsaState's contract in memory (tsa.state does the same with Lua in Redis)."""

    def __init__(self):
        self.seen, self.windows, self.entries = set(), {}, {}

    async def mark_seen(self, key):
        new = key not in self.seen
        self.seen.add(key)
        return new

    async def unmark_seen(self, key):
        self.seen.discard(key)

    async def count(self, window, *, member, ts, period, hold, now):
        samples = {m: s for m, s in self.windows.get(window, {}).items() if s >= now - hold}
        samples[member] = ts
        self.windows[window] = samples
        return window_count(samples.values(), ts=ts, period=period)

    async def upsert(self, entries, force=False):
        written = 0
        for e in entries:
            if force or e.id not in self.entries or self.entries[e.id].expires < e.expires:
                self.entries[e.id] = e
                written += 1
        return written

    async def add_stats(self, **counts):
        pass


@pytest.fixture
def ingest(shaping_path):
    state = FakeState()
    clock = {"now": T0}
    ingestor = Ingestor(
        state, ShapingFile(shaping_path), TsaMetrics(), clock=lambda: clock["now"], timeout=1.0
    )

    async def run(records, now):
        clock["now"] = now
        return await ingestor.ingest(records)

    run.state = state
    return run


@pytest.mark.parametrize(
    "offsets,fires",
    [
        ([0, 10, 20], True),  # 3 within a minute
        ([0, 30, 59], True),
        ([0, 30, 61], False),  # spread beyond the period
        ([0, 1000, 2000], False),  # within the 1h duration: KumoMTA would fire here
        ([0, 0, 0], False),  # one record published three times counts once
    ],
)
async def test_threshold_3_per_minute(ingest, offsets, fires):
    """Threshold "3/min" fires when 3 matching records fall within one minute."""
    for i, off in enumerate(offsets):
        rid = "same" if offsets == [0, 0, 0] else f"r{i}"
        await ingest([record("421 RL0000", rid=rid, ts=T0 + off)], now=T0 + off)
    assert bool(ingest.state.entries) is fires


async def test_threshold_fire_expires_from_the_triggering_record(ingest):
    """The override lasts rule duration (1h) from the record that reached the threshold."""
    for off in (0, 5, 9):
        await ingest([record("421 RL0000", rid=f"r{off}", ts=T0 + off)], now=T0 + 9)
    (entry,) = ingest.state.entries.values()
    assert entry.expires == T0 + 9 + 3600 and entry.name == "max_connection_rate"


async def test_ingest_counts(ingest):
    """A batch reports matched, unmatched, ignored, duplicate and invalid records."""
    batch = [
        record(rid="a"),
        record("250 ok", rid="b"),
        record(kind="Reception", rid="c"),
        record(rid="a"),
        {"type": "Bounce"},
    ]
    counts = await ingest(batch, now=T0)
    assert (
        counts.matched,
        counts.unmatched,
        counts.ignored,
        counts.duplicates,
        counts.invalid,
        counts.entries_written,
    ) == (1, 1, 1, 1, 1, 1)
    assert counts.errors[0]["index"] == 4


# --- exports -------------------------------------------------------------------------


def _override(
    ident,
    *,
    domain="example.net",
    source="ip-1",
    name="max_message_rate",
    value="1/minute",
    expires=T0 + 60,
    rollup=True,
    reason="automation rule: x",
):
    return ConfigOverride(
        id=ident,
        domain=domain,
        site="mx.example.net",
        source=source,
        mx_rollup=rollup,
        name=name,
        value=value,
        expires=expires,
        reason=reason,
    )


def test_overlay_toml_format(tmp_path):
    """The SetConfig overlay renders as KumoMTA's shaping.toml overlay and loads back."""
    entries = [
        _override("a"),
        _override("b", name="connection_limit", value=1),
        _override("c", domain="x.test", rollup=False, source="ip-2", value="5/s", expires=T0 + 30),
        _override("old", expires=T0 - 1),
    ]
    text = render_shaping_toml(entries, T0)
    assert text.startswith("# Generated by nimbus tsa\n# Number of entries: 3\n")
    assert (
        "# reason: automation rule: x\n# expires: 2027-01-15T08:01:00.000000Z\n"
        'max_message_rate = "1/minute"' in text
    )
    assert tomli.loads(text) == {
        "x.test": {"mx_rollup": False, "sources": {"ip-2": {"max_message_rate": "5/s"}}},
        "example.net": {
            "mx_rollup": True,
            "sources": {"ip-1": {"max_message_rate": "1/minute", "connection_limit": 1}},
        },
    }
    path = tmp_path / "overlay.toml"
    path.write_text(text)
    loaded = load_shaping([path])
    assert loaded.domains["x.test"].sources["ip-2"]["max_message_rate"] == ThrottleSpec.parse("5/s")


def test_overlay_toml_override_for_every_source():
    """An override without a source goes in the domain block itself."""
    text = render_shaping_toml([dataclasses.replace(_override("a", rollup=False), source=None)], T0)
    assert tomli.loads(text) == {
        "example.net": {"mx_rollup": False, "max_message_rate": "1/minute"}
    }


def test_overlay_toml_later_value_wins():
    """Two overrides of one option: the one expiring last is written."""
    text = render_shaping_toml(
        [
            _override("a", value="1/s", expires=T0 + 90),
            _override("b", value="2/s", expires=T0 + 30),
        ],
        T0,
    )
    assert tomli.loads(text)["example.net"]["sources"]["ip-1"]["max_message_rate"] == "1/s"


@pytest.mark.parametrize(
    "value,text",
    [
        (True, "true"),
        (3, "3"),
        (1.5, "1.5"),
        ('a"b', '"a\\"b"'),
        ([1, "x"], '[1, "x"]'),
        ({"k": 1}, '{"k" = 1}'),
    ],
)
def test_toml_value(value, text):
    """Values are written in TOML's inline forms."""
    assert toml_value(value) == text


def test_suspension_and_bounce_json():
    """suspended.json and bounced.json have KumoMTA's fields, only live entries."""
    entries = [
        Suspension(
            id="r",
            scope=READY,
            source="ip-1",
            site="mx.x",
            queue="ip-1->mx.x@smtp_client",
            reason="why",
            expires=T0 + 60,
        ),
        Suspension(
            id="s", scope=SCHEDULED, domain="x.test", tenant="acme", reason="why", expires=T0 + 60
        ),
        Suspension(id="gone", scope=READY, source="ip-1", site="mx.y", expires=T0),
        BounceRule(id="b", domain="x.test", reason="why", expires=T0 + 60),
    ]
    assert suspensions_json(entries, T0) == {
        "ready_q": [
            {
                "rule_hash": "r",
                "site_name": "ip-1->mx.x@smtp_client",
                "reason": "why",
                "source": "ip-1",
                "expires": "2027-01-15T08:01:00.000000Z",
            }
        ],
        "sched_q": [
            {
                "rule_hash": "s",
                "tenant": "acme",
                "domain": "x.test",
                "campaign": None,
                "reason": "why",
                "expires": "2027-01-15T08:01:00.000000Z",
            }
        ],
    }
    assert bounces_json(entries, T0) == [
        {
            "rule_hash": "b",
            "domain": "x.test",
            "tenant": None,
            "campaign": None,
            "reason": "why",
            "expires": "2027-01-15T08:01:00.000000Z",
        }
    ]


def test_reason_lists_every_regex(shaping):
    """Several regexes are shown as KumoMTA does: (a,b)."""
    rule = dataclasses.replace(
        shaping.default.automation[0], regexes=shaping.default.automation[0].regexes * 2
    )
    assert reason_for(rule) == r"automation rule: (\[TS04\],\[TS04\])"


# --- Overlay (MTA side) --------------------------------------------------------------


def _ready(ident, *, source="ip-1", site="mx.x", expires=T0 + 60, origin="tsa"):
    return Suspension(
        id=ident, scope=READY, source=source, site=site, expires=expires, origin=origin
    )


@pytest.mark.parametrize(
    "source,site,now,expected",
    [
        ("ip-1", "mx.x", T0, "long"),
        ("ip-1", "mx.x", T0 + 100, "long"),
        ("ip-1", "mx.x", T0 + 120, None),
        ("ip-2", "mx.x", T0, "any-source"),
        ("ip-2", "mx.y", T0, None),
    ],
)
def test_ready_suspension_lookup(source, site, now, expected):
    """The longest-lasting live suspension of (source, site); None matches any source."""
    overlay = Overlay(
        [
            _ready("short"),
            _ready("long", expires=T0 + 120),
            _ready("any-source", source=None, expires=T0 + 10),
        ]
    )
    found = overlay.ready_suspension(source, site, now)
    assert (found.id if found else None) == expected


@pytest.mark.parametrize(
    "tenant,campaign,expected",
    [
        ("acme", None, "tenant"),
        ("acme", "spring", "campaign"),
        ("other", "spring", None),
        (None, None, None),
    ],
)
def test_sched_suspension_lookup(tenant, campaign, expected):
    """A tenant suspension covers all its campaigns; a campaign one only that campaign."""
    overlay = Overlay(
        [
            Suspension(
                id="tenant", scope=SCHEDULED, domain="x.test", tenant="acme", expires=T0 + 10
            ),
            Suspension(
                id="campaign",
                scope=SCHEDULED,
                domain="x.test",
                tenant="acme",
                campaign="spring",
                expires=T0 + 20,
            ),
        ]
    )
    found = overlay.sched_suspension("x.test", tenant, campaign, T0)
    assert (found.id if found else None) == expected


def test_bounce_rule_lookup():
    """A domain-wide bounce rule covers every tenant and campaign until it expires."""
    overlay = Overlay([BounceRule(id="b", domain="x.test", expires=T0 + 10)])
    assert overlay.bounce_rule("x.test", "acme", "c", T0).id == "b"
    assert overlay.bounce_rule("y.test", None, None, T0) is None
    assert overlay.bounce_rule("x.test", None, None, T0 + 10) is None


def test_config_overrides_apply_site_then_domain():
    """Site overrides apply before domain ones; the result applies to an EgressPathConfig."""
    overlay = Overlay(
        [
            _override("site-rate", value="1/minute"),
            _override("dom-rate", rollup=False, value="5/s"),
            _override("site-limit", name="connection_limit", value=2),
            _override("other-source", source="ip-9", name="connection_limit", value=7),
        ]
    )
    got = overlay.config_overrides("example.net", "mx.example.net", "ip-1", T0)
    assert got == {
        "max_message_rate": ThrottleSpec.parse("5/s"),
        "connection_limit": got["connection_limit"],
    }
    config = apply_egress_options(got)
    assert config.connection_limit == 2
    assert overlay.config_overrides("example.net", "mx.example.net", "ip-1", T0 + 60) == {}


def test_overlay_changes_and_expiry():
    """upsert replaces by id, remove drops, prune forgets expired, replace_all keeps admin."""
    overlay = Overlay()
    overlay.upsert(_ready("a"))
    overlay.upsert(_ready("a", expires=T0 + 500))
    overlay.upsert(_ready("admin", origin="admin", site="mx.z"))
    assert len(overlay) == 2 and overlay.get("a").expires == T0 + 500
    overlay.replace_all([_ready("b", site="mx.q")])
    assert {e.id for e in overlay.entries()} == {"admin", "b"}
    assert overlay.remove("b") and not overlay.remove("b")
    assert overlay.prune(T0 + 60) == 1 and len(overlay) == 0


@pytest.mark.parametrize(
    "entry",
    [
        _ready("a"),
        Suspension(id="s", scope=SCHEDULED, domain="x", tenant="t", campaign="c", expires=T0),
        BounceRule(id="b", domain="x", expires=T0, origin="admin"),
        _override("c"),
    ],
)
def test_entry_json_round_trip(entry):
    """Every entry kind survives to_json / entry_from_json."""
    assert entry_from_json(entry.to_json()) == entry


@pytest.mark.parametrize(
    "obj,fragment",
    [
        ({"kind": "Nope", "id": "x", "expires": 1}, "kind"),
        ({"kind": "SchedQBounce", "expires": 1}, "id"),
        ({"kind": "SchedQBounce", "id": "x", "expires": "soon"}, "expires"),
        ({"kind": "SchedQBounce", "id": "x", "expires": 1, "origin": "me"}, "origin"),
        (
            {
                "kind": "ConfigOverride",
                "id": "x",
                "expires": 1,
                "domain": "d",
                "name": "bogus",
                "value": 1,
            },
            "bogus",
        ),
    ],
)
def test_entry_from_json_rejects(obj, fragment):
    """A malformed entry is a ValueError naming what is wrong."""
    with pytest.raises(ValueError, match=fragment):
        entry_from_json(obj)


async def test_shaping_file_keeps_last_good(shaping_path):
    """A broken edit keeps the previous rules and reports the error."""
    source = ShapingFile(shaping_path)
    before = source.rule_count
    shaping_path.write_text(
        textwrap.dedent("""
        [["default".automation]]
        regex = "x"
        action = "Explode"
        duration = "1m"
    """)
    )
    assert await source.check() is False
    assert source.rule_count == before and "Explode" in source.error
