"""The baseline: an older nimbus, from a git revision, measured in the same run as the current one.

Exports:
    BASELINE_MTA              the MTA name of the baseline in trials and reports
    Baseline                  the revision as given, its commit, its subject and its source tree
    baseline_env(tree, env)   pure: the process environment of a baseline instance
    baseline_argv(python)     pure: the command that starts it (``python -m engine.cli mta``)
    baseline_command(env)     pure: the shell line of it, for the report
    engine_origin_error(...)  pure: why a printed ``engine.__file__`` is not the baseline's
    probe_engine(...)         the ``engine`` a baseline process imports, checked (BenchError)
    baseline_worktree(...)    context manager: a detached worktree of REV, removed afterwards

A benchmark ratio from an older run is not comparable (the shared box's speed changes from
day to day), so the older nimbus runs in the same run as the current one, interleaved, with
the same harness. It runs from a detached ``git worktree`` of the revision with
``PYTHONPATH`` pointing at it; the venv's editable install of the current tree must not
shadow it, so before every trial a one-shot ``python -c`` with the same interpreter,
environment and working directory prints ``engine.__file__`` and anything outside the
worktree is an error. The baseline runs with its own ``policy/`` (an older policy imports
older engine modules).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.support import BenchError, log, run

__all__ = [
    "BASELINE_MTA",
    "Baseline",
    "baseline_env",
    "baseline_argv",
    "baseline_command",
    "engine_origin_error",
    "probe_engine",
    "baseline_worktree",
]

BASELINE_MTA = "nimbus-baseline"
_PROBE = "import engine; print(engine.__file__)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Baseline:
    """rev: as given on the command line; commit: its full hash; subject: its first line;
    tree: the worktree's root (the PYTHONPATH of the baseline, and its policy/)."""

    rev: str
    commit: str
    subject: str
    tree: Path

    @property
    def label(self) -> str:
        """How the report names it: ``726b18a`` (commit 726b18af7e1c: subject)."""
        subject = self.subject if len(self.subject) <= 72 else self.subject[:71] + "…"
        return f"`{self.rev}` (commit `{self.commit[:12]}`: {subject})"


def baseline_env(tree: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` (NIMBUS_* settings) plus PYTHONPATH=tree: the baseline's engine, sink, tsa."""
    return {**env, "PYTHONPATH": str(tree)}


def baseline_argv(python: str) -> list[str]:
    """Its engine's own entry point, not the ``nimbus`` console script (that is the venv's,
    bound to the current tree)."""
    return [python, "-m", "engine.cli", "mta"]


def baseline_command(env: dict[str, str]) -> str:
    """The shell line that starts a baseline instance with these settings."""
    return " ".join(f"{k}={v}" for k, v in env.items()) + " python -m engine.cli mta"


def engine_origin_error(printed: str, tree: Path) -> str | None:
    """None when the ``engine.__file__`` a probe printed is inside ``tree``, else why not."""
    lines = printed.strip().splitlines()
    if not lines:
        return "the probe printed no engine.__file__"
    origin = Path(lines[-1].strip()).resolve()
    if not origin.is_relative_to(tree.resolve()):
        return f"engine imported from {origin}, not from the baseline tree {tree}"
    return None


def probe_engine(python: str, env: dict[str, str], cwd: Path, tree: Path) -> str:
    """The ``engine.__file__`` a process with this interpreter, env and cwd imports.

    Raises BenchError if it is not the baseline tree's: a baseline that silently runs the
    current code would report a ratio of about 1 and hide any regression.
    """
    cp = run([python, "-c", _PROBE], timeout=30, check=False, env=env, cwd=cwd)
    if cp.returncode != 0:
        raise BenchError(f"baseline probe failed (rc={cp.returncode}): {cp.stderr.strip()}")
    why = engine_origin_error(cp.stdout, tree)
    if why is not None:
        raise BenchError(f"baseline probe: {why}")
    return cp.stdout.strip().splitlines()[-1]


def _git(repo: Path, *args: str) -> str:
    return run(["git", "-C", str(repo), *args], timeout=120).stdout.strip()


@contextlib.contextmanager
def baseline_worktree(repo: Path, rev: str, parent: Path) -> Iterator[Baseline]:
    """A detached worktree of ``rev`` in a fresh temp dir under ``parent``.

    Removed on the way out, on an error and on KeyboardInterrupt (which the bench's
    SIGTERM/SIGHUP handlers raise) alike. BenchError if ``rev`` names no commit.
    """
    try:
        commit = _git(repo, "rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}")
    except BenchError:
        raise BenchError(f"--baseline {rev!r}: no such commit in {repo}") from None
    subject = _git(repo, "log", "-1", "--format=%s", commit)
    tmp = Path(tempfile.mkdtemp(prefix="nimbus-bench-baseline-", dir=parent))
    tree = tmp / "tree"
    try:
        _git(repo, "worktree", "add", "--detach", str(tree), commit)
        log(f"baseline {rev} ({commit[:12]}) checked out in {tree}")
        yield Baseline(rev=rev, commit=commit, subject=subject, tree=tree)
    finally:
        _remove_worktree(repo, tree)
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_worktree(repo: Path, tree: Path) -> None:
    # --force: the trials left __pycache__ (untracked) in it. If git cannot remove it (it
    # was never registered, or is half gone), remove the directory and let prune drop the
    # registration of a worktree whose directory no longer exists.
    cp = subprocess.run(
        ["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if cp.returncode != 0 and tree.exists():
        log(f"warning: git worktree remove {tree}: {cp.stderr.strip()}; removing it by hand")
        shutil.rmtree(tree, ignore_errors=True)
        run(["git", "-C", str(repo), "worktree", "prune"], timeout=120, check=False)
    elif cp.returncode == 0:
        log(f"baseline worktree {tree} removed")
