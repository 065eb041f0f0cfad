"""The soak run's verdicts and its BENCHMARKS.md section (pure).

Exports:
    Sample                one reading of the node (RSS, open fds, asyncio tasks, spool)
    Tolerance, TOLERANCES how much growth each series may show and still be flat
    Flatness, flatness(values, tol)   the flatness verdict of one series
    fault_at(elapsed, phase)          the fault the schedule injects at a moment
    Ledger, ledger(records)           every accepted message's fate, from the log records
    SoakReport, soak_section(rep)     the markdown section, markers included
    passed(rep)                       every series flat, nothing lost, drain finished
    SOAK_BEGIN, SOAK_END              its markers

**Flat** (the rule): drop the first third of the samples (warm-up: caches, pools and
the spool's SQLite pages fill), then the mean of the last third must not exceed the
mean of the second third by more than ``rel`` (a fraction) plus ``abs`` (the series'
unit): ``mean(last) <= mean(second) * (1 + rel) + abs``. Only growth fails: a leak
grows, a shrinking series is not a problem. Fewer than 3 samples cannot be judged.

**Nothing lost**: every message with a Reception record has a Delivery or a Bounce
(or an Expiration) record after the drain.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

__all__ = [
    "Sample",
    "Tolerance",
    "TOLERANCES",
    "Flatness",
    "flatness",
    "fault_at",
    "FAULT_CYCLE",
    "Ledger",
    "ledger",
    "SoakReport",
    "soak_section",
    "passed",
    "SOAK_BEGIN",
    "SOAK_END",
]

SOAK_BEGIN = "<!-- BEGIN soak.py results (generated; replaced on every run) -->"
SOAK_END = "<!-- END soak.py results -->"

# One cycle of the fault schedule, one phase each: deferrals and bounces hit a share of
# the messages; a restart takes the receiver down for a few seconds.
FAULT_CYCLE = ("none", "defer", "none", "bounce", "restart")


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """t: seconds since traffic started; rss_kb; fds: open file descriptors; tasks: live
    asyncio tasks (``nimbus_asyncio_tasks``); spool_messages, spool_bytes (/metrics)."""

    t: float
    rss_kb: int
    fds: int
    tasks: int
    spool_messages: int
    spool_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Tolerance:
    """rel: allowed growth as a fraction of the second third's mean; abs: plus this much."""

    rel: float
    abs: float


SERIES = ("rss_kb", "fds", "tasks", "spool_messages", "spool_bytes")
TOLERANCES: Mapping[str, Tolerance] = {
    "rss_kb": Tolerance(rel=0.10, abs=4096),  # 10 % + 4 MB
    "fds": Tolerance(rel=0.10, abs=5),
    "tasks": Tolerance(rel=0.10, abs=10),
    # The spool follows the fault phases (deferred mail waits there), so it may swing
    # with the schedule; a leak (messages never leaving) still doubles it.
    "spool_messages": Tolerance(rel=0.50, abs=200),
    "spool_bytes": Tolerance(rel=0.50, abs=8 * 1024 * 1024),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Flatness:
    """second, last: means of the second and last thirds; limit: the most ``last`` may be;
    flat: None when there are too few samples to judge."""

    second: float
    last: float
    limit: float
    flat: bool | None


def flatness(values: Sequence[float], tol: Tolerance) -> Flatness:
    """The verdict of one series under the rule in the module docstring."""
    n = len(values)
    if n < 3:
        return Flatness(second=0.0, last=0.0, limit=0.0, flat=None)
    third = n // 3
    second = fmean(values[third : n - third])
    last = fmean(values[n - third :])
    limit = second * (1 + tol.rel) + tol.abs
    return Flatness(second=second, last=last, limit=limit, flat=last <= limit)


def fault_at(elapsed: float, phase: float) -> str:
    """The fault injected ``elapsed`` seconds into the run, phases of ``phase`` seconds
    cycling through FAULT_CYCLE."""
    return FAULT_CYCLE[int(elapsed // phase) % len(FAULT_CYCLE)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Ledger:
    """received: Reception ids; fates: final record counts by type; transient: deferral
    records; lost: received ids with no final record; duplicates: ids with more than one."""

    received: int
    fates: Mapping[str, int]
    transient: int
    lost: tuple[str, ...]
    duplicates: tuple[str, ...]


_FINAL = ("Delivery", "Bounce", "Expiration")


def ledger(records: Iterable[Mapping[str, Any]]) -> Ledger:
    """Match each Reception to its final record (log records as JSON dicts)."""
    received: list[str] = []
    finals: Counter[str] = Counter()
    fates: Counter[str] = Counter()
    transient = 0
    for r in records:
        kind = r.get("type")
        if kind == "Reception":
            received.append(str(r["id"]))
        elif kind in _FINAL:
            finals[str(r["id"])] += 1
            fates[str(kind)] += 1
        elif kind == "TransientFailure":
            transient += 1
    lost = tuple(sorted(i for i in set(received) if not finals[i]))
    dups = tuple(sorted(i for i, n in finals.items() if n > 1))
    return Ledger(
        received=len(received),
        fates=dict(fates),
        transient=transient,
        lost=lost,
        duplicates=dups,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakReport:
    """What one soak run did and saw. started: "YYYY-MM-DD HH:MM UTC"; minutes: traffic
    time; rate: messages/s offered (SMTP, HTTP); phase: seconds per fault phase;
    faults: how many of each were injected; client: accepted counts as the clients saw
    them (``smtp``, ``http``) and refusals; drained_s: seconds the drain took (None: it
    did not finish); command: how to run it again."""

    started: str
    minutes: float
    rate_smtp: float
    rate_http: float
    phase: float
    interval: float
    samples: tuple[Sample, ...]
    ledger: Ledger
    faults: Mapping[str, int]
    client: Mapping[str, int]
    drained_s: float | None
    command: str
    machine: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


def _verdicts(samples: Sequence[Sample]) -> dict[str, Flatness]:
    return {s: flatness([float(getattr(x, s)) for x in samples], TOLERANCES[s]) for s in SERIES}


def passed(rep: SoakReport) -> bool:
    """Every series flat (or too short to judge), nothing lost, the drain finished."""
    flat = all(v.flat is not False for v in _verdicts(rep.samples).values())
    return flat and not rep.ledger.lost and rep.drained_s is not None


def _word(flat: bool | None) -> str:
    return {True: "flat", False: "**GROWING**", None: "too few samples"}[flat]


def soak_section(rep: SoakReport) -> str:
    """The BENCHMARKS.md section for ``rep``, between SOAK_BEGIN and SOAK_END."""
    led = rep.ledger
    verdicts = _verdicts(rep.samples)
    lines = [
        SOAK_BEGIN,
        f"## Soak: {rep.minutes:g} minutes of mixed traffic with faults ({rep.started})",
        "",
        f"`{rep.command}`" + (f" on {rep.machine}" if rep.machine else "") + ".",
        f"Offered {rep.rate_smtp:g} SMTP + {rep.rate_http:g} HTTP messages/s to one node in "
        f"sink mode; the receiver cycles {' → '.join(FAULT_CYCLE)} every {rep.phase:g} s "
        "(deferrals 451 and bounces 550 for a share of messages, a restart takes it down "
        f"for a few seconds). Sampled every {rep.interval:g} s.",
        "",
        "| t (s) | RSS (MB) | open fds | asyncio tasks | spool messages | spool (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for s in rep.samples:
        lines.append(
            f"| {s.t:.0f} | {s.rss_kb / 1024:.1f} | {s.fds} | {s.tasks} | {s.spool_messages} "
            f"| {s.spool_bytes / 1048576:.1f} |"
        )
    lines += [
        "",
        "Flat means: without the first third (warm-up), mean(last third) ≤ mean(second "
        "third) × (1 + rel) + abs.",
        "",
        "| series | second third | last third | limit (rel, abs) | verdict |",
        "|---|---|---|---|---|",
    ]
    for name, v in verdicts.items():
        tol = TOLERANCES[name]
        lines.append(
            f"| {name} | {v.second:.1f} | {v.last:.1f} | {v.limit:.1f} ({tol.rel:g}, "
            f"{tol.abs:g}) | {_word(v.flat)} |"
        )
    fates = ", ".join(f"{k} {n}" for k, n in sorted(led.fates.items())) or "none"
    faults = ", ".join(f"{k} {n}" for k, n in sorted(rep.faults.items())) or "none"
    client = ", ".join(f"{k} {n}" for k, n in sorted(rep.client.items()))
    drained = "did not finish" if rep.drained_s is None else f"{rep.drained_s:.0f} s"
    lines += [
        "",
        f"- Accepted (client side): {client}.",
        f"- Reception records {led.received}; final records: {fates}; "
        f"TransientFailure records {led.transient}; drain after traffic: {drained}.",
        f"- Lost (Reception without Delivery/Bounce/Expiration): **{len(led.lost)}**"
        + (f" (first: {', '.join(led.lost[:5])})" if led.lost else "")
        + f"; delivered more than once: {len(led.duplicates)}.",
        f"- Faults injected: {faults}.",
        *[f"- {note}" for note in rep.notes],
        f"- Verdict: **{'PASS' if passed(rep) else 'FAIL'}**.",
        SOAK_END,
        "",
    ]
    return "\n".join(lines)
