"""The soak run's pure parts: the flatness rule, the fault schedule, the ledger, the report."""

from __future__ import annotations

import pytest

from bench.report import splice_section
from bench.soak_report import (
    SOAK_BEGIN,
    SOAK_END,
    Flatness,
    Ledger,
    Sample,
    SoakReport,
    Tolerance,
    fault_at,
    flatness,
    ledger,
    passed,
    soak_section,
)

TOL = Tolerance(rel=0.10, abs=5)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([100.0] * 9, Flatness(second=100.0, last=100.0, limit=pytest.approx(115.0), flat=True)),
        # warm-up growth in the first third is ignored
        ([10.0, 50.0, 90.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0], True),
        ([100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 114.0, 115.0, 116.0], True),  # limit 115
        ([100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 116.0, 116.0, 116.0], False),
        ([100.0, 110.0, 120.0, 130.0, 140.0, 150.0, 160.0, 170.0, 180.0], False),  # a leak
        ([200.0, 200.0, 200.0, 150.0, 150.0, 150.0, 50.0, 50.0, 50.0], True),  # shrinking
        ([1.0, 2.0, 3.0], True),  # one sample per third
        ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 20.0], False),  # 8 samples: thirds of 2
        ([5.0, 6.0], None),  # too few to judge
        ([], None),
    ],
)
def test_flatness(values, expected):
    """Drop the first third; the last third's mean may exceed the second's by rel + abs."""
    verdict = flatness(values, TOL)
    if isinstance(expected, Flatness):
        assert verdict == expected
    else:
        assert verdict.flat is expected


@pytest.mark.parametrize(
    ("elapsed", "phase", "fault"),
    [
        (0.0, 60.0, "none"),
        (59.9, 60.0, "none"),
        (60.0, 60.0, "defer"),
        (150.0, 60.0, "none"),
        (180.0, 60.0, "bounce"),
        (240.0, 60.0, "restart"),
        (300.0, 60.0, "none"),  # the cycle starts again
        (25.0, 20.0, "defer"),
    ],
)
def test_fault_at(elapsed, phase, fault):
    """Phases of ``phase`` seconds cycle none, defer, none, bounce, restart."""
    assert fault_at(elapsed, phase) == fault


def rec(kind: str, id: str) -> dict[str, str]:
    return {"type": kind, "id": id}


def test_ledger_matches_receptions_to_final_records():
    """Deferrals are not fates; a Reception without Delivery/Bounce is lost; two Deliveries
    of one id are a duplicate; AdminAudit and other records are ignored."""
    led = ledger(
        [
            rec("Reception", "a"),
            rec("Reception", "b"),
            rec("Reception", "c"),
            rec("Reception", "d"),
            rec("TransientFailure", "a"),
            rec("Delivery", "a"),
            rec("Bounce", "b"),
            rec("TransientFailure", "c"),
            rec("Delivery", "d"),
            rec("Delivery", "d"),
            rec("AdminAudit", "x"),
        ]
    )
    assert led == Ledger(
        received=4,
        fates={"Delivery": 3, "Bounce": 1},
        transient=2,
        lost=("c",),
        duplicates=("d",),
    )


def sample(t: float, rss: int) -> Sample:
    return Sample(t=t, rss_kb=rss, fds=30, tasks=12, spool_messages=5, spool_bytes=1 << 20)


def report(rss: list[int], lost: tuple[str, ...] = (), drained: float | None = 3.0) -> SoakReport:
    return SoakReport(
        started="2026-12-03 18:00 UTC",
        minutes=3,
        rate_smtp=20,
        rate_http=6,
        phase=20,
        interval=10,
        samples=tuple(sample(10.0 * i, r) for i, r in enumerate(rss)),
        ledger=Ledger(
            received=10, fates={"Delivery": 10 - len(lost)}, transient=1, lost=lost, duplicates=()
        ),
        faults={"deferred": 1, "bounced": 0, "restarts": 1},
        client={"smtp": 7, "http": 3},
        drained_s=drained,
        command="python3 -m bench.soak --minutes 3",
    )


@pytest.mark.parametrize(
    ("rep", "ok"),
    [
        (report([70_000] * 6), True),
        (report([70_000, 70_000, 70_000, 70_000, 90_000, 90_000]), False),  # RSS grows
        (report([70_000] * 6, lost=("m1",)), False),
        (report([70_000] * 6, drained=None), False),
        (report([70_000, 70_000]), True),  # too short to judge is not a failure
    ],
)
def test_passed(rep, ok):
    """A run passes when no series grows, nothing is lost and the spool drained."""
    assert passed(rep) is ok


def test_section_has_markers_samples_verdicts_and_ledger():
    """The section is spliceable and says what was measured and decided."""
    text = soak_section(report([70_000, 70_000, 70_000, 70_000, 90_000, 90_000], lost=("m1",)))
    assert text.startswith(SOAK_BEGIN) and text.rstrip().endswith(SOAK_END)
    assert "| 50 | 87.9 | 30 | 12 | 5 | 1.0 |" in text
    assert "| rss_kb | 70000.0 | 90000.0 | 81096.0 (0.1, 4096) | **GROWING** |" in text
    assert "Lost (Reception without Delivery/Bounce/Expiration): **1** (first: m1)" in text
    assert "Verdict: **FAIL**" in text
    old = f"# B\n\nintro\n\n{SOAK_BEGIN}\nold numbers\n{SOAK_END}\n\n## after\n"
    spliced = splice_section(old, SOAK_BEGIN, SOAK_END, text)
    assert "old numbers" not in spliced and spliced.endswith("\n\n## after\n")
    assert spliced.count(SOAK_BEGIN) == 1
