"""The benchmark's pure parts: counter parsing, medians and ratios, report format, checks."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from bench.baseline import (
    BASELINE_MTA,
    Baseline,
    baseline_argv,
    baseline_env,
    engine_origin_error,
)
from bench.harness import Placement
from bench.load import source_command
from bench.machine import REPO, MachineFacts
from bench.nimbus import NimbusBaselineHarness, NimbusHarness
from bench.nimbus_output import (
    dkim_pool_started,
    is_dkim_worker,
    parse_metrics,
    ready_smtp_port,
    record_types,
    scan_stderr,
)
from bench.nimbus_policy import BUNDLED_POLICY, strip_default_rate_limits, write_bench_policy
from bench.postfix import rewrite_master_cf, scan_maillog
from bench.report import (
    MD_BEGIN,
    MD_END,
    RunReport,
    relay_section,
    report_commands,
    splice_section,
    table_baseline_md,
    table_dkim_md,
    table_md,
    table_text,
)
from bench.run_bench import parse_args
from bench.sink import parse_counter
from bench.stats import collect_problems, median, paired_ratios, summarize
from bench.support import BenchError
from bench.trial import make_harness


def trial(mta: str, run: int, e2e: float, size: int = 4096, ok: bool = True, **kw) -> dict:
    """A trial result as run_trial returns it (only the fields the summary reads)."""
    return {
        "mta": mta,
        "size": size,
        "run": run,
        "ok": ok,
        "e2e_msgs_per_s": e2e,
        "ingress_msgs_per_s": kw.get("ingress", e2e),
        "mta_cpu_ms_per_msg": kw.get("cpu", 2.0),
        "box_cpu_ms_per_msg": kw.get("box", 3.0),
        "background_box_cpu_pct": kw.get("bg", 0.0),
        **({"peak_rss_kb": kw["rss"]} if "rss" in kw else {}),
        **({"error": kw["error"]} if "error" in kw else {}),
    }


# --------------------------------------------------------------------------- sink counter


@pytest.mark.parametrize(
    ("buf", "count", "tail"),
    [
        (b"", None, b""),
        (b"mesg=12", None, b"mesg=12"),  # no CR yet: the number may go on in the next read
        (b"mesg=12\r", 12, b""),
        (b"conn=3 mesg=12\rconn=3 mesg=13\r", 13, b""),
        (b"mesg=9\rmesg=1", 9, b"mesg=1"),  # "mesg=1" may be the start of "mesg=10"
        (b"mesg=5\nmesg=6\r\n", 6, b""),
        (b"conn=1\r", None, b""),
    ],
)
def test_parse_counter(buf, count, tail):
    """The highest count of the complete updates is read; an unfinished one is kept."""
    assert parse_counter(buf) == (count, tail)


def test_parse_counter_split_number_is_read_whole():
    """A number split across two reads counts once, whole (100, never 10)."""
    count, tail = parse_counter(b"mesg=99\rmesg=10")
    assert count == 99
    assert parse_counter(tail + b"0\r") == (100, b"")


# --------------------------------------------------------------------------- medians, ratios


@pytest.mark.parametrize(
    ("xs", "expected"),
    [([], None), ([3.0], 3.0), ([3.0, 1.0, 2.0], 2.0), ([1.0, 2.0, 3.0, 10.0], 2.5)],
)
def test_median(xs, expected):
    """The middle value (mean of the two middle ones for an even count); None for none."""
    assert median(xs) == expected


def test_summarize_medians_and_ranges():
    """Each row has the median of its ok trials and their min and max; failed trials count
    only in the trials column."""
    trials = [
        trial("postfix", 1, 500, cpu=3.0),
        trial("postfix", 2, 470, cpu=3.2),
        trial("postfix", 3, 520, cpu=2.8),
        trial("postfix", 4, 0, ok=False, error="timeout"),
    ]
    (row,) = summarize(trials, [4096])
    assert (row["e2e"], row["e2e_min"], row["e2e_max"]) == (500, 470, 520)
    assert row["mta_cpu"] == 3.0
    assert (row["trials_ok"], row["trials"]) == (3, 4)
    assert row["peak_rss_mb"] is None  # Postfix has no peak RSS column


def test_summarize_ratio_is_of_medians_and_paired_per_run():
    """ratio = median nimbus e2e / median Postfix e2e; paired = the same per run."""
    trials = [
        trial("postfix", 1, 400),
        trial("nimbus", 1, 600, rss=70 * 1024),
        trial("postfix", 2, 500),
        trial("nimbus", 2, 500, rss=80 * 1024),
        trial("postfix", 3, 600),
        trial("nimbus", 3, 660, rss=75 * 1024),
    ]
    rows = summarize(trials, [4096])
    assert [r["mta"] for r in rows] == ["postfix", "nimbus"]
    nimbus = rows[1]
    assert nimbus["ratio"] == pytest.approx(600 / 500)
    assert nimbus["ratio_paired"] == pytest.approx([1.5, 1.0, 1.1])
    assert nimbus["peak_rss_mb"] == 80  # the highest of the run


def test_paired_ratios_skip_runs_missing_either_side():
    """A run where one MTA failed gives no paired ratio."""
    trials = [
        trial("postfix", 1, 400),
        trial("nimbus", 1, 600),
        trial("postfix", 2, 500, ok=False),
        trial("nimbus", 2, 500),
    ]
    assert paired_ratios(trials, 4096, "nimbus", "postfix") == [1.5]


def test_summarize_dkim_ratio_against_nimbus():
    """nimbus-dkim gets both its ratio to Postfix and its on/off ratio to plain nimbus."""
    trials = [trial("postfix", 1, 500), trial("nimbus", 1, 600), trial("nimbus-dkim", 1, 480)]
    dkim = summarize(trials, [4096])[2]
    assert dkim["ratio"] == pytest.approx(480 / 500)
    assert dkim["dkim_ratio"] == pytest.approx(0.8)
    assert dkim["dkim_ratio_paired"] == pytest.approx([0.8])


def test_summarize_keeps_size_order_and_skips_absent_mtas():
    """Rows come by size as given, then postfix, nimbus, nimbus-dkim; no row for an MTA
    that did not run at that size, and no ratio without Postfix."""
    trials = [trial("nimbus", 1, 600, size=40960), trial("nimbus", 1, 700, size=4096)]
    rows = summarize(trials, [40960, 4096])
    assert [(r["size"], r["mta"]) for r in rows] == [(40960, "nimbus"), (4096, "nimbus")]
    assert "ratio" not in rows[0]


# --------------------------------------------------------------------------- report format

# The relay table exactly as BENCHMARKS.md shows it (run of 2026-11-21): new runs must print
# the same columns, so their numbers compare line by line with the old ones.
BENCHMARKS_TABLE = """\
| size (B) | MTA | msgs/s e2e, median (min–max) | ingress msgs/s | MTA CPU ms/msg | whole-box CPU ms/msg | background CPU % before | nimbus/postfix e2e | nimbus peak RSS | trials ok |
|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|
| 4096 | postfix | **517** (470–524) | 616 | 3.02 | 3.70 | 0 |  |  | 3/3 |
| 4096 | nimbus | **664** (629–722) | 663 | 1.65 | 1.99 | 0 | **1.28×** (per run: 1.22, 1.54, 1.27) | 72 MiB | 3/3 |"""


def benchmark_rows() -> list[dict]:
    return [
        {
            "size": 4096,
            "mta": "postfix",
            "trials_ok": 3,
            "trials": 3,
            "e2e": 517.3,
            "e2e_min": 470.2,
            "e2e_max": 524.0,
            "ingress": 616.0,
            "mta_cpu": 3.02,
            "box_cpu": 3.7,
            "background": 0.0,
            "peak_rss_mb": None,
        },
        {
            "size": 4096,
            "mta": "nimbus",
            "trials_ok": 3,
            "trials": 3,
            "e2e": 664.0,
            "e2e_min": 629.0,
            "e2e_max": 722.0,
            "ingress": 663.0,
            "mta_cpu": 1.65,
            "box_cpu": 1.99,
            "background": 0.0,
            "peak_rss_mb": 72.2,
            "ratio": 664.0 / 517.3,
            "ratio_paired": [1.22, 1.54, 1.27],
        },
    ]


def test_table_md_matches_benchmarks_format():
    """The relay table renders exactly the columns and number formats of BENCHMARKS.md."""
    assert table_md(benchmark_rows()) == BENCHMARKS_TABLE


def test_table_md_failed_mta_shows_dashes():
    """An MTA with no ok trial shows a dash instead of numbers, and 0/N trials ok."""
    row = {**benchmark_rows()[0], "e2e": None, "ingress": None, "mta_cpu": None}
    row.update(box_cpu=None, background=None, trials_ok=0)
    line = table_md([row]).splitlines()[2]
    assert line == "| 4096 | postfix | — | — | — | — | — |  |  | 0/3 |"


def test_table_dkim_md_one_line_per_size():
    """DKIM off vs on: both medians with ranges, the on/off ratio, CPU of both."""
    off = {**benchmark_rows()[1], "e2e": 573.0, "e2e_min": 568.0, "e2e_max": 640.0}
    off.update(mta_cpu=1.86, box_cpu=2.23)
    on = {**off, "mta": "nimbus-dkim", "e2e": 477.0, "e2e_min": 466.0, "e2e_max": 508.0}
    on.update(mta_cpu=2.81, box_cpu=3.21, dkim_ratio=0.83, dkim_ratio_paired=[0.81, 0.79, 0.84])
    assert table_dkim_md([off, on]).splitlines()[2] == (
        "| 4096 | **573** (568–640) | **477** (466–508) | **0.83×** (per run: 0.81, 0.79, 0.84) "
        "| 1.86 | 2.81 | 2.23 | 3.21 |"
    )


def test_report_commands_match_benchmarks():
    """The per-trial commands with placeholders are the ones BENCHMARKS.md prints."""
    cmds = report_commands(sessions=20, messages=10000, reuse_sessions=False, postfix_log=True)
    assert cmds["sink"] == ["smtp-sink -c -m 1024 -u nobody 127.0.0.1:SINKPORT 1024"]
    assert cmds["source"] == [
        "smtp-source -s 20 -m 10000 -l SIZE -f bench@source.example -t user@sink.example "
        "127.0.0.1:PORT"
    ]
    assert cmds["postfix"][1] == (
        "postconf -c $TMP/postfix/conf -e queue_directory=$TMP/postfix/queue "
        "data_directory=$TMP/postfix/data compatibility_level=3.6 mydestination= "
        "relayhost=[127.0.0.1]:SINKPORT mynetworks=127.0.0.0/8 "
        "smtp_destination_concurrency_limit=50 default_process_limit=200 "
        "inet_interfaces=127.0.0.1 maillog_file=$TMP/postfix/maillog "
        "maillog_file_prefixes=$TMP/postfix"
    )
    assert (
        cmds["nimbus"]
        == cmds["nimbus-dkim"]
        == [
            "NIMBUS_SMTP_LISTEN=127.0.0.1:PORT NIMBUS_HTTP_LISTEN=127.0.0.1:HTTPPORT "
            "NIMBUS_SPOOL_DIR=$TMP/nimbus/spool NIMBUS_LOG_DIR=$TMP/nimbus/logs "
            "NIMBUS_SINK_ENABLED=true NIMBUS_SINK_ENDPOINT=127.0.0.1:SINKPORT "
            "NIMBUS_POLICY_DIR=$TMP/nimbus/policy nimbus mta"
        ]
    )


def test_source_command_reuse_sessions_adds_d():
    """--reuse-sessions is smtp-source -d, just before the target."""
    cmd = source_command(sessions=5, messages=10, size=4096, port=2525, reuse_sessions=True)
    assert cmd[-2:] == ["-d", "127.0.0.1:2525"]


def report(problems: tuple[str, ...] = ()) -> RunReport:
    info = MachineFacts(
        nproc=2,
        cpu_model="AMD EPYC",
        kernel="6.1",
        mem_gib=23.5,
        python="3.11.7",
        postfix="3.7.11",
        nimbus="0.1.0",
        git="abc1234",
        hostname="vm",
    )
    cmds = report_commands(sessions=20, messages=10000, reuse_sessions=False, postfix_log=True)
    return RunReport(
        started="2026-11-21 20:21 UTC",
        info=info,
        messages=10000,
        sessions=20,
        runs=3,
        sizes=(4096,),
        mtas=("postfix", "nimbus"),
        reuse_sessions=False,
        settle=2.0,
        commands=cmds,
        results_rel="bench/results/x",
        problems=problems,
    )


def test_relay_section_has_markers_facts_and_table():
    """The section starts and ends with its markers and carries the run's facts and table."""
    text = relay_section(benchmark_rows(), report())
    assert text.startswith(MD_BEGIN + "\n## Relay throughput: nimbus vs Postfix")
    assert text.rstrip("\n").endswith(MD_END)
    assert "Run 2026-11-21 20:21 UTC on `vm`: 2 CPUs (AMD EPYC), 23.5 GiB," in text
    assert (
        "Method: 10000 messages per trial, 20 parallel sessions,\none session per message" in text
    )
    assert BENCHMARKS_TABLE in text
    assert "No trial errors; no warnings or errors in nimbus stderr." in text


def test_relay_section_lists_problems():
    """Problems are listed one per line under "Problems seen:"."""
    text = relay_section(benchmark_rows(), report(problems=("a: FAILED", "b: warn")))
    assert "Problems seen:\n- a: FAILED\n- b: warn\n" + MD_END in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            None,
            "# Nimbus benchmarks\n\nGenerated sections are rewritten by the script named "
            "in their heading; edit outside the markers.\n\n<B>new<E>\n",
        ),
        ("head\n<B>old<E>\ntail\n", "head\n<B>new<E>\ntail\n"),
        ("head\n\n", "head\n\n<B>new<E>\n"),
    ],
)
def test_splice_section(text, expected):
    """A section replaces its previous version between the markers, else is appended."""
    assert splice_section(text, "<B>", "<E>", "<B>new<E>\n") == expected


# --------------------------------------------------------------------------- problems


def test_collect_problems_names_trial_and_cause():
    """Each failure, warning, nimbus stderr problem and maillog problem gets a tagged line."""
    failed = trial("nimbus", 1, 0, ok=False, error="stalled")
    warned = {**trial("postfix", 2, 500), "warning": "sink counted 1001 messages for 1000 sent"}
    warned["post"] = {"maillog_problem_lines": 5, "maillog_problems_file": "r2.txt"}
    bad_exit = {**trial("nimbus", 2, 600), "post": {"exit_code": -9, "stderr_problem_lines": ["x"]}}
    assert collect_problems([failed, warned, bad_exit], etc_postfix_unchanged=False) == [
        "run 1 4096 B nimbus: FAILED: stalled",
        "run 2 4096 B postfix: sink counted 1001 messages for 1000 sent",
        "run 2 4096 B postfix: 5 warning/error lines in Postfix maillog (r2.txt)",
        "run 2 4096 B nimbus: nimbus stderr: `x`",
        "run 2 4096 B nimbus: nimbus exit code -9 after SIGTERM",
        "/etc/postfix changed during the run (it must not)",
    ]


# --------------------------------------------------------------------------- nimbus output


@pytest.mark.parametrize(
    ("line", "started"),
    [
        ('{"level":"info","event":"dkim_workers_started","workers":1}', True),
        ('{"level":"info","event":"dkim worker started"}', True),
        ('{"level":"info","event":"DKIM workers started"}', True),
        ('{"level":"info","event":"dkim_worker_pool_started"}', True),
        ("dkim worker started", True),  # a plain-text line
        ('{"level":"error","event":"dkim_worker_died"}', False),
        ('{"level":"info","event":"ready","smtp_port":2525}', False),
    ],
)
def test_dkim_pool_started_any_spelling(line, started):
    """The DKIM pool's start is recognised under the old and the snake_case event name."""
    assert dkim_pool_started([line]) is started


@pytest.mark.parametrize(
    ("cmdline", "worker"),
    [
        (
            "/v/bin/python3 -c from multiprocessing.spawn import spawn_main; spawn_main("
            "tracker_fd=5, pipe_handle=7) --multiprocessing-fork",
            True,
        ),
        ("/v/bin/python3 -c from multiprocessing.resource_tracker import main;main(4)", False),
        ("/v/bin/python3 /v/bin/nimbus mta", False),
    ],
)
def test_is_dkim_worker(cmdline, worker):
    """Pool workers are spawn children; the resource tracker is not a signing worker."""
    assert is_dkim_worker(cmdline) is worker


def test_ready_smtp_port():
    """The ready line's port is read; None until there is one."""
    assert ready_smtp_port(['{"event":"listening"}']) is None
    assert ready_smtp_port(["junk", '{"event": "ready", "smtp_port": 2525}']) == 2525


def test_scan_stderr_levels_and_problems():
    """Lines are counted per level; warnings and non-JSON lines are problems."""
    lines = ['{"level":"info","event":"a"}', '{"level":"warning","event":"b"}', "Traceback"]
    scan = scan_stderr(lines)
    assert scan.levels == {"info": 1, "warning": 1, "non-json": 1}
    assert scan.problems == lines[1:]
    assert not scan.dkim_pool_started


def test_record_types():
    """Records are counted per type; lines that are not JSON are counted apart."""
    lines = ['{"type":"Reception"}', '{"type":"Delivery"}', '{"type":"Delivery"}', "{"]
    assert record_types(lines) == ({"Reception": 1, "Delivery": 2}, 1)


def test_parse_metrics_sums_families():
    """Samples of a family are summed across labels; _created and _bucket are dropped."""
    text = (
        "# HELP nimbus_delivered_total x\n"
        'nimbus_delivered_total{queue="a"} 3.0\n'
        'nimbus_delivered_total{queue="b"} 4.0\n'
        "nimbus_delivered_created 1.7e9\n"
        'nimbus_latency_seconds_bucket{le="1"} 2.0\n'
        "nimbus_latency_seconds_count 2.0\n"
    )
    assert parse_metrics(text) == {
        "nimbus_delivered_total": 7.0,
        "nimbus_latency_seconds_count": 2.0,
    }


# --------------------------------------------------------------------------- Postfix, policy


def test_scan_maillog_statuses_and_problems():
    """status= values are counted; benign Debian warnings are counted apart from problems."""
    lines = [
        "postfix/smtp[1]: ABC: to=<u@s>, relay=x, status=sent (250 ok)",
        "postfix/smtp[1]: ABD: to=<u@s>, status=deferred (timeout)",
        "postfix/smtp[1]: ABE: to=<u@s>, status=expired",
        "postfix/smtpd[2]: warning: hash:/etc/aliases: open database /etc/aliases.db: "
        "No such file or directory",
        "postfix/qmgr[3]: warning: mail for [127.0.0.1]:1 is using up 4001 of 4001 active queue",
    ]
    scan = scan_maillog(lines)
    assert scan.status == {"sent": 1, "deferred": 1, "bounced": 0, "other_status": 1}
    assert scan.benign == 1
    assert scan.problems == [lines[4]]


def test_rewrite_master_cf_binds_smtp_to_loopback():
    """The smtp inet service gets 127.0.0.1:PORT as its name; other lines stay."""
    text = "# comment\nsmtp      inet  n       -       y       -       -       smtpd\n"
    text += "pickup    unix  n       -       y       60      1       pickup\n"
    out = rewrite_master_cf(text, 2525)
    assert out.splitlines()[1].startswith("127.0.0.1:2525      inet  n")
    assert out.splitlines()[2] == text.splitlines()[2]


@pytest.mark.parametrize(
    "text",
    [
        "pickup    unix  n       -       y       60      1       pickup\n",
        "smtp inet n - y - - smtpd\nsubmission inet n - y - - smtpd\n",
    ],
)
def test_rewrite_master_cf_refuses(text):
    """No smtp inet line, or another inet service that would bind elsewhere: refused."""
    with pytest.raises(BenchError):
        rewrite_master_cf(text, 2525)


def test_strip_default_rate_limits_of_bundled_policy():
    """The bundled shaping.toml loses exactly its two default rate lines, nothing else."""
    text = (REPO / "policy" / "shaping.toml").read_text()
    out = strip_default_rate_limits(text)
    assert len(text.splitlines()) - len(out.splitlines()) == 2
    assert 'max_message_rate = "100/s"' not in out
    assert 'max_connection_rate = "100/min"' not in out


def test_strip_default_rate_limits_refuses_a_changed_file():
    """If the two lines are not both there, the bench refuses to guess."""
    with pytest.raises(BenchError, match="rate lines changed"):
        strip_default_rate_limits('[default]\nmax_message_rate = "100/s"\n')


# --------------------------------------------------------------------------- baseline


def test_summarize_baseline_ratios():
    """nimbus-baseline gets its own ratio to Postfix; the nimbus row gets nimbus /
    nimbus-baseline, of the medians and per run."""
    trials = [
        trial("postfix", 1, 400),
        trial("nimbus", 1, 600),
        trial("nimbus-baseline", 1, 500),
        trial("postfix", 2, 500),
        trial("nimbus", 2, 550),
        trial("nimbus-baseline", 2, 550),
        trial("postfix", 3, 450),
        trial("nimbus", 3, 660),
        trial("nimbus-baseline", 3, 600),
    ]
    rows = summarize(trials, [4096])
    assert [r["mta"] for r in rows] == ["postfix", "nimbus", "nimbus-baseline"]
    _, cur, old = rows
    assert old["ratio"] == pytest.approx(550 / 450)
    assert old["ratio_paired"] == pytest.approx([1.25, 1.1, 600 / 450])
    assert cur["baseline_ratio"] == pytest.approx(600 / 550)
    assert cur["baseline_ratio_paired"] == pytest.approx([1.2, 1.0, 1.1])
    assert "baseline_ratio" not in old


def baseline_rows() -> list[dict]:
    """benchmark_rows plus a baseline row, and the nimbus row's ratios to it."""
    postfix, cur = benchmark_rows()
    old = {**cur, "mta": "nimbus-baseline", "e2e": 600.0, "e2e_min": 590.0, "e2e_max": 610.0}
    old.update(mta_cpu=1.8, peak_rss_mb=70.0, ratio=600.0 / 517.3, ratio_paired=[1.1, 1.2, 1.3])
    cur = {**cur, "baseline_ratio": 664.0 / 600.0, "baseline_ratio_paired": [1.05, 1.12, 1.1]}
    return [postfix, cur, old]


def test_table_md_baseline_row_has_its_own_ratio():
    """The baseline row shows its ratio to Postfix and its peak RSS, like nimbus."""
    line = table_md(baseline_rows()).splitlines()[4]
    assert line == (
        "| 4096 | nimbus-baseline | **600** (590–610) | 663 | 1.80 | 1.99 | 0 "
        "| **1.16×** (per run: 1.10, 1.20, 1.30) | 70 MiB | 3/3 |"
    )


def test_table_baseline_md_one_line_per_size():
    """nimbus vs nimbus-baseline: both medians with ranges, the ratio, CPU and RSS of both."""
    assert table_baseline_md(baseline_rows()).splitlines()[2] == (
        "| 4096 | **664** (629–722) | **600** (590–610) | **1.11×** (per run: 1.05, 1.12, 1.10) "
        "| 1.65 | 1.80 | 72 MiB | 70 MiB |"
    )
    assert len(table_baseline_md(benchmark_rows()).splitlines()) == 2  # no baseline: no line


def test_table_text_shows_baseline_ratio():
    """The console line of nimbus ends with its ratio to the baseline."""
    text = table_text(baseline_rows())
    assert text.splitlines()[3].endswith("3/3   vs baseline 1.11")
    assert "nimbus-baseline" in text.splitlines()[4]


LABEL = "`726b18a` (commit `726b18af7e1c`: A changed egress path)"


def test_relay_section_names_the_baseline_revision():
    """With a baseline, the method text names its revision, its command and its table."""
    rep = dataclasses.replace(report(), mtas=("postfix", "nimbus", BASELINE_MTA), baseline=LABEL)
    text = relay_section(baseline_rows(), rep)
    assert f"**nimbus-baseline** is nimbus at git\n{LABEL},\nrun in this run" in text
    assert "PYTHONPATH=$BASELINE python -m engine.cli mta" in text
    assert table_baseline_md(baseline_rows()) in text
    assert text.index(table_md(baseline_rows())) < text.index("Baseline: ")


def test_relay_section_without_baseline_says_nothing_of_one():
    """A run without --baseline renders the section exactly as before: table, blank line, raw."""
    text = relay_section(benchmark_rows(), report())
    assert "baseline" not in text.lower()
    assert BENCHMARKS_TABLE + "\n\nRaw per-trial JSON" in text


def test_report_commands_baseline():
    """The baseline's command: the same NIMBUS_* settings, its tree on PYTHONPATH, and its
    own engine's entry point instead of the venv's console script."""
    cmds = report_commands(sessions=20, messages=10000, reuse_sessions=False, postfix_log=True)
    (line,) = cmds[BASELINE_MTA]
    assert line == (
        cmds["nimbus"][0].removesuffix(" nimbus mta")
        + " PYTHONPATH=$BASELINE python -m engine.cli mta"
    )


def test_baseline_label_shortens_commit_and_subject():
    """The report names the revision as given, 12 hex digits of it and a short subject."""
    base = Baseline(rev="726b18a", commit="726b18af7e1c" + "0" * 28, subject="x" * 80, tree=Path())
    assert base.label == "`726b18a` (commit `726b18af7e1c`: " + "x" * 71 + "…)"


def test_baseline_env_and_argv():
    """PYTHONPATH is the tree (it wins over the venv's editable finder, which comes after
    sys.path); the command is the interpreter running the tree's engine.cli."""
    env = baseline_env(Path("/t/tree"), {"NIMBUS_SPOOL_DIR": "/s", "PYTHONPATH": "/elsewhere"})
    assert env == {"NIMBUS_SPOOL_DIR": "/s", "PYTHONPATH": "/t/tree"}
    assert baseline_argv("/v/bin/python") == ["/v/bin/python", "-m", "engine.cli", "mta"]


@pytest.fixture
def place(tmp_path, monkeypatch) -> Placement:
    ports = iter(range(40001, 40010))
    monkeypatch.setattr("bench.nimbus.free_port", lambda: next(ports))  # binds a socket
    return Placement(workdir=tmp_path, sink_port=40000, outdir=tmp_path, tag="r1-4096-x")


def test_baseline_harness_env_command_and_policy_source(place, monkeypatch):
    """The baseline harness runs sys.executable -m engine.cli mta with PYTHONPATH=tree, the
    same NIMBUS_* settings as nimbus (none inherited) and the tree's own policy/."""
    monkeypatch.setenv("NIMBUS_SPOOL_DIR", "/inherited")
    tree = Path("/var/tmp/b/tree")
    harness = make_harness(BASELINE_MTA, place, baseline_tree=tree)
    assert isinstance(harness, NimbusBaselineHarness)
    assert harness.argv() == [sys.executable, "-m", "engine.cli", "mta"]
    env = harness.process_env()
    assert env["PYTHONPATH"] == str(tree)
    assert {k: v for k, v in env.items() if k.startswith("NIMBUS_")} == harness.env
    assert env["NIMBUS_SPOOL_DIR"] == str(place.workdir / "nimbus" / "spool")
    assert harness.policy_source == tree / "policy"
    assert harness.commands()[0].endswith(" PYTHONPATH=$BASELINE python -m engine.cli mta")


def test_nimbus_harness_keeps_the_bundled_policy_and_console_script(place):
    """Plain nimbus is unchanged: the venv's nimbus script, the current tree's policy/."""
    harness = make_harness("nimbus", place)
    assert isinstance(harness, NimbusHarness)
    assert harness.argv()[1:] == ["mta"] and harness.argv()[0].endswith("nimbus")
    assert harness.policy_source == BUNDLED_POLICY == REPO / "policy"
    assert "PYTHONPATH" not in harness.env


def test_make_harness_baseline_needs_a_tree(place):
    with pytest.raises(BenchError, match="needs a baseline tree"):
        make_harness(BASELINE_MTA, place)


@pytest.mark.parametrize(
    ("printed", "error"),
    [
        ("/var/tmp/b/tree/engine/__init__.py\n", None),
        ("warning: x\n/var/tmp/b/tree/engine/__init__.py", None),  # the last line counts
        ("/work/main/engine/__init__.py\n", "engine imported from /work/main/engine"),
        ("/var/tmp/b/tree2/engine/__init__.py", "not from the baseline tree /var/tmp/b/tree"),
        ("", "printed no engine.__file__"),
    ],
)
def test_engine_origin_error(printed, error):
    """Only an engine inside the baseline tree passes; the editable install's is refused."""
    why = engine_origin_error(printed, Path("/var/tmp/b/tree"))
    assert why is None if error is None else error in why


OLD_SHAPING = '[default]\nconnection_limit = 10\nmax_connection_rate = "100/min"\n'
OLD_SHAPING += 'max_message_rate = "100/s"\n\n["gmail.com"]\nmx_rollup = false\n'


def test_write_bench_policy_from_a_given_source_tree(tmp_path):
    """The policy is copied from the given tree (its init.py, its TOML), minus exactly the
    two default rate lines; nothing of the current tree's policy/ comes in."""
    src = tmp_path / "old" / "policy"
    src.mkdir(parents=True)
    (src / "shaping.toml").write_text(OLD_SHAPING)
    (src / "init.py").write_text("from engine.helpers.queues import QueueHelper\n")
    (src / "__pycache__").mkdir()
    write_bench_policy(tmp_path / "dest", src)
    dest = tmp_path / "dest"
    assert sorted(p.name for p in dest.iterdir()) == ["init.py", "shaping.toml"]
    assert (dest / "init.py").read_text() == (src / "init.py").read_text()
    assert (dest / "shaping.toml").read_text() == (
        '[default]\nconnection_limit = 10\n\n["gmail.com"]\nmx_rollup = false\n'
    )


def test_write_bench_policy_names_the_source_it_refuses(tmp_path):
    """A source whose shaping.toml lacks the lines, or that has none, is named in the error."""
    src = tmp_path / "policy"
    src.mkdir()
    with pytest.raises(BenchError, match=f"{src}: no shaping.toml"):
        write_bench_policy(tmp_path / "d1", src)
    (src / "shaping.toml").write_text("[default]\n")
    with pytest.raises(BenchError, match=f"{src / 'shaping.toml'}: .*rate lines changed"):
        write_bench_policy(tmp_path / "d2", src)


@pytest.mark.parametrize(
    ("argv", "mtas"),
    [
        ([], ["postfix", "nimbus"]),
        (["--baseline", "726b18a"], ["postfix", "nimbus", "nimbus-baseline"]),
        (["--dkim"], ["postfix", "nimbus", "nimbus-dkim"]),
        (["--dkim", "--baseline", "a"], ["postfix", "nimbus", "nimbus-dkim", "nimbus-baseline"]),
        (["--mtas", "nimbus-baseline,nimbus", "--baseline", "a"], ["nimbus-baseline", "nimbus"]),
    ],
)
def test_parse_args_baseline_joins_the_mtas(argv, mtas):
    """--baseline adds nimbus-baseline to the interleaved MTAs; --dkim does not."""
    assert parse_args(argv).mta_list == mtas


def test_parse_args_baseline_mta_needs_a_revision(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--mtas", "postfix,nimbus-baseline"])
    assert "nimbus-baseline needs --baseline REV" in capsys.readouterr().err
