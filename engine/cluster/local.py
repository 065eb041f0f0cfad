"""The rendered chart run as local processes on loopback: LocalCluster.

Exports:
    LocalCluster             async context manager: render, translate, start, stop
    LocalPod                 one running process of the cluster
    log_tail(path, lines)    the last lines of a process's log, for error messages

    async with LocalCluster(replicas=2, workdir=tmp) as cluster:
        user, password = cluster.credentials
        url = cluster.http_url("nimbus-mta-0") + "/api/inject/v1"

The chart is rendered by engine.cluster.chart and translated (what runs, with which env,
on which ports) by engine.cluster.render; this module writes the volume files, starts the
processes in dependency order (each waits for its readiness probe), and stops them in
reverse order (SIGTERM, then SIGKILL after the pod's grace period, capped by
``stop_timeout``). Each process's stdout/stderr goes to ``<workdir>/logs/<pod>.log``.

``scale_in(replicas)`` does what a StatefulSet scale-in does: the MTA pods with the
highest ordinals get SIGTERM together (drain, then their spool to the remaining peers,
engine/xfer) and are waited for within their grace period; their volumes stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp

from engine.cluster.chart import (
    CHART_DIR,
    NAMESPACE,
    PACKAGE_ROOT,
    RELEASE,
    ClusterError,
    compose_values,
    render_chart,
)
from engine.cluster.plan import Plan, ProcessSpec, TranslateError
from engine.cluster.render import DEFAULT_EXECUTABLES, translate

__all__ = ["LocalCluster", "LocalPod", "log_tail"]

_HTTP_LISTEN = {
    "mta": "NIMBUS_HTTP_LISTEN",
    "tsa": "NIMBUS_TSA_LISTEN",
    "sink": "NIMBUS_SINK_HTTP_LISTEN",
}


# -- processes ---------------------------------------------------------------------------------


def _free_port_allocator() -> Any:
    taken: set[int] = set()

    def allocate() -> int:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in taken:
                taken.add(port)
                return port

    return allocate


def _executables() -> dict[str, tuple[str, ...]]:
    out = dict(DEFAULT_EXECUTABLES)
    redis = shutil.which(
        "redis-server",
        path=os.pathsep.join(
            [os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/usr/local/bin"]
        ),
    )
    if redis:
        out["redis-server"] = (redis,)
    return out


def _base_env() -> dict[str, str]:
    """The host environment without NIMBUS_* (pods get only the chart's settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    return env


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file; "" when it cannot be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def _probe(kind: str, target: str | int, session: aiohttp.ClientSession) -> bool:
    """One readiness check, as the kubelet does it: an HTTP GET answered 200-399 (aiohttp's
    client, the one the engine already depends on), or a TCP connect."""
    try:
        async with asyncio.timeout(3):
            if kind == "tcp":
                _, writer = await asyncio.open_connection("127.0.0.1", int(target))
                writer.close()
                await writer.wait_closed()
                return True
            async with session.get(str(target), allow_redirects=False) as response:
                return 200 <= response.status < 400
    except (OSError, TimeoutError, ValueError, aiohttp.ClientError):
        return False


@dataclass
class LocalPod:
    """A running process of the cluster."""

    name: str
    role: str
    ports: dict[str, int]
    log: Path
    spec: ProcessSpec
    proc: asyncio.subprocess.Process | None = None
    killed: bool = False  # needed SIGKILL: SIGTERM did not end it in time
    _log_file: IO[bytes] | None = None


class LocalCluster:
    """The chart rendered with the given values, run as local processes.

    chart_dir: the chart (default: the source checkout's ``chart/``).
    values_files / set_args / set_string_args / set_file_args: as ``helm -f`` / ``--set`` /
        ``--set-string`` / ``--set-file``; set_values: dotted path -> value; replicas: MTA pods.
    workdir: pod directories and logs (default: a temporary directory, removed at exit).
    """

    def __init__(
        self,
        chart_dir: str | os.PathLike[str] | None = None,
        *,
        values_files: Sequence[str | os.PathLike[str]] = (),
        set_values: Mapping[str, Any] | None = None,
        set_args: Sequence[str] = (),
        set_string_args: Sequence[str] = (),
        set_file_args: Sequence[str] = (),
        replicas: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        release: str = RELEASE,
        namespace: str = NAMESPACE,
        ready_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.chart_dir = Path(chart_dir) if chart_dir is not None else CHART_DIR
        self.values = compose_values(
            values_files,
            set_args=set_args,
            set_string_args=set_string_args,
            set_file_args=set_file_args,
            set_values=set_values,
            replicas=replicas,
        )
        self._temp = workdir is None
        self.workdir = Path(
            workdir if workdir is not None else tempfile.mkdtemp(prefix="nimbus-cluster-")
        ).resolve()
        self.release, self.namespace = release, namespace
        self.ready_timeout, self.stop_timeout = ready_timeout, stop_timeout
        self.manifests: list[dict[str, Any]] = []
        self.plan = Plan(())
        self.pods: dict[str, LocalPod] = {}
        self.removed: set[str] = set()  # pods scaled in: their exit is no failure
        # An Event binds to the running loop on first wait (Python >= 3.10), so it can be
        # made here, before any loop runs.
        self._hurry = asyncio.Event()

    # -- the library API -------------------------------------------------------------------

    @property
    def credentials(self) -> tuple[str, str] | None:
        """(user, password) for /api/inject/v1, from the rendered Secret."""
        return self.plan.credentials

    def http_url(self, pod: str) -> str:
        """``http://127.0.0.1:<port>`` of a pod's HTTP listener (MTA, TSA or sink)."""
        spec = self.pods[pod].spec
        var = _HTTP_LISTEN.get(spec.role, "")
        if var in spec.env:
            return f"http://{spec.env[var]}"
        if "http" in spec.ports:
            return f"http://127.0.0.1:{spec.ports['http']}"
        raise KeyError(f"pod {pod} has no HTTP port")

    def pods_of(self, role: str) -> list[str]:
        return [name for name, pod in self.pods.items() if pod.role == role]

    @property
    def sink_metrics_url(self) -> str | None:
        sinks = self.pods_of("sink")
        return f"{self.http_url(sinks[0])}/metrics" if sinks else None

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- lifecycle -------------------------------------------------------------------------

    def prepare(self) -> Plan:
        """Render and translate (no processes yet); raises ClusterError."""
        self.manifests = render_chart(
            self.chart_dir, self.values, release=self.release, namespace=self.namespace
        )
        try:
            self.plan = translate(
                self.manifests,
                workdir=str(self.workdir),
                namespace=self.namespace,
                allocate_port=_free_port_allocator(),
                executables=_executables(),
            )
        except TranslateError as exc:
            raise ClusterError(str(exc)) from None
        if not self.plan.specs:
            raise ClusterError("the rendered chart has no StatefulSet or Deployment to run")
        return self.plan

    def _materialize(self, spec: ProcessSpec) -> None:
        for d in spec.dirs:
            path = Path(d.path)
            if d.wipe and path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True, exist_ok=True)
        for f in spec.files:
            path = Path(f.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f.content)
            path.chmod(f.mode | 0o600)  # the pod's user owns it; keep it readable for us

    async def start(self) -> None:
        """Render, translate, then start wave by wave, each waiting for its readiness."""
        if not self.plan.specs:
            self.prepare()
        for spec in self.plan.specs:
            if not Path(spec.argv[0]).is_absolute() and shutil.which(spec.argv[0]) is None:
                raise ClusterError(
                    f"{spec.name} needs {spec.argv[0]!r}, which is not installed "
                    f"(e.g. apt-get install redis-server)"
                )
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            for wave in self.plan.waves():
                for spec in wave:
                    await self._spawn(spec)
                await _all(self._wait_ready(self.pods[s.name]) for s in wave)
        except BaseException:
            await self.stop()
            raise

    async def _spawn(self, spec: ProcessSpec) -> None:
        self._materialize(spec)
        log = self.workdir / "logs" / f"{spec.name.replace('/', '_')}.log"
        pod = LocalPod(spec.name, spec.role, dict(spec.ports), log, spec)
        pod._log_file = open(log, "wb")  # noqa: ASYNC230 - opening a local log file is instant
        self.pods[spec.name] = pod
        env = {**_base_env(), **spec.env}
        try:
            pod.proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                env=env,
                cwd=spec.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=pod._log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise ClusterError(f"{spec.name}: cannot run {spec.argv[0]}: {exc}") from None

    async def _wait_ready(self, pod: LocalPod) -> None:
        kind, target = pod.spec.readiness
        assert pod.proc is not None
        if kind == "none":
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if pod.proc.returncode is not None:
                    raise ClusterError(
                        f"{pod.name} exited with status {pod.proc.returncode} before "
                        f"it was ready; {pod.log}:\n{log_tail(pod.log)}"
                    )
                if await _probe(kind, target, session):
                    return
                if loop.time() > deadline:
                    raise ClusterError(
                        f"{pod.name} not ready after {self.ready_timeout:.0f}s "
                        f"({kind} {target}); {pod.log}:\n{log_tail(pod.log)}"
                    )
                await asyncio.sleep(0.1)  # the probe period

    async def wait(self) -> LocalPod:
        """Until some process exits that was not scaled in; returns it."""
        waits = {asyncio.ensure_future(p.proc.wait()): p for p in self.pods.values() if p.proc}
        try:
            pending = set(waits)
            while True:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if waits[task].name not in self.removed:
                        return waits[task]
                if not pending:
                    await asyncio.Future()  # every pod was scaled in: wait to be stopped
        finally:
            for task in waits:
                task.cancel()

    def running_mtas(self) -> list[str]:
        """MTA pods still running, by ordinal."""
        names = [
            n
            for n in self.pods_of("mta")
            if n not in self.removed and (p := self.pods[n].proc) and p.returncode is None
        ]
        return sorted(names, key=_ordinal)

    async def scale_in(self, replicas: int) -> dict[str, int | None]:
        """Stop the MTA pods beyond ``replicas`` (highest ordinals) as a StatefulSet does:
        SIGTERM together, each within its grace period. Returns pod -> exit status (None:
        killed after its grace). ClusterError for fewer than 1 or more than are running
        (a new pod needs ``nimbus cluster up --replicas N``: its peers are set at start)."""
        running = self.running_mtas()
        if replicas < 1:
            raise ClusterError("--replicas must be at least 1 (stop the cluster instead)")
        if replicas > len(running):
            raise ClusterError(
                f"{len(running)} MTA pods run; scaling out locally needs a restart: "
                f"nimbus cluster up --replicas {replicas} (the spools are kept)"
            )
        victims = [self.pods[n] for n in running[replicas:]]
        self.removed.update(p.name for p in victims)
        await asyncio.gather(*(self._stop_one(p) for p in victims))
        return {p.name: None if p.killed or p.proc is None else p.proc.returncode for p in victims}

    async def stop(self) -> None:
        """Stop every process, reverse start order: SIGTERM, then SIGKILL after the grace."""
        for wave in reversed(self.plan.waves()):
            await asyncio.gather(
                *(self._stop_one(self.pods[s.name]) for s in wave if s.name in self.pods)
            )
        if self._temp:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def hurry(self) -> None:
        """Make a running ``stop()`` SIGKILL now instead of waiting out the grace periods."""
        self._hurry.set()

    async def _stop_one(self, pod: LocalPod) -> None:
        proc = pod.proc
        if proc is not None:
            if proc.returncode is None:
                _signal_group(proc.pid, signal.SIGTERM)
                exited = asyncio.create_task(proc.wait())
                hurried = asyncio.create_task(self._hurry.wait())
                try:
                    await asyncio.wait(
                        {exited, hurried},
                        return_when=asyncio.FIRST_COMPLETED,
                        timeout=min(pod.spec.grace, self.stop_timeout),
                    )
                    if not exited.done():
                        pod.killed = True
                        _signal_group(proc.pid, signal.SIGKILL)
                    await exited
                finally:  # neither outlives this call, even when it is cancelled
                    hurried.cancel()
                    exited.cancel()
        if pod._log_file is not None:
            pod._log_file.close()
            pod._log_file = None

    # -- the table ---------------------------------------------------------------------------

    def summary(self) -> str:
        """What runs where, and how to inject a first message."""
        lines = [
            f"Nimbus local cluster: chart {self.chart_dir}, release {self.release}, "
            f"workdir {self.workdir}",
            "",
        ]
        rows = [("POD", "ROLE", "LISTENS ON", "LOG")]
        for pod in self.pods.values():
            addrs = "  ".join(f"{n}=127.0.0.1:{p}" for n, p in pod.ports.items())
            rows.append((pod.name, pod.role, addrs, os.path.relpath(pod.log, self.workdir)))
        rows.append(("", "", "", ""))
        rows.append(("SERVICE", "", "REACHES (first pod)", ""))
        for name, ports in self.plan.services.items():
            rows.append((name, "", "  ".join(f"{n}={a}" for n, a in ports.items()), ""))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows
        ]
        mtas = self.pods_of("mta")
        if mtas:
            body = json.dumps(
                {
                    "envelope_sender": "sender@example.com",
                    "recipients": [{"email": "recipient@example.com"}],
                    "content": "From: sender@example.com\r\nTo: recipient@example.com"
                    "\r\nSubject: Hello from Nimbus\r\n\r\nIt works.\r\n",
                }
            )
            auth = f"-u {shlex.quote(':'.join(self.credentials))} " if self.credentials else ""
            lines += [
                "",
                "Inject a first message:",
                f"  curl -sS {auth}-H 'Content-Type: application/json' "
                f"{self.http_url(mtas[0])}/api/inject/v1 -d {shlex.quote(body)}",
            ]
        if self.sink_metrics_url:
            lines += [
                "Then see it at the sink:",
                f"  curl -sS {self.sink_metrics_url} | grep nimbus_sink_messages_total",
            ]
        lines += ["", "Ctrl-C stops the cluster (spools stay in the workdir)."]
        return "\n".join(lines)


async def _all(coros: Iterable[Any]) -> None:
    """Await all; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        for task in asyncio.as_completed(tasks):
            await task
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _ordinal(name: str) -> tuple[int, str]:
    base, _, tail = name.rpartition("-")
    return (int(tail), base) if tail.isdigit() else (-1, name)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # each child leads its own session (start_new_session)
