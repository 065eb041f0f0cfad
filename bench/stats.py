"""From trial results to report rows: medians, ratios and the problems worth reading.

Exports:
    MTA_ORDER                  the order of MTAs in every table
    median(xs)                 statistics.median, None for no values
    summarize(trials, sizes)   one row per (size, MTA): medians of its ok trials and ratios
    paired_ratios(...)         per run: e2e of one MTA / e2e of another in the same run
    collect_problems(trials)   one line per failed trial, warning or suspicious log

All pure: trials are the dicts ``bench.trial.run_trial`` returns (also in trials.json).
Ratios: ``ratio`` = median e2e of a nimbus variant / median Postfix e2e; ``dkim_ratio`` =
median nimbus-dkim e2e / median nimbus e2e; ``baseline_ratio`` (on the nimbus row) = median
nimbus e2e / median nimbus-baseline e2e; ``*_paired`` the same per run.
"""

from __future__ import annotations

import statistics
from typing import Any

__all__ = ["MTA_ORDER", "median", "summarize", "paired_ratios", "collect_problems"]

MTA_ORDER = ("postfix", "nimbus", "nimbus-baseline", "nimbus-dkim")
_NIMBUS = MTA_ORDER[1:]  # the nimbus variants (bench.nimbus.NIMBUS_MTAS)
Trial = dict[str, Any]


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _row(size: int, mta: str, allt: list[Trial]) -> dict[str, Any]:
    ok = [t for t in allt if t.get("ok")]
    e2e = [t["e2e_msgs_per_s"] for t in ok]
    peaks = [t["peak_rss_kb"] for t in ok if t.get("peak_rss_kb")]
    return {
        "size": size,
        "mta": mta,
        "trials_ok": len(ok),
        "trials": len(allt),
        "e2e": median(e2e),
        "e2e_min": min(e2e) if e2e else None,
        "e2e_max": max(e2e) if e2e else None,
        "ingress": median([t["ingress_msgs_per_s"] for t in ok]),
        "mta_cpu": median([t["mta_cpu_ms_per_msg"] for t in ok]),
        "box_cpu": median([t["box_cpu_ms_per_msg"] for t in ok]),
        "background": median([t["background_box_cpu_pct"] for t in ok]),
        "peak_rss_mb": max(peaks) / 1024 if mta in _NIMBUS and peaks else None,
    }


def paired_ratios(trials: list[Trial], size: int, mta: str, base: str) -> list[float]:
    """For each run with an ok trial of both: e2e of ``mta`` / e2e of ``base``."""
    out = []
    for r in sorted({t["run"] for t in trials}):

        def e2e(name: str, r: int = r) -> float | None:
            ok = [
                t
                for t in trials
                if t["run"] == r and t["size"] == size and t["mta"] == name and t.get("ok")
            ]
            return ok[0]["e2e_msgs_per_s"] if ok else None

        a, b = e2e(mta), e2e(base)
        if a is not None and b:
            out.append(a / b)
    return out


def _add_ratio(
    per: dict[str, dict[str, Any]], trials: list[Trial], size: int, mta: str, base: str, key: str
) -> None:
    """per[mta][key] = median e2e of mta / of base; per[mta][key + '_paired']: per run."""
    if not (mta in per and base in per and per[mta]["e2e"] and per[base]["e2e"]):
        return
    per[mta][key] = per[mta]["e2e"] / per[base]["e2e"]
    per[mta][key + "_paired"] = paired_ratios(trials, size, mta, base)


def summarize(trials: list[Trial], sizes: list[int]) -> list[dict[str, Any]]:
    """Rows by size, then MTA in MTA_ORDER; only MTAs that ran at that size."""
    rows = []
    for size in sizes:
        per: dict[str, dict[str, Any]] = {}
        for mta in MTA_ORDER:
            allt = [t for t in trials if t["mta"] == mta and t["size"] == size]
            if allt:
                per[mta] = _row(size, mta, allt)
                rows.append(per[mta])
        for mta in _NIMBUS:
            _add_ratio(per, trials, size, mta, "postfix", "ratio")
        _add_ratio(per, trials, size, "nimbus-dkim", "nimbus", "dkim_ratio")
        _add_ratio(per, trials, size, "nimbus", "nimbus-baseline", "baseline_ratio")
    return rows


def _trial_problems(t: Trial) -> list[str]:
    tag = f"run {t['run']} {t['size']} B {t['mta']}"
    out = [] if t.get("ok") else [f"{tag}: FAILED: {t.get('error')}"]
    out += [f"{tag}: {w}" for w in ([t["warning"]] if t.get("warning") else [])]
    out += [f"{tag}: {w}" for w in t.get("warnings", [])]
    post = t.get("post", {})
    out += [
        f"{tag}: nimbus stderr: `{line[:300]}`" for line in post.get("stderr_problem_lines", [])[:3]
    ]
    if post.get("maillog_problem_lines"):
        out.append(
            f"{tag}: {post['maillog_problem_lines']} warning/error lines in Postfix maillog "
            f"({post['maillog_problems_file']})"
        )
    if t["mta"] in _NIMBUS and post.get("exit_code") not in (0, None):
        out.append(f"{tag}: nimbus exit code {post['exit_code']} after SIGTERM")
    return out


def collect_problems(trials: list[Trial], etc_postfix_unchanged: bool = True) -> list[str]:
    """What the report lists under "Problems seen", in trial order."""
    problems = [p for t in trials for p in _trial_problems(t)]
    if not etc_postfix_unchanged:
        problems.append("/etc/postfix changed during the run (it must not)")
    return problems
