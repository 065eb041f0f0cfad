"""bench --baseline: the worktree of an older revision, and the check that its engine is run.

Real git and real interpreters: a throwaway repository whose commit has an ``engine``
package, checked out by ``bench.baseline.baseline_worktree``, probed with the environment
the baseline harness gives its process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.baseline import baseline_worktree, probe_engine
from bench.harness import Placement
from bench.machine import REPO
from bench.nimbus import NimbusBaselineHarness
from bench.support import BenchError


def git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    return subprocess.run([*cmd, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository whose one commit has engine/ and policy/, like nimbus's tree."""
    repo = tmp_path / "repo"
    (repo / "engine").mkdir(parents=True)
    (repo / "engine" / "__init__.py").write_text('__version__ = "old"\n')
    (repo / "policy").mkdir()
    (repo / "policy" / "shaping.toml").write_text("[default]\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "old layout")
    return repo


def worktrees(repo: Path) -> list[str]:
    out = git(repo, "worktree", "list", "--porcelain")
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]


def harness_env(tmp_path: Path, tree: Path) -> tuple[dict[str, str], Path]:
    place = Placement(workdir=tmp_path / "trial", sink_port=1, outdir=tmp_path, tag="t")
    return NimbusBaselineHarness(place, tree).process_env(), place.workdir


def test_baseline_process_imports_the_worktree_engine_and_the_tree_goes(repo, tmp_path):
    """The harness's env (PYTHONPATH=tree) beats the venv's editable install of the current
    tree; the worktree and its registration are gone afterwards."""
    parent = tmp_path / "work"
    parent.mkdir()
    with baseline_worktree(repo, "HEAD", parent) as base:
        assert base.subject == "old layout"
        assert base.commit == git(repo, "rev-parse", "HEAD").strip()
        assert (base.tree / "engine" / "__init__.py").is_file()
        assert str(base.tree) in worktrees(repo)
        env, cwd = harness_env(tmp_path, base.tree)
        cwd.mkdir()
        origin = probe_engine(sys.executable, env, cwd, base.tree)
        assert Path(origin) == base.tree / "engine" / "__init__.py"
    assert not base.tree.exists()
    assert list(parent.iterdir()) == []
    assert worktrees(repo) == [str(repo)]


def test_probe_refuses_the_current_tree(repo, tmp_path):
    """Without PYTHONPATH the venv imports the current tree's engine: the probe says so."""
    with baseline_worktree(repo, "HEAD", tmp_path) as base:
        env, cwd = harness_env(tmp_path, base.tree)
        del env["PYTHONPATH"]
        cwd.mkdir()
        with pytest.raises(BenchError, match=f"engine imported from {REPO / 'engine'}"):
            probe_engine(sys.executable, env, cwd, base.tree)


def test_worktree_removed_on_error(repo, tmp_path):
    """An error (or KeyboardInterrupt, which SIGTERM raises in the bench) inside the run
    still removes the worktree."""
    with pytest.raises(KeyboardInterrupt), baseline_worktree(repo, "HEAD", tmp_path) as base:
        raise KeyboardInterrupt
    assert not base.tree.exists()
    assert worktrees(repo) == [str(repo)]


def test_unknown_revision_is_refused_before_any_checkout(repo, tmp_path):
    parent = tmp_path / "work"
    parent.mkdir()
    with pytest.raises(BenchError, match="--baseline 'nosuchrev': no such commit"):
        with baseline_worktree(repo, "nosuchrev", parent):
            pass
    assert list(parent.iterdir()) == []
