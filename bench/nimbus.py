"""The nimbus harnesses: ``nimbus mta`` in sink mode with fresh spool and log directories.

Exports:
    NimbusHarness          MtaHarness for nimbus with the bench policy (bench.nimbus_policy)
    NimbusDkimHarness      the same nimbus and policy plus a DKIM key: signing is the only change
    NimbusBaselineHarness  nimbus of an older revision (bench.baseline), its own policy/ tree
    nimbus_env(...)        pure: the NIMBUS_* settings of one instance
    nimbus_command(env)    pure: the shell line starting it, for the report
    NIMBUS_MTAS            the names of the variants

Its CPU includes its children (the DKIM signing workers, when they run); its peak RSS is
its own (the kernel's high-water mark, read when it is reaped).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from bench.baseline import (
    BASELINE_MTA,
    baseline_argv,
    baseline_command,
    baseline_env,
    probe_engine,
)
from bench.harness import MtaHarness, Placement
from bench.nimbus_output import (
    StderrScan,
    is_dkim_worker,
    parse_metrics,
    ready_smtp_port,
    record_types,
    scan_stderr,
)
from bench.nimbus_policy import BUNDLED_POLICY, write_bench_policy, write_dkim_policy
from bench.sampling import (
    CpuSample,
    child_cmdlines,
    cmdline,
    rss_kb,
    thread_count,
    tree_cpu,
    tree_rss_kb,
)
from bench.support import BenchError, free_port, smtp_banner_ok, stop_and_reap, wait_until

__all__ = [
    "NimbusHarness",
    "NimbusDkimHarness",
    "NimbusBaselineHarness",
    "nimbus_env",
    "nimbus_command",
    "NIMBUS_MTAS",
    "WORKERS_MTA",
    "NimbusWorkersHarness",
    "ASYNCIO_MTA",
    "NimbusAsyncioHarness",
]

WORKERS_MTA = "nimbus-w2"
ASYNCIO_MTA = "nimbus-asyncio"
NIMBUS_MTAS = ("nimbus", "nimbus-dkim", WORKERS_MTA, ASYNCIO_MTA, BASELINE_MTA)
# engine shutdown_deadline is 25 s: give it that and some before SIGKILL
_TERM_TIMEOUT = 40


def nimbus_env(
    root: Path, port: int | str, http_port: int | str, sink_port: int | str
) -> dict[str, str]:
    """NIMBUS_* settings of an instance whose directories are under ``root``."""
    return {
        "NIMBUS_SMTP_LISTEN": f"127.0.0.1:{port}",
        "NIMBUS_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "NIMBUS_SPOOL_DIR": str(root / "spool"),
        "NIMBUS_LOG_DIR": str(root / "logs"),
        "NIMBUS_SINK_ENABLED": "true",
        "NIMBUS_SINK_ENDPOINT": f"127.0.0.1:{sink_port}",
        "NIMBUS_POLICY_DIR": str(root / "policy"),
    }


def nimbus_command(env: dict[str, str]) -> str:
    """The shell line that starts an instance with these settings."""
    return " ".join(f"{k}={v}" for k, v in env.items()) + " nimbus mta"


def _lines(path: Path) -> list[str]:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace").splitlines()
    return []


class NimbusHarness(MtaHarness):
    """``nimbus mta`` relaying to the sink (NIMBUS_SINK_ENABLED) with the bench policy."""

    name = "nimbus"
    signs = False  # does its policy DKIM-sign every message?

    def __init__(self, place: Placement):
        self.place = place
        self.dir = place.workdir / "nimbus"
        self.port = free_port()
        self.http_port = free_port()
        self.env = nimbus_env(self.dir, self.port, self.http_port, place.sink_port)
        self.stderr_path = place.outdir / f"{place.tag}.nimbus-stderr.log"
        exe = Path(sys.executable).parent / "nimbus"
        self.exe = str(exe) if exe.exists() else (shutil.which("nimbus") or "nimbus")
        self.policy_source = BUNDLED_POLICY  # the policy/ tree its bench policy is made of
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.peak_rss_kb: int | None = None
        self.dkim_workers_seen = 0
        self._stderr: IO[bytes] | None = None

    def commands(self) -> list[str]:
        return [nimbus_command(self.env)]

    def write_policy(self, dest: Path) -> None:
        write_bench_policy(dest, self.policy_source)

    def argv(self) -> list[str]:
        return [self.exe, "mta"]

    def process_env(self) -> dict[str, str]:
        """The bench's environment without its NIMBUS_* settings, plus this instance's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
        env.update(self.env)
        return env

    def check_launch(self, env: dict[str, str]) -> None:
        """Last check before the launch (BenchError): none for the current tree."""

    def start(self) -> None:
        self.dir.mkdir(parents=True)
        self.write_policy(Path(self.env["NIMBUS_POLICY_DIR"]))
        env = self.process_env()
        self.check_launch(env)
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            self.argv(),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            cwd=self.dir,
        )

    def _ready_line(self) -> bool:
        port = ready_smtp_port(_lines(self.stderr_path))
        if port is not None and port != self.port:
            raise BenchError(f"nimbus ready on smtp_port {port}, expected {self.port}")
        return port is not None

    def ready(self) -> None:
        assert self.proc is not None
        wait_until(self._ready_line, 60, "nimbus 'ready' log line", 0.1, alive=self.failure)
        wait_until(
            lambda: self._http_status("/api/check-liveness/v1") == 200,
            30,
            "nimbus liveness 200",
            0.1,
            alive=self.failure,
        )
        wait_until(
            lambda: smtp_banner_ok(self.port),
            30,
            f"nimbus banner on {self.port}",
            alive=self.failure,
        )
        # Be sure we measure the python process itself, not a wrapper.
        line = cmdline(self.proc.pid)
        if "python" not in line and "nimbus" not in line:
            raise BenchError(f"pid {self.proc.pid} is not nimbus: {line}")

    def failure(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"{self.name} exited rc={self.proc.returncode}; stderr in {self.stderr_path}"
        return None

    def _http_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def metrics(self) -> dict[str, Any]:
        """Sum of each nimbus_* sample family of /metrics (labels dropped)."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return dict(parse_metrics(r.read().decode()))
        except OSError as exc:
            return {"error": str(exc)}

    def cpu(self) -> CpuSample:
        """nimbus and its children (the DKIM signing workers, when they run)."""
        assert self.proc is not None
        return tree_cpu(self.proc.pid)

    def rss_kb(self) -> int:
        assert self.proc is not None
        return tree_rss_kb(self.proc.pid)

    def extra_stats(self) -> dict[str, Any]:
        assert self.proc is not None
        children = child_cmdlines(self.proc.pid)
        self.dkim_workers_seen = sum(is_dkim_worker(c) for c in children)
        return {
            "rss_kb_at_end": rss_kb(self.proc.pid),
            "tree_rss_kb_at_end": self.rss_kb(),
            "threads": thread_count(self.proc.pid),
            "children": len(children),
            "dkim_workers": self.dkim_workers_seen,
            "metrics_at_end": self.metrics(),
        }

    def stop(self) -> None:
        if self.proc is not None:
            self.exit_code, self.peak_rss_kb = stop_and_reap(self.proc, "nimbus", _TERM_TIMEOUT)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def post_stats(self) -> dict[str, Any]:
        """After stop: record types in the NDJSON log and warnings/errors on stderr."""
        lines: list[str] = []
        logdir = self.dir / "logs"
        if logdir.exists():
            for f in sorted(p for p in logdir.iterdir() if p.is_file()):
                lines += _lines(f)
        types, bad = record_types(lines)
        scan = scan_stderr(_lines(self.stderr_path))
        return {
            "log_record_types": types,
            "log_bad_lines": bad,
            "stderr_levels": scan.levels,
            "stderr_problem_lines": (scan.problems + self._signing_problems(scan))[:50],
            "exit_code": self.exit_code,
            "peak_rss_kb": self.peak_rss_kb,
            "stderr_file": self.stderr_path.name,
        }

    def _signing_problems(self, scan: StderrScan) -> list[str]:
        # Evidence that messages went through the signing pool: its diagnostic (any
        # spelling of the event name) or a live worker process at the end of the window.
        if not self.signs or scan.dkim_pool_started or self.dkim_workers_seen:
            return []
        return ["no DKIM signing worker seen (no dkim_workers_started line, no worker process)"]


class NimbusDkimHarness(NimbusHarness):
    """nimbus-dkim: the same nimbus and policy plus a dkim_data.toml naming a key, so the
    bundled policy signs every message; its CPU includes the signing workers."""

    name = "nimbus-dkim"
    signs = True

    def write_policy(self, dest: Path) -> None:
        write_dkim_policy(dest, self.policy_source)


class NimbusWorkersHarness(NimbusHarness):
    """nimbus-w2: the same nimbus and policy as two engine workers under a supervisor
    (``NIMBUS_NODE_WORKERS=2``); its CPU and RSS are the whole process tree's."""

    name = WORKERS_MTA

    def __init__(self, place: Placement):
        super().__init__(place)
        self.env["NIMBUS_NODE_WORKERS"] = "2"


class NimbusAsyncioHarness(NimbusHarness):
    """nimbus-asyncio: the same nimbus on the standard library's event loop
    (``NIMBUS_NODE_EVENT_LOOP=asyncio``) instead of uvloop."""

    name = ASYNCIO_MTA

    def __init__(self, place: Placement):
        super().__init__(place)
        self.env["NIMBUS_NODE_EVENT_LOOP"] = "asyncio"


class NimbusBaselineHarness(NimbusHarness):
    """nimbus-baseline: nimbus of an older revision, checked out in ``tree`` (a worktree made
    by bench.baseline), started as ``python -m engine.cli mta`` with PYTHONPATH=tree and the
    bench policy made of that tree's own policy/. Everything else is NimbusHarness's."""

    name = BASELINE_MTA

    def __init__(self, place: Placement, tree: Path):
        super().__init__(place)
        self.tree = tree
        self.policy_source = tree / "policy"
        self.engine_file: str | None = None

    def argv(self) -> list[str]:
        return baseline_argv(sys.executable)

    def process_env(self) -> dict[str, str]:
        return baseline_env(self.tree, super().process_env())

    def commands(self) -> list[str]:
        return [baseline_command(baseline_env(Path("$BASELINE"), self.env))]

    def check_launch(self, env: dict[str, str]) -> None:
        """The same interpreter, env and cwd must import engine from the tree, not from
        the venv's editable install of the current one (BenchError otherwise)."""
        self.engine_file = probe_engine(sys.executable, env, self.dir, self.tree)

    def post_stats(self) -> dict[str, Any]:
        return {**super().post_stats(), "engine_file": self.engine_file}
