"""One trial: a fresh sink and MTA, smtp-source against it, timed until the sink has N.

Exports:
    TrialSpec              what to run: MTA, size, run number and the run's settings
    run_trial(spec, out)   run it; a JSON-able result dict (``ok`` false with ``error``)
    make_harness(...)      the MtaHarness for an MTA name

Measured window: from starting smtp-source until the sink's ``-c`` counter reached N
(**e2e**) and until smtp-source exited (**ingress**); MTA CPU (its process tree), the whole
box's busy CPU, the sink's and smtp-source's CPU over the same window. Before it, the box's
busy share during ``settle`` idle seconds (the machine is shared).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.baseline import BASELINE_MTA
from bench.harness import MtaHarness, Placement
from bench.load import LoadGenerator, source_command
from bench.nimbus import (
    ASYNCIO_MTA,
    NIMBUS_MTAS,
    WORKERS_MTA,
    NimbusAsyncioHarness,
    NimbusBaselineHarness,
    NimbusDkimHarness,
    NimbusHarness,
    NimbusWorkersHarness,
)
from bench.postfix import PostfixHarness
from bench.sampling import box_busy_seconds
from bench.sink import Sink
from bench.support import BenchError, free_port, log, wait_until

__all__ = ["TrialSpec", "run_trial", "make_harness"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialSpec:
    mta: str  # postfix, nimbus, nimbus-dkim, nimbus-w2 or nimbus-baseline
    size: int  # smtp-source -l
    run: int  # 1-based run number
    messages: int
    sessions: int
    reuse_sessions: bool = False
    postfix_log: bool = True  # Postfix maillog_file on
    settle: float = 2.0  # idle seconds before the load (background CPU is measured then)
    trial_timeout: float = 600.0
    stall_timeout: float = 60.0  # sink count unchanged this long after ingress: failed
    workdir: Path = Path("/var/tmp")  # parent of the trial's temp dir
    keep_workdir: bool = False
    baseline_tree: Path | None = None  # nimbus-baseline's worktree (bench.baseline)

    @property
    def tag(self) -> str:
        return f"r{self.run}-{self.size}-{self.mta}"


@dataclass(slots=True, kw_only=True)
class _Parts:
    """What a trial started, so that its cleanup stops exactly those."""

    sink: Sink | None = None
    mta: MtaHarness | None = None
    source: LoadGenerator | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Snapshot:
    at: float  # monotonic seconds
    box: float
    mta: float
    processes: int
    sink: float | None


def make_harness(
    name: str, place: Placement, postfix_log: bool = True, baseline_tree: Path | None = None
) -> MtaHarness:
    if name == BASELINE_MTA:
        if baseline_tree is None:
            raise BenchError(f"{BASELINE_MTA} needs a baseline tree (run_bench --baseline REV)")
        return NimbusBaselineHarness(place, baseline_tree)
    if name == "postfix":
        return PostfixHarness(place, log_to_file=postfix_log)
    if name == "nimbus":
        return NimbusHarness(place)
    if name == "nimbus-dkim":
        return NimbusDkimHarness(place)
    if name == WORKERS_MTA:
        return NimbusWorkersHarness(place)
    if name == ASYNCIO_MTA:
        return NimbusAsyncioHarness(place)
    raise BenchError(f"unknown MTA {name!r} (postfix, {', '.join(NIMBUS_MTAS)})")


def _snapshot(parts: _Parts) -> _Snapshot:
    assert parts.mta is not None and parts.sink is not None
    box = box_busy_seconds()
    cpu = parts.mta.cpu()  # scans the process table: the clock is read after it
    sink = parts.sink.cpu_seconds()
    return _Snapshot(
        at=time.monotonic(), box=box, mta=cpu.seconds, processes=cpu.processes, sink=sink
    )


def _background_pct(settle: float) -> float:
    """The box's busy share, in % of all CPUs, over ``settle`` idle seconds."""
    os.sync()  # start every trial with no dirty pages left over from the previous one
    b0, w0 = box_busy_seconds(), time.monotonic()
    time.sleep(settle)
    busy = box_busy_seconds() - b0
    return round(busy / (time.monotonic() - w0) / (os.cpu_count() or 1) * 100, 1)


def _wait_for_sink(spec: TrialSpec, parts: _Parts, t0: float) -> None:
    """Until the sink has N; BenchError on the trial timeout, a stall, or a dead MTA."""
    sink, mta, source = parts.sink, parts.mta, parts.source
    assert sink is not None and mta is not None and source is not None
    n, deadline = spec.messages, t0 + spec.trial_timeout
    while not sink.reached.wait(timeout=0.2):
        ingress_done = source.poll()
        now = time.monotonic()
        if now > deadline:
            raise BenchError(
                f"trial timeout ({spec.trial_timeout}s): sink has {sink.count}/{n}, "
                f"smtp-source {'finished' if ingress_done else 'still running'}"
            )
        if source.exited_at and now - max(sink.last_change, source.exited_at) > spec.stall_timeout:
            raise BenchError(
                f"stalled: sink count stuck at {sink.count}/{n} for "
                f"{spec.stall_timeout}s after smtp-source exited"
            )
        dead = mta.failure()
        if dead:
            raise BenchError(f"{dead} during the trial")
    source.poll()


def _rates(spec: TrialSpec, t0: _Snapshot, t1: _Snapshot, ingress_at: float) -> dict[str, Any]:
    """Per-message figures of the window between two snapshots."""
    n, ncpu = spec.messages, os.cpu_count() or 1
    e2e = t1.at - t0.at
    box_ms = (t1.box - t0.box) * 1000
    sink_ms = ((t1.sink or t0.sink or 0) - (t0.sink or 0)) * 1000
    return {
        "e2e_seconds": round(e2e, 4),
        "ingress_seconds": round(ingress_at - t0.at, 4),
        "e2e_msgs_per_s": round(n / e2e, 1),
        "ingress_msgs_per_s": round(n / (ingress_at - t0.at), 1),
        "mta_cpu_ms_per_msg": round((t1.mta - t0.mta) * 1000 / n, 3),
        "box_cpu_ms_per_msg": round(box_ms / n, 3),
        "box_cpu_util_pct": round(box_ms / 1000 / e2e / ncpu * 100, 1),
        "sink_cpu_ms_per_msg": round(sink_ms / n, 3),
        "mta_processes_start_end": [t0.processes, t1.processes],
    }


def _measure(spec: TrialSpec, parts: _Parts, outdir: Path) -> dict[str, Any]:
    """Start the load and time it; the result fields of a completed window."""
    sink, mta = parts.sink, parts.mta
    assert sink is not None and mta is not None
    cmd = source_command(
        sessions=spec.sessions,
        messages=spec.messages,
        size=spec.size,
        port=mta.port,
        reuse_sessions=spec.reuse_sessions,
    )
    out: dict[str, Any] = {"source_cmd": " ".join(cmd)}
    out["background_box_cpu_pct"] = _background_pct(spec.settle)
    source = parts.source = LoadGenerator(cmd, outdir / f"{spec.tag}.smtp-source.out")
    before = _snapshot(parts)
    source.start()
    _wait_for_sink(spec, parts, before.at)
    after = _snapshot(parts)
    # the sink counted N at reached_at, a little before this snapshot's clock
    after = dataclasses.replace(after, at=sink.reached_at or after.at)
    out["extra"] = mta.extra_stats()
    ingress_at = source.exited_at or source.wait(timeout=60)
    out.update(_rates(spec, before, after, ingress_at))
    out["source_cpu_ms_per_msg"] = round(source.cpu_seconds * 1000 / spec.messages, 3)
    out["source_rc"] = source.returncode
    out["source_output"] = source.output()[-2000:]
    return out


def _start(spec: TrialSpec, place: Placement, parts: _Parts, result: dict[str, Any]) -> None:
    parts.sink = Sink(place.sink_port, spec.messages, place.outdir)
    parts.sink.wait_listening()
    parts.mta = make_harness(spec.mta, place, spec.postfix_log, spec.baseline_tree)
    parts.mta.start()
    parts.mta.ready()
    result["mta_port"] = parts.mta.port
    result["sink_port"] = place.sink_port
    if parts.sink.count:
        raise BenchError(f"sink already counted {parts.sink.count} messages before the load")


def _cleanup(spec: TrialSpec, parts: _Parts, workdir: Path, result: dict[str, Any]) -> None:
    if parts.source is not None:
        parts.source.stop()
    if parts.mta is not None:
        try:
            parts.mta.stop()
            result["post"] = parts.mta.post_stats()
        except Exception as exc:  # noqa: BLE001 - cleanup must go on
            log(f"warning: stopping {spec.mta} failed: {exc!r}")
            result.setdefault("cleanup_errors", []).append(repr(exc))
    if parts.sink is not None:
        result["sink_final_count"] = parts.sink.count
        parts.sink.stop()
    if spec.keep_workdir:
        result["workdir"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def _cross_checks(spec: TrialSpec, result: dict[str, Any]) -> None:
    """Warnings when the counts of sink, MTA log and load disagree."""
    n = spec.messages
    if result.get("ok") and result.get("sink_final_count", n) != n:
        result["warning"] = f"sink counted {result['sink_final_count']} messages for {n} sent"
    post = result.get("post")
    if spec.mta in NIMBUS_MTAS and post:
        result["peak_rss_kb"] = post.get("peak_rss_kb")
        delivered = post["log_record_types"].get("Delivery", 0)
        if delivered != n:
            result.setdefault("warnings", []).append(
                f"{delivered} Delivery records for {n} messages"
            )


def run_trial(spec: TrialSpec, outdir: Path) -> dict[str, Any]:
    """Run one trial; never raises BenchError (the result says ``ok`` and ``error``).

    outdir: the run's results directory (smtp-source output, nimbus stderr, maillog
    problems of this trial go there, prefixed with ``spec.tag``).
    """
    result: dict[str, Any] = {
        "mta": spec.mta,
        "size": spec.size,
        "run": spec.run,
        "messages": spec.messages,
        "sessions": spec.sessions,
        "ok": False,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    workdir = Path(tempfile.mkdtemp(prefix=f"nimbus-bench-{spec.tag}-", dir=spec.workdir))
    os.chmod(workdir, 0o755)  # Postfix daemons (user postfix) must traverse into the queue dir
    place = Placement(workdir=workdir, sink_port=free_port(), outdir=outdir, tag=spec.tag)
    parts = _Parts()
    try:
        _start(spec, place, parts, result)
        result.update(_measure(spec, parts, outdir))
        assert parts.mta is not None
        wait_until(parts.mta.drained, 30, f"{spec.mta} queue to be empty", interval=0.5)
        time.sleep(0.5)  # let late duplicates, if any, reach the sink before the final count
        result["ok"] = result["source_rc"] == 0
        if not result["ok"]:
            result["error"] = f"smtp-source rc={result['source_rc']}"
    except BenchError as exc:
        result["error"] = str(exc)
        log(f"ERROR in {spec.tag}: {exc}")
        mta = parts.mta
        if isinstance(mta, NimbusHarness) and mta.proc is not None and mta.failure() is None:
            result["metrics_at_error"] = mta.metrics()
    finally:
        _cleanup(spec, parts, workdir, result)
    _cross_checks(spec, result)
    return result
