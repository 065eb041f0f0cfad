"""Scheduling: KumoMTA set_scheduling options parsed, and the send window applied to due times."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from engine.policy.scheduling import Scheduling


def utc(text: str) -> float:
    """``"2024-03-06 12:00"`` in UTC as unix seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def local(text: str, tz: str) -> float:
    """``"2024-03-10 09:00"`` as wall time in ``tz``, as unix seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


WINDOW = {"dow": "Mon-Fri", "tz": "UTC", "start": "09:00", "end": "17:00"}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, Scheduling()),
        ({"first_attempt": None, "expires": None}, Scheduling()),
        (
            {"first_attempt": "2024-03-01T10:00:00Z"},
            Scheduling(first_attempt=utc("2024-03-01 10:00")),
        ),
        (
            {"first_attempt": "2024-03-01T12:00:00+02:00"},
            Scheduling(first_attempt=utc("2024-03-01 10:00")),
        ),
        (
            {"first_attempt": "2024-03-01T05:00:00-05:00"},
            Scheduling(first_attempt=utc("2024-03-01 10:00")),
        ),
        (
            {"first_attempt": "2024-03-01T10:00:00.5Z"},
            Scheduling(first_attempt=utc("2024-03-01 10:00") + 0.5),
        ),
        ({"first_attempt": 1709287200}, Scheduling(first_attempt=1709287200.0)),
        ({"first_attempt": 1709287200.25}, Scheduling(first_attempt=1709287200.25)),
        ({"expires": "2024-03-04T10:00:00Z"}, Scheduling(expires=utc("2024-03-04 10:00"))),
        ({"expires": 1709546400}, Scheduling(expires=1709546400.0)),
        (
            {"dow": "Mon-Fri", "tz": "Europe/Berlin", "start": "09:00", "end": "17:30:00"},
            Scheduling(
                days=frozenset(range(5)), tz="Europe/Berlin", start=time(9), end=time(17, 30)
            ),
        ),
    ],
)
def test_from_options_valid(options, expected):
    """from_options parses KumoMTA's keys into the expected Scheduling."""
    assert Scheduling.from_options(options) == expected


@pytest.mark.parametrize(
    ("dow", "days"),
    [
        ("Mon", {0}),
        ("Mon,Wed,Fri", {0, 2, 4}),
        ("Mon-Fri", {0, 1, 2, 3, 4}),
        ("Fri-Mon", {4, 5, 6, 0}),
        ("sat, SUN", {5, 6}),
        ("Monday,Tuesday", {0, 1}),
        ("Mon-Wed,Sat", {0, 1, 2, 5}),
    ],
)
def test_from_options_dow(dow, days):
    """from_options reads day lists, ranges (also wrapping past Sunday) and any case."""
    assert Scheduling.from_options({**WINDOW, "dow": dow}).days == frozenset(days)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"dow": "Mon", "tz": "UTC", "start": "09:00"}, "together"),
        ({"tz": "UTC"}, "together"),
        ({"start": "09:00", "end": "17:00"}, "together"),
        ({**WINDOW, "tz": "Mars/Olympus_Mons"}, "tz"),
        ({**WINDOW, "tz": "../etc/passwd"}, "tz"),
        ({**WINDOW, "dow": "Funday"}, "dow"),
        ({**WINDOW, "dow": "Mon-Xyz"}, "dow"),
        ({**WINDOW, "dow": ""}, "dow"),
        ({**WINDOW, "start": "9am"}, "start"),
        ({**WINDOW, "end": "25:00"}, "end"),
        ({"first_attempt": "2024-03-01T10:00:00"}, "first_attempt"),
        ({"expires": "2024-03-01 10:00"}, "expires"),
        ({"first_attempt": "tomorrow"}, "first_attempt"),
        ({"first_attempt": True}, "first_attempt"),
        ({"priority": 1}, "unknown"),
    ],
)
def test_from_options_invalid(options, match):
    """from_options rejects bad options with a ValueError naming the problem."""
    with pytest.raises(ValueError, match=match):
        Scheduling.from_options(options)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"first_attempt": "2024-03-01T10:00:00Z", "expires": "2024-03-04T10:00:00+01:00"},
        {"dow": "Fri-Mon", "tz": "America/New_York", "start": "22:00", "end": "06:30"},
    ],
)
def test_to_json_round_trips(options):
    """from_options(to_json()) gives back the same Scheduling."""
    sched = Scheduling.from_options(options)
    assert Scheduling.from_options(sched.to_json()) == sched


# 2024-03-04 is a Monday; 2024-03-06 Wednesday; 2024-03-08 Friday; 2024-03-09 Saturday.
@pytest.mark.parametrize(
    ("options", "due", "expected"),
    [
        pytest.param(WINDOW, utc("2024-03-06 12:00"), utc("2024-03-06 12:00"), id="inside"),
        pytest.param(WINDOW, utc("2024-03-06 09:00"), utc("2024-03-06 09:00"), id="at start"),
        pytest.param(WINDOW, utc("2024-03-06 07:00"), utc("2024-03-06 09:00"), id="before start"),
        pytest.param(WINDOW, utc("2024-03-06 17:00"), utc("2024-03-07 09:00"), id="at end"),
        pytest.param(WINDOW, utc("2024-03-06 18:00"), utc("2024-03-07 09:00"), id="after end"),
        pytest.param(
            WINDOW,
            utc("2024-03-08 18:00"),
            utc("2024-03-11 09:00"),
            id="Friday after end -> Monday",
        ),
        pytest.param(
            WINDOW, utc("2024-03-09 12:00"), utc("2024-03-11 09:00"), id="Saturday -> Monday"
        ),
        pytest.param(
            WINDOW, utc("2024-03-10 23:59"), utc("2024-03-11 09:00"), id="Sunday -> Monday"
        ),
        pytest.param(
            {**WINDOW, "dow": "Wed"},
            utc("2024-03-06 18:00"),
            utc("2024-03-13 09:00"),
            id="one day a week -> next week",
        ),
        pytest.param(
            {**WINDOW, "tz": "Europe/Berlin"},
            utc("2024-03-06 07:30"),
            utc("2024-03-06 08:00"),
            id="window in another zone",
        ),
    ],
)
def test_adjust_window(options, due, expected):
    """adjust() moves a due time to the earliest moment inside a same-day window."""
    assert Scheduling.from_options(options).adjust(due) == expected


NIGHT = {"dow": "Mon-Fri", "tz": "UTC", "start": "22:00", "end": "06:00"}


@pytest.mark.parametrize(
    ("due", "expected"),
    [
        pytest.param(utc("2024-03-08 23:00"), utc("2024-03-08 23:00"), id="Friday night"),
        pytest.param(
            utc("2024-03-09 03:00"), utc("2024-03-09 03:00"), id="Saturday early is Friday's"
        ),
        pytest.param(
            utc("2024-03-09 07:00"), utc("2024-03-11 22:00"), id="Saturday day -> Monday night"
        ),
        pytest.param(
            utc("2024-03-11 03:00"), utc("2024-03-11 22:00"), id="Monday early is Sunday's"
        ),
        pytest.param(
            utc("2024-03-12 03:00"), utc("2024-03-12 03:00"), id="Tuesday early is Monday's"
        ),
        pytest.param(utc("2024-03-06 06:00"), utc("2024-03-06 22:00"), id="at end"),
        pytest.param(utc("2024-03-06 12:00"), utc("2024-03-06 22:00"), id="midday -> same night"),
    ],
)
def test_adjust_window_crossing_midnight(due, expected):
    """adjust() treats a window crossing midnight as belonging to the day it starts on."""
    assert Scheduling.from_options(NIGHT).adjust(due) == expected


NY = "America/New_York"
NY_DAILY = {"dow": "Mon-Sun", "tz": NY, "start": "09:00", "end": "17:00"}


# US DST 2024: starts Sun 2024-03-10 02:00 EST, ends Sun 2024-11-03 02:00 EDT.
@pytest.mark.parametrize(
    ("due", "expected"),
    [
        pytest.param(utc("2024-03-08 13:00"), utc("2024-03-08 14:00"), id="EST start is 14:00Z"),
        pytest.param(
            utc("2024-03-09 23:00"),
            utc("2024-03-10 13:00"),
            id="across spring forward -> 09:00 EDT",
        ),
        pytest.param(utc("2024-03-10 13:30"), utc("2024-03-10 13:30"), id="inside on DST day"),
        pytest.param(
            utc("2024-11-02 22:00"), utc("2024-11-03 14:00"), id="across fall back -> 09:00 EST"
        ),
        pytest.param(
            local("2024-11-03 16:59", NY),
            local("2024-11-03 16:59", NY),
            id="inside after fall back",
        ),
    ],
)
def test_adjust_window_across_dst(due, expected):
    """adjust() keeps the window on local wall-clock time across DST changes."""
    assert Scheduling.from_options(NY_DAILY).adjust(due) == expected


def test_adjust_never_returns_before_due_in_repeated_hour():
    """adjust() in the repeated fall-back hour returns the next window start after due."""
    sched = Scheduling.from_options({"dow": "Mon-Sun", "tz": NY, "start": "01:30", "end": "05:00"})
    due = utc("2024-11-03 06:10")  # 01:10 EST, the second 01:10 that day
    assert sched.adjust(due) == utc("2024-11-03 06:30")  # 01:30 EST


@pytest.mark.parametrize(
    ("options", "due", "expected"),
    [
        pytest.param(
            {"first_attempt": utc("2024-03-06 15:00")},
            utc("2024-03-06 12:00"),
            utc("2024-03-06 15:00"),
            id="future first_attempt",
        ),
        pytest.param(
            {"first_attempt": utc("2024-03-06 10:00")},
            utc("2024-03-06 12:00"),
            utc("2024-03-06 12:00"),
            id="past first_attempt",
        ),
        pytest.param(
            {"first_attempt": "2024-03-09T10:00:00Z", **WINDOW},
            utc("2024-03-06 12:00"),
            utc("2024-03-11 09:00"),
            id="future first_attempt on a weekend -> Monday",
        ),
        pytest.param(
            {"first_attempt": "2024-03-07T10:00:00Z", **WINDOW},
            utc("2024-03-06 12:00"),
            utc("2024-03-07 10:00"),
            id="future first_attempt inside the window",
        ),
        pytest.param(
            {"expires": utc("2024-03-06 13:00")},
            utc("2024-03-06 12:00"),
            utc("2024-03-06 12:00"),
            id="expires does not move due",
        ),
        pytest.param({}, utc("2024-03-09 12:00"), utc("2024-03-09 12:00"), id="no constraints"),
    ],
)
def test_adjust_first_attempt(options, due, expected):
    """adjust() never returns a time before first_attempt, then applies the window."""
    assert Scheduling.from_options(options).adjust(due) == expected
