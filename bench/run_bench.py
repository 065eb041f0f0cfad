"""Side-by-side relay benchmark: Postfix (Debian package) vs ``nimbus mta`` in sink mode.

Not a pytest test. Run as root, from the repository root, on a machine with the Debian
``postfix`` package installed:

    python3 -m bench.run_bench                           # 10,000 msgs x {4096, 40960} B x 3 runs
    python3 -m bench.run_bench --messages 1000 --runs 1  # smoke run

Per trial (one MTA, one message size; ``bench.trial``): a fresh ``smtp-sink`` (``bench.sink``),
a fresh MTA instance relaying everything to it (``bench.postfix``, ``bench.nimbus``), then
``smtp-source`` (``bench.load``) as the load; the trial is complete when the sink's own ``-c``
counter reaches N, the same method for every MTA.

Measured: end-to-end msgs/s = N / (t(sink reached N) - t(smtp-source started)); ingress msgs/s =
N / (t(smtp-source exited) - t(start)); CPU ms/msg of the MTA's processes (nimbus: its process
and children; Postfix: master + its live children + children master already reaped, i.e.
utime+stime+cutime+cstime); whole-box CPU ms/msg (non-idle CPU time of the machine, includes
the load generator, the sink and any noise); nimbus's peak RSS (the kernel's high-water mark).

Postfix and nimbus trials are interleaved (the order alternates per run) and medians are
reported (``bench.stats``). Raw per-trial JSON, nimbus's stderr and Postfix's problem log lines
go to bench/results/<timestamp>/; a summary section is written into BENCHMARKS.md
(``bench.report``).

``--dkim`` adds a third MTA, ``nimbus-dkim``: the same nimbus with a policy that DKIM-signs
every message (dkim_data.toml, a fresh 2048-bit RSA key from ``openssl genrsa`` per trial,
relaxed/relaxed). Its CPU includes its signing worker process. Such a run writes its own
section of BENCHMARKS.md (DKIM off vs on, side by side) and leaves the relay section alone.

``--baseline REV`` adds ``nimbus-baseline``: nimbus of git revision REV, from a detached
worktree in a temp dir (removed at the end, also on an error or Ctrl-C), started with its own
engine and its own policy/ (``bench.baseline``), interleaved like nimbus. The report adds
nimbus / nimbus-baseline ratios: the comparison with an older nimbus that a ratio from an
older run cannot give (the shared box's speed changes from day to day).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import pwd
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.baseline import BASELINE_MTA, Baseline, baseline_worktree
from bench.harness import Placement
from bench.machine import REPO, MachineFacts, machine_facts
from bench.nimbus import NIMBUS_MTAS, NimbusBaselineHarness
from bench.postfix import etc_postfix_fingerprint
from bench.report import RunReport, report_commands, table_text, write_report
from bench.stats import collect_problems, summarize
from bench.support import BenchError, log
from bench.trial import TrialSpec, run_trial

__all__ = ["main", "parse_args"]


def _add_load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--messages", type=int, default=10000, help="messages per trial (default 10000)")
    p.add_argument(
        "--sizes", default="4096,40960", help="comma-separated payload sizes for smtp-source -l"
    )
    p.add_argument("--sessions", type=int, default=20, help="smtp-source -s (default 20)")
    p.add_argument(
        "--runs", type=int, default=3, help="interleaved runs per size and MTA (default 3)"
    )
    p.add_argument(
        "--mtas",
        default="postfix,nimbus",
        help="which MTAs: postfix, nimbus, nimbus-dkim, nimbus-w2 (two engine workers), "
        "nimbus-asyncio (the stdlib event loop), "
        "nimbus-baseline (default postfix,nimbus)",
    )
    p.add_argument(
        "--baseline",
        metavar="REV",
        default="",
        help="also run nimbus-baseline: nimbus at git revision REV (e.g. 726b18a)",
    )
    p.add_argument(
        "--dkim",
        action="store_true",
        help="also run nimbus-dkim (signs every message) and write the DKIM section",
    )
    p.add_argument("--reuse-sessions", action="store_true", help="smtp-source -d (reuse sessions)")
    p.add_argument(
        "--postfix-no-log",
        action="store_true",
        help="no maillog_file for Postfix (default: log to a file, like a real install)",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trial-timeout", type=float, default=0, help="seconds per trial (default 120 + N/20)"
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=60,
        help="fail a trial if the sink count stops moving this long after ingress ended",
    )
    p.add_argument(
        "--settle", type=float, default=2.0, help="idle seconds before each trial's load"
    )
    p.add_argument(
        "--workdir", default="/var/tmp", help="parent of per-trial temp dirs (a real disk)"
    )
    p.add_argument(
        "--keep-workdir", action="store_true", help="keep spool/queue dirs for inspection"
    )
    p.add_argument("--results-dir", default=str(REPO / "bench" / "results"))
    p.add_argument(
        "--markdown", default=str(REPO / "BENCHMARKS.md"), help="file to update ('' = none)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_load_options(p)
    _add_run_options(p)
    args = p.parse_args(argv)
    args.size_list = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.mta_list = [m.strip() for m in args.mtas.split(",") if m.strip()]
    if args.dkim:
        args.mta_list += [m for m in ("nimbus", "nimbus-dkim") if m not in args.mta_list]
    if args.baseline and BASELINE_MTA not in args.mta_list:
        args.mta_list.append(BASELINE_MTA)
    if not set(args.mta_list) <= {"postfix", *NIMBUS_MTAS} or not args.mta_list:
        p.error(f"--mtas takes postfix, {', '.join(NIMBUS_MTAS)}")
    if BASELINE_MTA in args.mta_list and not args.baseline:
        p.error(f"{BASELINE_MTA} needs --baseline REV")
    args.dkim = "nimbus-dkim" in args.mta_list
    if args.messages < 1 or args.runs < 1 or args.sessions < 1 or not args.size_list:
        p.error("--messages, --runs, --sessions must be positive and --sizes non-empty")
    if not args.trial_timeout:
        args.trial_timeout = 120 + args.messages / 20
    return args


def preflight(args: argparse.Namespace) -> None:
    """BenchError naming what is missing to run at all."""
    if os.geteuid() != 0:
        raise BenchError("run as root: Postfix needs root to start, smtp-sink drops to 'nobody'")
    for tool in ("smtp-sink", "smtp-source", "postfix", "postconf", "postqueue"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found (Debian package 'postfix')")
    for user in ("postfix", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise BenchError(
                f"no user {user!r}: is the Debian postfix package installed?"
            ) from None
    if not Path(args.workdir).is_dir():
        raise BenchError(f"--workdir {args.workdir} is not a directory")


def check_baseline(args: argparse.Namespace, base: Baseline, outdir: Path) -> str:
    """Before any trial: a baseline instance, made exactly as a trial makes it, imports
    engine from the baseline tree (BenchError otherwise). Returns that engine.__file__."""
    with tempfile.TemporaryDirectory(prefix="nimbus-bench-probe-", dir=args.workdir) as d:
        place = Placement(workdir=Path(d), sink_port=0, outdir=outdir, tag="baseline-probe")
        mta = NimbusBaselineHarness(place, base.tree)
        mta.dir.mkdir()
        mta.check_launch(mta.process_env())
        assert mta.engine_file is not None
        return mta.engine_file


def _spec(
    args: argparse.Namespace, mta: str, size: int, run_no: int, base: Baseline | None
) -> TrialSpec:
    return TrialSpec(
        mta=mta,
        size=size,
        run=run_no,
        messages=args.messages,
        sessions=args.sessions,
        reuse_sessions=args.reuse_sessions,
        postfix_log=not args.postfix_no_log,
        settle=args.settle,
        trial_timeout=args.trial_timeout,
        stall_timeout=args.stall_timeout,
        workdir=Path(args.workdir),
        keep_workdir=args.keep_workdir,
        baseline_tree=base.tree if base is not None else None,
    )


def _log_trial(t: dict[str, Any]) -> None:
    head = f"run {t['run']} size {t['size']} {t['mta']}"
    if not t.get("ok"):
        log(f"{head}: FAILED: {t.get('error')}")
        return
    rss = f" peak RSS {t['peak_rss_kb'] // 1024} MiB" if t.get("peak_rss_kb") else ""
    log(
        f"{head}: e2e {t['e2e_msgs_per_s']}/s ingress {t['ingress_msgs_per_s']}/s "
        f"MTA cpu {t['mta_cpu_ms_per_msg']} ms/msg box cpu {t['box_cpu_ms_per_msg']} ms/msg{rss}"
    )


def run_trials(
    args: argparse.Namespace, outdir: Path, base: Baseline | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """Every trial, interleaved (order of MTAs alternating per run); (trials, interrupted).

    trials.json is rewritten after each trial, so an interrupted run keeps what finished.
    """
    trials: list[dict[str, Any]] = []
    try:
        for run_no in range(1, args.runs + 1):
            for size in args.size_list:
                order = args.mta_list if run_no % 2 else list(reversed(args.mta_list))
                for mta in order:
                    log(f"run {run_no}/{args.runs} size {size} {mta}: start")
                    trials.append(run_trial(_spec(args, mta, size, run_no, base), outdir))
                    (outdir / "trials.json").write_text(json.dumps(trials, indent=1))
                    _log_trial(trials[-1])
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}); cleaned up the running trial; reporting what finished")
        return trials, True
    return trials, False


def _markdown(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    info: MachineFacts,
    problems: list[str],
    started: dt.datetime,
    outdir: Path,
    base: Baseline | None,
) -> None:
    try:
        rel = str(outdir.relative_to(REPO))
    except ValueError:
        rel = str(outdir)
    rep = RunReport(
        started=started.strftime("%Y-%m-%d %H:%M UTC"),
        info=info,
        messages=args.messages,
        sessions=args.sessions,
        runs=args.runs,
        sizes=tuple(args.size_list),
        mtas=tuple(args.mta_list),
        reuse_sessions=args.reuse_sessions,
        settle=args.settle,
        commands=report_commands(
            sessions=args.sessions,
            messages=args.messages,
            reuse_sessions=args.reuse_sessions,
            postfix_log=not args.postfix_no_log,
        ),
        results_rel=rel,
        problems=tuple(problems),
        baseline=base.label if base is not None else "",
    )
    md = Path(args.markdown)
    write_report(md, rows, rep, dkim=args.dkim)  # a --dkim run: its own section only
    print(f"updated {md}")


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        preflight(args)
    except BenchError as exc:
        print(f"run_bench: {exc}", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    outdir = Path(args.results_dir) / started.strftime("%Y%m%dT%H%M%SZ")
    outdir.mkdir(parents=True, exist_ok=True)
    # The baseline's worktree lives for the whole run and goes on every way out of it.
    with contextlib.ExitStack() as stack:
        base = None
        try:
            if args.baseline:
                base = stack.enter_context(
                    baseline_worktree(REPO, args.baseline, Path(args.workdir))
                )
                engine_file = check_baseline(args, base, outdir)
                log(f"{BASELINE_MTA}: engine imported from {engine_file}")
        except BenchError as exc:
            print(f"run_bench: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            log(f"interrupted ({exc}) while preparing the baseline")
            return 1
        return _run(args, started, outdir, base)


def _run(
    args: argparse.Namespace, started: dt.datetime, outdir: Path, base: Baseline | None
) -> int:
    """The trials, the summary and the report of a prepared run; the exit code."""
    info = machine_facts()
    etc_before = etc_postfix_fingerprint()
    log(
        f"results -> {outdir}; {args.messages} msgs x sizes {args.size_list} x {args.runs} runs; "
        f"{info.nproc} CPUs {info.cpu_model}"
    )
    trials, interrupted = run_trials(args, outdir, base)
    etc_unchanged = etc_before == etc_postfix_fingerprint()
    problems = collect_problems(trials, etc_unchanged)
    rows = summarize(trials, args.size_list)
    summary = {
        "started": started.isoformat(timespec="seconds"),
        "machine": dataclasses.asdict(info),
        "args": vars(args),
        "rows": rows,
        "problems": problems,
        "etc_postfix_unchanged": etc_unchanged,
        "interrupted": interrupted,
        "baseline": dataclasses.asdict(base) if base is not None else None,
    }
    (outdir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print()
    print(table_text(rows))
    if problems:
        print("\nProblems:")
        for p in problems:
            print(" -", p)
    print(f"\nraw results: {outdir}")
    if args.markdown and trials and not interrupted:
        _markdown(args, rows, info, problems, started, outdir, base)
    return 1 if interrupted or any(not t.get("ok") for t in trials) else 0


if __name__ == "__main__":
    sys.exit(main())
