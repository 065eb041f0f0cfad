"""Running a Nimbus node in tests: in the test's own loop, or as a real process.

    async with running_node(tmp_path, policy=POLICY, **{"dns.nameservers": [...]}) as node:
        ... node.smtp_port / node.http_port
        await node.records.wait(lambda r: r["type"] == "Delivery", count=3)

    proc = await NimbusProcess.start(tmp_path, env={...})   # a real `nimbus mta` process
    ...; proc.kill9(); await proc.wait_records(...)

Records are gathered as JSON dicts (the on-disk shape) from the node's in-process
subscription, so waiting needs no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from engine.app import Node
from engine.config.settings import dotted_tree, load_settings

Predicate = Callable[[dict[str, Any]], bool]


class Records:
    """Log records seen so far, with waiting."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def add(self, record: dict[str, Any]) -> None:
        self.items.append(record)
        self._changed.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.items if r["type"] == kind]

    async def wait(
        self, predicate: Predicate, count: int = 1, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` records match; returns them. TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while True:
                found = [r for r in self.items if predicate(r)]
                if len(found) >= count:
                    return found
                self._changed.clear()
                await self._changed.wait()


def write_policy(directory: Path, source: str) -> Path:
    """Write ``source`` as ``directory/init.py`` (dedented); returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "init.py").write_text(textwrap.dedent(source))
    return directory


@contextlib.asynccontextmanager
async def running_node(
    tmp_path: Path, *, policy: str | None = None, ready: bool = True, **settings: Any
) -> AsyncIterator[Node]:
    """A Node in this loop on free loopback ports, with tmp spool/log dirs.

    policy: init.py source for the policy directory (None: no handlers).
    ready: False yields as soon as the HTTP listener is bound, while the node still
        starts (``.smtp_port`` is 0 then; await ``node.ready`` for the rest).
    settings: dotted overrides, e.g. ``**{"dns.nameservers": ["127.0.0.1:5353"]}``.
    The node gets ``.records`` (Records) and ``.smtp_port`` / ``.http_port``.
    """
    policy_dir = write_policy(tmp_path / "policy", policy or "def register(nimbus):\n    pass\n")
    base = {
        "smtp.listen": "127.0.0.1:0",
        "http.listen": "127.0.0.1:0",
        "spool.dir": str(tmp_path / "spool"),
        "log.dir": str(tmp_path / "logs"),
        "policy.dir": str(policy_dir),
        "node_id": "test-node",
        "smtp.hostname": "mta.test",
        "spool.min_free_space": 0,
    }
    base.update(settings)
    node = Node(load_settings(env={}, overrides=dotted_tree(base)))
    records = Records()
    node.logs.on_record(lambda r: records.add(r.to_json()))
    node.records = records  # type: ignore[attr-defined]
    task = asyncio.create_task(node.run())
    started = asyncio.create_task(node.ready.wait() if ready else _http_bound(node))
    done, _ = await asyncio.wait({task, started}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if started not in done:
        started.cancel()
        if task in done:
            task.result()  # raise the start-up error
        raise TimeoutError("node did not become ready")
    node.smtp_port = node.ports.get("smtp", 0)  # type: ignore[attr-defined]
    node.http_port = node.ports["http"]  # type: ignore[attr-defined]
    try:
        yield node
    finally:
        node.stop()
        await asyncio.wait_for(task, 40)


async def _http_bound(node: Node) -> None:
    """Until the starting node's HTTP listener has its port (nothing signals it)."""
    while "http" not in node.ports:
        await asyncio.sleep(0.005)  # poll interval; running_node bounds the wait


@contextlib.asynccontextmanager
async def nimbus_process(workdir: Path, env: dict[str, str]) -> AsyncIterator[NimbusProcess]:
    """A ``nimbus mta`` process on ``workdir``'s spool and logs; SIGKILLed if still running."""
    proc = await NimbusProcess.start(workdir, env)
    try:
        yield proc
    finally:
        proc.kill9()
        await proc.wait()


class NimbusProcess:
    """``nimbus mta`` as a child process with JSON logs on stderr."""

    def __init__(self, proc: asyncio.subprocess.Process, log_dir: Path) -> None:
        self.proc = proc
        self.log_dir = log_dir
        self.smtp_port = 0
        self.http_port = 0
        self.stderr_lines: list[dict[str, Any]] = []
        self.ready_line: dict[str, Any] = {}
        self._ready_event = "ready"
        self._reader: asyncio.Task | None = None

    @classmethod
    async def start(
        cls,
        workdir: Path,
        env: dict[str, str],
        timeout: float = 30.0,
        *,
        role: str = "mta",
        ready_event: str = "ready",
    ) -> NimbusProcess:
        """Start ``nimbus <role>`` and wait for its ``ready_event`` log line (which carries
        the ports). An MTA gets free loopback ports and spool/log dirs under ``workdir``."""
        log_dir = Path(env.get("NIMBUS_LOG_DIR", workdir / "logs"))
        defaults = (
            {
                "NIMBUS_SMTP_LISTEN": "127.0.0.1:0",
                "NIMBUS_HTTP_LISTEN": "127.0.0.1:0",
                "NIMBUS_SPOOL_DIR": str(workdir / "spool"),
                "NIMBUS_LOG_DIR": str(log_dir),
                "NIMBUS_SPOOL_MIN_FREE_SPACE": "0",
                # One process (today's layout: <spool>/spool.db) unless a test asks for
                # workers; the default would follow this machine's CPUs.
                "NIMBUS_NODE_WORKERS": "1",
            }
            if role == "mta"
            else {}
        )
        full_env = {**os.environ, **defaults, **env}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engine.cli",
            role,
            env=full_env,
            cwd=workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self = cls(proc, log_dir)
        self._ready_event = ready_event
        ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_stderr(ready))
        try:
            async with asyncio.timeout(timeout):
                line = await ready
        except BaseException:
            self.kill9()
            await self.wait()
            raise
        self.ready_line = line
        self.smtp_port, self.http_port = line.get("smtp_port", 0), line.get("http_port", 0)
        return self

    async def _read_stderr(self, ready: asyncio.Future) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "unparsed", "text": raw.decode(errors="replace")}
            self.stderr_lines.append(line)
            if line.get("event") == self._ready_event and not ready.done():
                ready.set_result(line)
        if not ready.done():
            text = "".join(ln.get("text", json.dumps(ln)) for ln in self.stderr_lines[-20:])
            ready.set_exception(RuntimeError(f"nimbus exited before {self._ready_event!r}: {text}"))

    def kill9(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float = 40.0) -> int:
        async with asyncio.timeout(timeout):
            rc = await self.proc.wait()
            if self._reader is not None:
                await self._reader
        return rc

    def records(self) -> list[dict[str, Any]]:
        """Every log record in the log directory (all segments)."""
        out = []
        if self.log_dir.exists():
            for path in sorted(self.log_dir.iterdir()):
                for line in path.read_text().splitlines():
                    if line.strip():
                        out.append(json.loads(line))
        return out

    async def wait_records(
        self, predicate: Predicate, count: int, timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """Wait until the log files hold ``count`` matching records (polls the files)."""
        async with asyncio.timeout(timeout):
            while True:
                found = [r for r in self.records() if predicate(r)]
                if len(found) >= count:
                    return found
                await asyncio.sleep(0.1)  # file tailing: a poll interval, not a readiness guess
