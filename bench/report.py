"""The report: console table, and the generated sections of BENCHMARKS.md.

Exports:
    RunReport              what a section says about the run besides its rows
    report_commands(...)   pure: the per-trial commands, with placeholders, as printed
    table_md(rows)         the table of every MTA (the relay section's, and the DKIM one's end)
    table_dkim_md(rows)    nimbus DKIM off vs on, one line per size
    table_baseline_md(rows)  nimbus vs nimbus-baseline (an older revision), one line per size
    table_text(rows)       the console summary
    relay_section(rows, rep), dkim_section(rows, rep)   whole sections, markers included
    splice_section(...)    pure: a section put in place of its previous version
    write_report(...)      the one BENCHMARKS.md section of this run, rewritten

The output format is fixed: numbers of a new run must be comparable, line by line, with
those of older runs already in BENCHMARKS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.baseline import BASELINE_MTA, baseline_command, baseline_env
from bench.load import source_command
from bench.machine import MachineFacts
from bench.nimbus import NIMBUS_MTAS, nimbus_command, nimbus_env
from bench.nimbus_policy import DKIM_DATA
from bench.postfix import postfix_commands
from bench.sink import SINK_COMMAND

__all__ = [
    "RunReport",
    "report_commands",
    "MD_BEGIN",
    "MD_END",
    "MD_DKIM_BEGIN",
    "MD_DKIM_END",
    "fmt",
    "table_md",
    "table_dkim_md",
    "table_baseline_md",
    "table_text",
    "relay_section",
    "dkim_section",
    "splice_section",
    "write_report",
]

MD_BEGIN = "<!-- BEGIN run_bench.py results (generated; replaced on every run) -->"
MD_END = "<!-- END run_bench.py results -->"
MD_DKIM_BEGIN = (
    "<!-- BEGIN run_bench.py --dkim results (generated; replaced on every --dkim run) -->"
)
MD_DKIM_END = "<!-- END run_bench.py --dkim results -->"
Row = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunReport:
    """started: "YYYY-MM-DD HH:MM UTC"; commands: shell lines per part ("sink", "source",
    "postfix", "nimbus", "nimbus-dkim", "nimbus-baseline"); results_rel: the raw results
    directory, relative to the repository when inside it; problems: from
    ``bench.stats.collect_problems``; baseline: ``bench.baseline.Baseline.label`` of the
    run's nimbus-baseline, "" when it had none."""

    started: str
    info: MachineFacts
    messages: int
    sessions: int
    runs: int
    sizes: tuple[int, ...]
    mtas: tuple[str, ...]
    reuse_sessions: bool
    settle: float
    commands: dict[str, list[str]]
    results_rel: str
    problems: tuple[str, ...] = ()
    baseline: str = ""


def report_commands(
    *, sessions: int, messages: int, reuse_sessions: bool, postfix_log: bool
) -> dict[str, list[str]]:
    """The per-trial commands with placeholders ($TMP, PORT, SINKPORT, ...) for the report."""
    tmp = Path("$TMP")
    env = nimbus_env(tmp / "nimbus", "PORT", "HTTPPORT", "SINKPORT")
    nimbus = [nimbus_command(env)]
    source = source_command(
        sessions=sessions,
        messages=messages,
        size="SIZE",
        port="PORT",
        reuse_sessions=reuse_sessions,
    )
    return {
        "sink": [SINK_COMMAND],
        "source": [" ".join(source)],
        "postfix": postfix_commands(tmp / "postfix", "PORT", "SINKPORT", postfix_log),
        "nimbus": nimbus,
        "nimbus-dkim": nimbus,  # the same command; only its policy directory differs
        BASELINE_MTA: [baseline_command(baseline_env(Path("$BASELINE"), env))],
    }


def _problems_md(problems: tuple[str, ...]) -> str:
    if not problems:
        return "No trial errors; no warnings or errors in nimbus stderr."
    return "Problems seen:\n" + "\n".join("- " + p for p in problems)


def fmt(x: float | None, spec: str = ".0f") -> str:
    return "—" if x is None else format(x, spec)


def table_md(rows: list[Row]) -> str:
    out = [
        "| size (B) | MTA | msgs/s e2e, median (min–max) | ingress msgs/s | MTA CPU ms/msg "
        "| whole-box CPU ms/msg | background CPU % before | nimbus/postfix e2e | nimbus peak RSS | trials ok |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = ""
        if r["mta"] in NIMBUS_MTAS and r.get("ratio") is not None:
            pr = ", ".join(f"{p:.2f}" for p in r.get("ratio_paired", []))
            ratio = f"**{r['ratio']:.2f}×** (per run: {pr})"
        rss = f"{r['peak_rss_mb']:.0f} MiB" if r.get("peak_rss_mb") else ""
        e2e = f"**{fmt(r['e2e'])}** ({fmt(r['e2e_min'])}–{fmt(r['e2e_max'])})" if r["e2e"] else "—"
        out.append(
            f"| {r['size']} | {r['mta']} | {e2e} | {fmt(r['ingress'])} | {fmt(r['mta_cpu'], '.2f')} "
            f"| {fmt(r['box_cpu'], '.2f')} | {fmt(r['background'], '.0f')} | {ratio} | {rss} | {r['trials_ok']}/{r['trials']} |"
        )
    return "\n".join(out)


def table_text(rows: list[Row]) -> str:
    hdr = f"{'size':>6} {'MTA':15} {'e2e/s':>8} {'(min-max)':>13} {'ingress/s':>9} {'MTAcpu':>7} {'boxcpu':>7} {'ratio':>6} {'RSS MiB':>7} {'bg%':>4} ok"
    out = [hdr, "-" * len(hdr)]
    for r in rows:
        rng = f"{fmt(r['e2e_min'])}-{fmt(r['e2e_max'])}" if r["e2e"] else ""
        out.append(
            f"{r['size']:>6} {r['mta']:15} {fmt(r['e2e']):>8} {rng:>13} {fmt(r['ingress']):>9} "
            f"{fmt(r['mta_cpu'], '.2f'):>7} {fmt(r['box_cpu'], '.2f'):>7} "
            f"{fmt(r.get('ratio'), '.2f'):>6} {fmt(r.get('peak_rss_mb'), '.0f'):>7} {fmt(r.get('background')):>4} "
            f"{r['trials_ok']}/{r['trials']}"
            + (f"   DKIM on/off {r['dkim_ratio']:.2f}" if r.get("dkim_ratio") else "")
            + (f"   vs baseline {r['baseline_ratio']:.2f}" if r.get("baseline_ratio") else "")
        )
    return "\n".join(out)


def relay_section(rows: list[Row], rep: RunReport) -> str:
    """The relay section (nimbus vs Postfix), markers included."""
    info, cmds = rep.info, rep.commands
    return f"""{MD_BEGIN}
## Relay throughput: nimbus vs Postfix (bench/run_bench.py)

Run {rep.started} on `{info.hostname}`: {info.nproc} CPUs ({info.cpu_model}), {info.mem_gib} GiB,
kernel {info.kernel}, Python {info.python}, Postfix {info.postfix}, nimbus {info.nimbus}
(git `{info.git}`). Load generator, MTA and sink share the same cores; the machine is shared
and noisy, so **only the ratios inside one run mean anything**.

Method: {rep.messages} messages per trial, {rep.sessions} parallel sessions,
{"one session per message" if not rep.reuse_sessions else "sessions reused (-d)"}; {rep.runs} run(s), Postfix and nimbus
trials interleaved (order alternating per run), medians shown. Every trial starts a fresh sink and a
fresh MTA instance (startup not timed). **e2e** = N / (time from starting smtp-source until the
sink's own `-c` counter reached N); **ingress** = N / (time until smtp-source exited).
**MTA CPU** = utime+stime of the MTA's processes over the same window (nimbus: its process;
Postfix: master + live children + reaped children); **whole-box CPU** = non-idle jiffies from
`/proc/stat` (includes smtp-source, smtp-sink and whatever else runs on the shared box;
"background" is the box's busy share in the {rep.settle:g} s idle gap just before each trial).
Postfix logs to a file (`maillog_file`), as a real install logs to syslog; nimbus writes its
NDJSON log records. Ratio = median nimbus e2e /
median Postfix e2e (per-run paired ratios in brackets).

Commands (per trial; ports are picked free on 127.0.0.1):

```
{chr(10).join(cmds["sink"])}
{chr(10).join(cmds["source"])}
# Postfix: a throwaway instance ($TMP = a fresh directory under --workdir, mode 0755)
{chr(10).join(cmds["postfix"])}
# nimbus
{chr(10).join(cmds["nimbus"])}
```

{table_md(rows)}
{_baseline_md(rows, rep)}
Raw per-trial JSON, nimbus stderr logs and Postfix warning lines: `{rep.results_rel}/` (not committed).
{_problems_md(rep.problems)}
{MD_END}
"""


def splice_section(text: str | None, begin: str, end: str, section: str) -> str:
    """``text`` with ``section`` (which starts with ``begin`` and ends with ``end``) in place
    of the previous one between the same markers, else appended; a new file if None."""
    if text is None:
        return (
            "# Nimbus benchmarks\n\nGenerated sections are rewritten by the script named in "
            "their heading; edit outside the markers.\n\n" + section
        )
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        return head + section.rstrip("\n") + tail
    return text.rstrip("\n") + "\n\n" + section


def write_report(path: Path, rows: list[Row], rep: RunReport, dkim: bool) -> None:
    """Replace the relay section of ``path`` (BENCHMARKS.md), or the DKIM one for a
    ``--dkim`` run: a DKIM run leaves the relay section (a bigger run) alone."""
    if dkim:
        begin, end, section = MD_DKIM_BEGIN, MD_DKIM_END, dkim_section(rows, rep)
    else:
        begin, end, section = MD_BEGIN, MD_END, relay_section(rows, rep)
    text = path.read_text() if path.exists() else None
    path.write_text(splice_section(text, begin, end, section))


def table_dkim_md(rows: list[Row]) -> str:
    """DKIM off vs on, one line per size."""
    out = [
        "| size (B) | nimbus e2e msgs/s (DKIM off) | nimbus-dkim e2e msgs/s (DKIM on) "
        "| on/off e2e | MTA CPU ms/msg off | on (incl. signing worker) | whole-box CPU ms/msg off | on |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sorted({r["size"] for r in rows}):
        off = next((r for r in rows if r["size"] == size and r["mta"] == "nimbus"), None)
        on = next((r for r in rows if r["size"] == size and r["mta"] == "nimbus-dkim"), None)
        if off is None or on is None:
            continue
        ratio = "—"
        if on.get("dkim_ratio") is not None:
            pr = ", ".join(f"{p:.2f}" for p in on.get("dkim_ratio_paired", []))
            ratio = f"**{on['dkim_ratio']:.2f}×** (per run: {pr})"
        out.append(
            f"| {size} | **{fmt(off['e2e'])}** ({fmt(off['e2e_min'])}–{fmt(off['e2e_max'])}) "
            f"| **{fmt(on['e2e'])}** ({fmt(on['e2e_min'])}–{fmt(on['e2e_max'])}) | {ratio} "
            f"| {fmt(off['mta_cpu'], '.2f')} | {fmt(on['mta_cpu'], '.2f')} "
            f"| {fmt(off['box_cpu'], '.2f')} | {fmt(on['box_cpu'], '.2f')} |"
        )
    return "\n".join(out)


def dkim_section(rows: list[Row], rep: RunReport) -> str:
    """The DKIM section (nimbus DKIM off vs on, then every MTA of the run), markers included."""
    info, cmds = rep.info, rep.commands
    return f"""{MD_DKIM_BEGIN}
## DKIM signing cost: nimbus with DKIM off vs on (bench/run_bench.py --dkim)

Run {rep.started} on `{info.hostname}`: {info.nproc} CPUs ({info.cpu_model}), {info.mem_gib} GiB,
kernel {info.kernel}, Python {info.python}, Postfix {info.postfix}, nimbus {info.nimbus}
(git `{info.git}`). Same method as the relay section: {rep.messages} messages of
{", ".join(str(s) for s in rep.sizes)} B per trial, {rep.sessions} parallel sessions, {rep.runs} run(s),
MTAs {", ".join(rep.mtas)} interleaved (order alternating per run), medians shown; the
machine is shared and noisy, so compare within this run only. **nimbus-dkim** is the same
`nimbus mta` with the same policy as nimbus (the bundled one minus the default shaping rate
limits) plus a `dkim_data.toml` naming a key, so the bundled policy signs every message
(rsa-sha256, 2048-bit key from `openssl genrsa -traditional`, relaxed/relaxed, dkimpy's
default header list) and signing is the only difference;
its MTA CPU includes the signing worker process (a child of nimbus). On/off = median
nimbus-dkim e2e / median nimbus e2e (per-run paired ratios in brackets).

```
# policy/dkim_data.toml (added to the benchmark's copy of the bundled policy)
{DKIM_DATA.rstrip()}
# nimbus-dkim
{chr(10).join(cmds["nimbus-dkim"])}
```

{table_dkim_md(rows)}

All MTAs of the run:

{table_md(rows)}
{_baseline_md(rows, rep)}
Raw per-trial JSON and nimbus stderr logs: `{rep.results_rel}/` (not committed).
{_problems_md(rep.problems)}
{MD_DKIM_END}
"""


def table_baseline_md(rows: list[Row]) -> str:
    """nimbus vs nimbus-baseline, one line per size."""
    out = [
        "| size (B) | nimbus e2e msgs/s | nimbus-baseline e2e msgs/s | nimbus / nimbus-baseline e2e "
        "| MTA CPU ms/msg nimbus | baseline | nimbus peak RSS | baseline |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sorted({r["size"] for r in rows}):
        cur = next((r for r in rows if r["size"] == size and r["mta"] == "nimbus"), None)
        old = next((r for r in rows if r["size"] == size and r["mta"] == BASELINE_MTA), None)
        if cur is None or old is None:
            continue
        ratio = "—"
        if cur.get("baseline_ratio") is not None:
            pr = ", ".join(f"{p:.2f}" for p in cur.get("baseline_ratio_paired", []))
            ratio = f"**{cur['baseline_ratio']:.2f}×** (per run: {pr})"
        out.append(
            f"| {size} | **{fmt(cur['e2e'])}** ({fmt(cur['e2e_min'])}–{fmt(cur['e2e_max'])}) "
            f"| **{fmt(old['e2e'])}** ({fmt(old['e2e_min'])}–{fmt(old['e2e_max'])}) | {ratio} "
            f"| {fmt(cur['mta_cpu'], '.2f')} | {fmt(old['mta_cpu'], '.2f')} "
            f"| {fmt(cur.get('peak_rss_mb'))} MiB | {fmt(old.get('peak_rss_mb'))} MiB |"
        )
    return "\n".join(out)


def _baseline_md(rows: list[Row], rep: RunReport) -> str:
    """The baseline's paragraph, command and table; "" for a run without one."""
    if not rep.baseline:
        return ""
    return f"""
Baseline: **{BASELINE_MTA}** is nimbus at git
{rep.baseline},
run in this run from a detached worktree of that revision (`$BASELINE`) with its own
`policy/` (minus the same two default rate lines), the same harness and settings,
interleaved with the other MTAs. Its row above has its own ratio to Postfix;
nimbus / nimbus-baseline = median nimbus e2e / median nimbus-baseline e2e (per-run paired
ratios in brackets): unlike a ratio from an older run, it does not move with the box's
speed from day to day.

```
{chr(10).join(rep.commands[BASELINE_MTA])}
```

{table_baseline_md(rows)}
"""
