"""IP warm-up: schedule arithmetic (pure, tables), the sources.toml ``warmup`` table, the
window counters of the embedded store (restart kept), and routing's overflow."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, cast

import pytest

from engine.config.settings import ConfigError, Settings
from engine.config.throttle_spec import ThrottleSpec
from engine.policy.egress import EgressPathConfig, EgressPool, EgressSource
from engine.policy.events import GET_EGRESS_PATH_CONFIG, GET_EGRESS_POOL, GET_EGRESS_SOURCE
from engine.policy.helpers.sources import SourcesHelper
from engine.policy.warmup import (
    DEFAULT_COUNTER,
    WarmupSchedule,
    WindowKind,
    grown_volumes,
    window_for,
)
from engine.queues.naming import QueueName
from engine.queues.routing import Router
from engine.records import Message
from engine.shaping.gate import Gate
from engine.shaping.throttle.embedded import EmbeddedStore
from engine.shaping.warmup import WarmupCounters
from tests.support.fakes import FakeConnector, FakeOutcomes


def ts(text: str) -> float:
    """An RFC 3339 instant ('2025-06-02T04:00:00Z') as unix seconds."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def sched(**kw) -> WarmupSchedule:
    kw.setdefault("source", "ip-2")
    kw.setdefault("start", dt.date(2025, 6, 2))
    kw.setdefault("volumes", (10, 20, 30))
    return WarmupSchedule(**kw)


UTC_DAYS = sched()
NEW_YORK = sched(timezone="America/New_York")
NEW_YORK_HOURS = sched(timezone="America/New_York", window=WindowKind.HOUR,
                       start=dt.date(2025, 3, 1), volumes=(1,) * 400)  # fmt: skip
KOLKATA_HOURS = sched(timezone="Asia/Kolkata", window=WindowKind.HOUR)
PROVIDERS = sched(providers={"google": (1, 2)})
ONLY_GOOGLE = sched(volumes=None, providers={"google": (5,)})


# fmt: off
@pytest.mark.parametrize(
    ("schedule", "provider", "now", "day", "allowed", "state", "start", "end"),
    [
        # UTC days: the day before the start sends nothing; day n gets volumes[n-1]
        (UTC_DAYS, None, "2025-06-01T23:59:59Z", 0, 0, "before_start", "2025-06-01T00:00:00Z", "2025-06-02T00:00:00Z"),
        (UTC_DAYS, None, "2025-05-20T12:00:00Z", -12, 0, "before_start", "2025-05-20T00:00:00Z", "2025-06-02T00:00:00Z"),
        (UTC_DAYS, None, "2025-06-02T00:00:00Z", 1, 10, "warming", "2025-06-02T00:00:00Z", "2025-06-03T00:00:00Z"),
        (UTC_DAYS, None, "2025-06-02T23:59:59Z", 1, 10, "warming", "2025-06-02T00:00:00Z", "2025-06-03T00:00:00Z"),
        (UTC_DAYS, None, "2025-06-03T00:00:00Z", 2, 20, "warming", "2025-06-03T00:00:00Z", "2025-06-04T00:00:00Z"),
        (UTC_DAYS, None, "2025-06-04T18:00:00Z", 3, 30, "warming", "2025-06-04T00:00:00Z", "2025-06-05T00:00:00Z"),
        # after the last day: no limit
        (UTC_DAYS, None, "2025-06-05T00:00:00Z", 4, None, "done", "2025-06-05T00:00:00Z", "2025-06-06T00:00:00Z"),
        (UTC_DAYS, None, "2026-01-01T00:00:00Z", 214, None, "done", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
        # New York (UTC-4 in June): days turn at 04:00 UTC
        (NEW_YORK, None, "2025-06-02T03:59:59Z", 0, 0, "before_start", "2025-06-01T04:00:00Z", "2025-06-02T04:00:00Z"),
        (NEW_YORK, None, "2025-06-02T04:00:00Z", 1, 10, "warming", "2025-06-02T04:00:00Z", "2025-06-03T04:00:00Z"),
        (NEW_YORK, None, "2025-06-03T03:00:00Z", 1, 10, "warming", "2025-06-02T04:00:00Z", "2025-06-03T04:00:00Z"),
        # Kolkata (UTC+5:30), hourly: local hours start at :30 UTC; the date is local
        (KOLKATA_HOURS, None, "2025-06-02T00:10:00Z", 1, 10, "warming", "2025-06-01T23:30:00Z", "2025-06-02T00:30:00Z"),
        (KOLKATA_HOURS, None, "2025-06-01T18:29:59Z", 0, 0, "before_start", "2025-06-01T17:30:00Z", "2025-06-01T18:30:00Z"),
        (KOLKATA_HOURS, None, "2025-06-01T18:30:00Z", 1, 10, "warming", "2025-06-01T18:30:00Z", "2025-06-01T19:30:00Z"),
        # provider overrides: own volumes and counter; others use the source's volumes
        (PROVIDERS, "google", "2025-06-02T10:00:00Z", 1, 1, "warming", "2025-06-02T00:00:00Z", "2025-06-03T00:00:00Z"),
        (PROVIDERS, "yahoo", "2025-06-02T10:00:00Z", 1, 10, "warming", "2025-06-02T00:00:00Z", "2025-06-03T00:00:00Z"),
        (PROVIDERS, None, "2025-06-03T10:00:00Z", 2, 20, "warming", "2025-06-03T00:00:00Z", "2025-06-04T00:00:00Z"),
        (PROVIDERS, "google", "2025-06-04T10:00:00Z", 3, None, "done", "2025-06-04T00:00:00Z", "2025-06-05T00:00:00Z"),
        (PROVIDERS, "google", "2025-06-01T10:00:00Z", 0, 0, "before_start", "2025-06-01T00:00:00Z", "2025-06-02T00:00:00Z"),
        # a schedule for one provider only leaves other mail unlimited
        (ONLY_GOOGLE, "google", "2025-06-02T10:00:00Z", 1, 5, "warming", "2025-06-02T00:00:00Z", "2025-06-03T00:00:00Z"),
        (ONLY_GOOGLE, None, "2025-06-02T10:00:00Z", 1, None, "done", "2025-06-02T00:00:00Z", "2025-06-03T00:00:00Z"),
    ],
)
# fmt: on
def test_window_for(schedule, provider, now, day, allowed, state, start, end):
    """Day number, allowance, state and window bounds for one instant."""
    w = window_for(schedule, provider, ts(now))
    assert (w.day, w.allowed, w.state) == (day, allowed, state)
    assert (w.start, w.end) == (ts(start), ts(end))
    assert w.counter == (provider if provider in schedule.providers else DEFAULT_COUNTER)


@pytest.mark.parametrize(
    ("now", "start", "end", "hours"),
    [
        # spring forward (2025-03-09): the local day has 23 hours
        ("2025-03-09T12:00:00Z", "2025-03-09T05:00:00Z", "2025-03-10T04:00:00Z", 23),
        # fall back (2025-11-02): 25 hours
        ("2025-11-02T12:00:00Z", "2025-11-02T04:00:00Z", "2025-11-03T05:00:00Z", 25),
        ("2025-11-01T12:00:00Z", "2025-11-01T04:00:00Z", "2025-11-02T04:00:00Z", 24),
    ],
)
def test_day_window_across_dst(now, start, end, hours):
    """A day window runs local midnight to local midnight: 23 or 25 hours on DST days."""
    w = window_for(sched(timezone="America/New_York", start=dt.date(2025, 1, 1),
                         volumes=(5,) * 400), None, ts(now))  # fmt: skip
    assert (w.start, w.end) == (ts(start), ts(end))
    assert w.end - w.start == hours * 3600


@pytest.mark.parametrize(
    ("now", "start"),
    [
        ("2025-03-09T06:59:59Z", "2025-03-09T06:00:00Z"),  # 01:59 EST
        ("2025-03-09T07:00:00Z", "2025-03-09T07:00:00Z"),  # 03:00 EDT (02:00 never happens)
        ("2025-11-02T05:30:00Z", "2025-11-02T05:00:00Z"),  # 01:30 EDT
        ("2025-11-02T06:30:00Z", "2025-11-02T06:00:00Z"),  # 01:30 EST: the repeated hour
    ],
)
def test_hour_windows_across_dst(now, start):
    """Hour windows follow local hours; the repeated hour at fall back is a window of its own."""
    w = window_for(NEW_YORK_HOURS, None, ts(now))
    assert (w.start, w.end) == (ts(start), ts(start) + 3600)


def test_day_counts_local_dates_across_dst():
    """The day number advances at local midnight, DST or not."""
    s = sched(timezone="America/New_York", start=dt.date(2025, 11, 1), volumes=(1, 2, 3))
    assert window_for(s, None, ts("2025-11-02T04:59:59Z")).day == 2  # 00:59:59 EDT Nov 2
    assert window_for(s, None, ts("2025-11-02T03:59:59Z")).day == 1  # 23:59:59 EDT Nov 1
    assert window_for(s, None, ts("2025-11-03T04:59:59Z")).day == 2  # 23:59:59 EST Nov 2
    assert window_for(s, None, ts("2025-11-03T05:00:00Z")).day == 3


@pytest.mark.parametrize(
    ("initial", "growth", "days", "volumes"),
    [
        (100, 1.5, 4, (100, 150, 225, 338)),
        (50, 1, 3, (50, 50, 50)),
        (1, 2, 5, (1, 2, 4, 8, 16)),
        (7, 1.1, 1, (7,)),
    ],
)
def test_grown_volumes(initial, growth, days, volumes):
    """initial * growth^(n-1), rounded half up."""
    assert grown_volumes(initial, growth, days) == volumes


# -- the sources.toml table ---------------------------------------------------------


def load(tmp_path, text: str) -> SourcesHelper:
    path = tmp_path / "sources.toml"
    path.write_text(text)
    return SourcesHelper.load(path)


def test_warmup_table_parses(tmp_path):
    """A warm-up table with provider overrides becomes one WarmupSchedule per source."""
    helper = load(
        tmp_path,
        """
        [source."ip-1"]
        [source."ip-2"]
        source_address = "10.0.0.2"
        [source."ip-2".warmup]
        start = 2025-06-02
        timezone = "Europe/Paris"
        window = "hour"
        volumes = [10, 20]
        [source."ip-2".warmup.provider.google]
        initial = 2
        growth = 2
        days = 3
        """,
    )
    assert list(helper.warmup) == ["ip-2"]
    s = helper.warmup["ip-2"]
    assert (s.start, s.timezone, s.window, s.volumes) == (
        dt.date(2025, 6, 2), "Europe/Paris", WindowKind.HOUR, (10, 20),
    )  # fmt: skip
    assert dict(s.providers) == {"google": (2, 4, 8)}
    assert helper.source("ip-2") == EgressSource(name="ip-2", source_address="10.0.0.2")


def test_warmup_start_may_be_a_string(tmp_path):
    """start = "2025-06-02" (as JSON files must write it) is a date too."""
    helper = load(tmp_path, '[source.a.warmup]\nstart = "2025-06-02"\nvolumes = [1]\n')
    assert helper.warmup["a"].start == dt.date(2025, 6, 2)
    assert helper.warmup["a"].timezone == "UTC" and helper.warmup["a"].window == WindowKind.DAY


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("start = 2025-06-02\nvolumes = [1]\nramp = 2", "[source.a.warmup] ramp: unknown key"),
        ("volumes = [1]", "[source.a.warmup] start: required"),
        ("start = 2025-06-02", "[source.a.warmup] volumes: required"),
        ("start = 2025-06-02T10:00:00\nvolumes = [1]", "[source.a.warmup] start: expected a date"),
        ("start = 'June'\nvolumes = [1]", "[source.a.warmup] start: expected a date"),
        ("start = 2025-06-02\ntimezone = 'Mars/Olympus'\nvolumes = [1]", "timezone: unknown time zone"),
        ("start = 2025-06-02\nwindow = 'week'\nvolumes = [1]", "window: expected 'day' or 'hour'"),
        ("start = 2025-06-02\nvolumes = []", "volumes: expected a list of 1 to"),
        ("start = 2025-06-02\nvolumes = [1, -2]", "volumes: expected an integer >= 0"),
        ("start = 2025-06-02\nvolumes = [1, true]", "volumes: expected an integer >= 0"),
        ("start = 2025-06-02\nvolumes = [1]\ninitial = 5", "initial: give either volumes or"),
        ("start = 2025-06-02\ninitial = 5\ngrowth = 2", "days: required with initial, growth"),
        ("start = 2025-06-02\ninitial = 0\ngrowth = 2\ndays = 3", "initial: expected an integer >= 1"),
        ("start = 2025-06-02\ninitial = 5\ngrowth = 0.5\ndays = 3", "growth: expected a number from 1"),
        ("start = 2025-06-02\ninitial = 5\ngrowth = 2\ndays = 0", "days: expected an integer from 1"),
        ("start = 2025-06-02\nvolumes = [1]\n[source.a.warmup.provider.google]\nvolume = [1]",
         "[source.a.warmup.provider.google] volume: unknown key"),
        ("start = 2025-06-02\n[source.a.warmup.provider.google]\nwindow = 'hour'",
         "[source.a.warmup.provider.google] window: unknown key"),
        ("start = 2025-06-02\n[source.a.warmup.provider.google]", "provider.google] volumes: required"),
    ],
)
def test_warmup_table_errors_name_file_table_and_key(tmp_path, body, error):
    """Every refusal names the file, the table and the key."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "[source.a.warmup]\n" + body + "\n")
    message = str(info.value)
    assert message.startswith(str(tmp_path / "sources.toml") + ": ")
    assert error in message


def test_warmup_is_a_known_source_key(tmp_path):
    """A misspelled source key lists warmup among the known ones."""
    with pytest.raises(ConfigError, match="warmp: unknown key .*warmup"):
        load(tmp_path, "[source.a.warmp]\nstart = 2025-06-02\n")


def test_warmup_provider_must_exist_in_shaping(tmp_path):
    """validate_providers refuses a provider table shaping.toml does not define."""
    helper = load(
        tmp_path,
        "[source.a.warmup]\nstart = 2025-06-02\n[source.a.warmup.provider.gmail]\nvolumes = [1]\n",
    )
    helper.validate_providers(["gmail", "yahoo"])
    with pytest.raises(ConfigError, match=r"\[source.a.warmup.provider.gmail\]: no such provider"):
        helper.validate_providers(["google"])


# -- counters -------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_counter_allows_the_allowance_then_says_how_long_to_wait():
    """Three of an allowance of three go; the fourth waits until the window ends."""
    clock = Clock(ts("2025-06-02T23:00:00Z"))
    counters = WarmupCounters(EmbeddedStore(), "t:", clock=clock)
    s = sched(volumes=(3, 5))
    assert [await counters.take(s, None) for _ in range(3)] == [None, None, None]
    assert await counters.take(s, None) == pytest.approx(3600)
    assert counters.overflow[("ip-2", DEFAULT_COUNTER)] == 1
    clock.now = ts("2025-06-03T00:00:00Z")  # day 2: a new window of 5
    assert [await counters.take(s, None) for _ in range(6)].count(None) == 5


async def test_counter_per_provider_and_before_start():
    """Provider mail draws from its own counter; before the start nothing is counted."""
    store = EmbeddedStore()
    clock = Clock(ts("2025-06-01T12:00:00Z"))
    counters = WarmupCounters(store, "t:", clock=clock)
    s = sched(volumes=(2,), providers={"google": (1,)})
    assert await counters.take(s, "google") == pytest.approx(12 * 3600)
    clock.now = ts("2025-06-02T12:00:00Z")
    assert await counters.take(s, "google") is None
    assert await counters.take(s, "google") is not None
    assert [await counters.take(s, "yahoo"), await counters.take(s, None)] == [None, None]
    assert await counters.take(s, None) is not None
    status = await counters.status({"ip-2": s})
    assert [(c["provider"], c["used"], c["allowed"]) for c in status[0]["counters"]] == [
        (None, 2, 2),
        ("google", 1, 1),
    ]
    assert (status[0]["day"], status[0]["state"], status[0]["days"]) == (1, "warming", 1)


async def test_counter_after_the_schedule_never_touches_the_store():
    """A finished schedule is no limit: take answers None without counting."""
    clock = Clock(ts("2025-07-01T00:00:00Z"))
    store = EmbeddedStore()
    counters = WarmupCounters(store, "t:", clock=clock)
    assert all([await counters.take(sched(), None) is None for _ in range(100)])
    assert store._windows == {}


async def test_embedded_counts_survive_a_restart(tmp_path):
    """With a counts file, a new store (a restarted node) continues today's count."""
    clock = Clock(time.time())
    s = sched(start=dt.date.today() - dt.timedelta(days=1), volumes=(4, 4, 4))
    first = EmbeddedStore(counts_file=tmp_path / "warmup.db")
    counters = WarmupCounters(first, "t:", clock=clock)
    assert [await counters.take(s, None) for _ in range(3)] == [None] * 3
    await first.close()
    second = EmbeddedStore(counts_file=tmp_path / "warmup.db")
    again = WarmupCounters(second, "t:", clock=clock)
    assert await again.take(s, None) is None
    assert await again.take(s, None) is not None
    assert (await again.status({"ip-2": s}))[0]["counters"][0]["used"] == 4
    await second.close()


async def test_expired_counts_are_dropped_from_the_file(tmp_path):
    """A counter past its expiry is not read back."""
    store = EmbeddedStore(counts_file=tmp_path / "c.db")
    await store.count_window("k-old", 5, time.time() - 1)
    await store.count_window("k-new", 5, time.time() + 60)
    await store.close()
    again = EmbeddedStore(counts_file=tmp_path / "c.db")
    assert (await again.window_count("k-old"), await again.window_count("k-new")) == (0, 1)
    await again.close()


# -- routing: overflow to the pool's next source ----------------------------------------


class PoolPolicy:
    """A policy answering one pool, plain sources and a fixed path; ``warmup`` schedules."""

    def __init__(self, entries, warmup, path=None) -> None:
        self.entries = entries
        self.warmup = warmup
        self.path = path or EgressPathConfig()

    async def dispatch(self, event, *args, default=None):
        if event is GET_EGRESS_POOL:
            return EgressPool(name=args[0], entries=self.entries)
        if event is GET_EGRESS_SOURCE:
            return EgressSource(name=args[0])
        if event is GET_EGRESS_PATH_CONFIG:
            return self.path
        return default


def router_for(policy, clock) -> tuple[Router, FakeOutcomes, Gate]:
    outcomes = FakeOutcomes()
    gate = Gate(EmbeddedStore(), "t:")
    gate.warmup.clock = clock
    unused: Any = None  # routing never reaches DNS or the spool here
    router = Router(
        settings=Settings(),
        policy=lambda: policy,
        resolver=unused,
        connector=FakeConnector(),
        spool=unused,
        outcomes=cast(Any, outcomes),
        gate=gate,
    )
    return router, outcomes, gate


def message(n: int) -> Message:
    return Message(id=f"m{n}", sender="a@x.test", recipient="b@dst.test", queue="dst.test",
                   created=0.0, due=0.0)  # fmt: skip


async def choose(router, n):
    chosen = await router._choose_source(message(n), QueueName.parse("dst.test"), "p", "site")
    return None if chosen is None else chosen[0].name


async def test_full_warming_source_overflows_to_the_next_then_waits():
    """ip-2 (allowance 2) takes its turns until full; then ip-1 takes everything; with
    ip-1 warming too and full, the message waits for the window (delayed, not failed)."""
    clock = Clock(ts("2025-06-02T23:00:00Z"))
    s2 = sched(source="ip-2", volumes=(2,))
    policy = PoolPolicy((("ip-1", 1), ("ip-2", 1)), {"ip-2": s2})
    router, outcomes, gate = router_for(policy, clock)
    picked = [await choose(router, n) for n in range(6)]
    assert picked.count("ip-2") == 2 and picked.count("ip-1") == 4
    policy.warmup = {"ip-2": s2, "ip-1": sched(source="ip-1", volumes=(0,))}
    router.forget_policy_answers()
    assert await choose(router, 7) is None
    [delayed] = outcomes.records
    assert (delayed.kind, delayed.delay) == ("delayed", pytest.approx(3600))
    assert gate.warmup.deferred == 1


async def test_heavier_full_source_still_lets_the_lighter_one_take_the_message():
    """Weights 3:1 pick ip-1 twice in a row: a spent ip-1 must not make the message wait
    while ip-2 has room (the round-robin is walked until every source was asked)."""
    policy = PoolPolicy(
        (("ip-1", 3), ("ip-2", 1)),
        {},
        path=EgressPathConfig(source_selection_rate=ThrottleSpec.parse("1/h")),
    )
    router, outcomes, gate = router_for(policy, Clock(time.time()))
    assert await gate.selection_wait(policy.path, "p", "ip-1", "site") is None  # spent
    assert await choose(router, 0) == "ip-2"
    assert await choose(router, 1) is None  # both spent now: it waits
    assert [r.kind for r in outcomes.records] == ["delayed"]
