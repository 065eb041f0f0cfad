"""Run the rendered Helm chart as local processes on loopback: ``nimbus cluster up``.

Exports:
    LocalCluster             async context manager: render, translate, start, stop
    up(cluster, stop) -> int run a cluster until ``stop`` is set or a process exits
    render_chart(...)        the chart's manifests as dicts (the real Helm engine)
    compose_values(...)      -f files, --set* expressions and overrides, merged as Helm does
    add_subcommand(subparsers), run(args) -> int     the ``nimbus cluster`` CLI
    ClusterError             anything that stops the cluster from coming up
    CHART_DIR                the chart of a source checkout (absent in a wheel install)

    async with LocalCluster(replicas=2, workdir=tmp) as cluster:
        user, password = cluster.credentials
        url = cluster.http_url("nimbus-mta-0") + "/api/inject/v1"

The translation (what runs, with which env, on which ports) is engine.cluster_render;
this module renders the chart, writes the volume files, starts the processes in
dependency order (each waits for its readiness probe), and stops them in reverse order
(SIGTERM, then SIGKILL after the pod's grace period, capped by ``stop_timeout``).
Each process's stdout/stderr goes to ``<workdir>/logs/<pod>.log``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from .cluster_render import (DEFAULT_EXECUTABLES, Plan, ProcessSpec, TranslateError,
                             translate)

__all__ = ["LocalCluster", "LocalPod", "up", "render_chart", "compose_values",
           "add_subcommand", "run", "ClusterError", "CHART_DIR"]

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = PACKAGE_ROOT / "chart"
RELEASE = "nimbus"
NAMESPACE = "default"
HELM_HINT = "pip install helm-python-sdk==0.2.2"
_HTTP_LISTEN = {"mta": "NIMBUS_HTTP_LISTEN", "tsa": "NIMBUS_TSA_LISTEN",
                "sink": "NIMBUS_SINK_HTTP_LISTEN"}


class ClusterError(RuntimeError):
    """The chart cannot be rendered or run, or a process failed to start or get ready."""


# -- rendering ---------------------------------------------------------------------------------

def _helm() -> Any:
    try:
        import helm_python
    except ImportError:
        raise ClusterError(f"rendering the chart needs the Helm engine: {HELM_HINT}") from None
    return helm_python


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise ClusterError("reading rendered manifests needs PyYAML: pip install pyyaml") from None
    return yaml


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's values coalescing: maps merge recursively, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _dotted(key: str, value: Any) -> dict[str, Any]:
    """``"a.b\\.c"`` -> ``{"a": {"b.c": value}}`` (a ``--set`` path; ``\\.`` escapes a dot)."""
    parts = [p.replace("\\.", ".") for p in re.split(r"(?<!\\)\.", key)]
    tree: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        tree = {part: tree}
    return tree


def compose_values(values_files: Sequence[str | os.PathLike[str]] = (), *,
                   set_args: Sequence[str] = (), set_string_args: Sequence[str] = (),
                   set_file_args: Sequence[str] = (),
                   set_values: Mapping[str, Any] | None = None,
                   replicas: int | None = None) -> dict[str, Any]:
    """The user values as ``helm install -f ... --set ...`` composes them, then the local
    overrides: ``set_values`` (dotted path -> value) and ``replicas`` (mta.replicas)."""
    values: dict[str, Any] = {}
    helm = None
    if values_files or set_args or set_string_args or set_file_args:
        helm = _helm()
    for path in values_files:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ClusterError(f"values file {path}: {exc.strerror}") from None
        values = _merge(values, helm.values_from_yaml(text) or {})
    for parse, items in (("parse_set_string", set_args),
                         ("parse_set_string_values", set_string_args),
                         ("parse_set_file", set_file_args)):
        for item in items:
            try:
                values = _merge(values, getattr(helm, parse)(item))
            except helm.HelmError as exc:
                raise ClusterError(f"--set {item!r}: {exc}") from None
    for key, value in (set_values or {}).items():
        values = _merge(values, _dotted(key, value))
    if replicas is not None:
        values = _merge(values, {"mta": {"replicas": int(replicas)}})
    return values


def render_chart(chart_dir: str | os.PathLike[str] | None = None,
                 values: Mapping[str, Any] | None = None, *, release: str = RELEASE,
                 namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """``helm template`` offline: schema-checked, manifests in template order (NOTES left out)."""
    chart = Path(chart_dir) if chart_dir is not None else CHART_DIR
    if not (chart / "Chart.yaml").is_file():
        raise ClusterError(f"no Helm chart at {chart}: the chart ships with the source checkout, "
                           f"not the installed package; pass --chart DIR")
    helm, yaml = _helm(), _yaml()
    try:
        with helm.Chart.load(str(chart)) as loaded:
            loaded.validate_schema(dict(values or {}))
            rendered = loaded.render(dict(values or {}), name=release, namespace=namespace,
                                     is_install=True, is_upgrade=False)
    except helm.HelmError as exc:
        raise ClusterError(f"rendering {chart}: {exc}") from None
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(("NOTES.txt", ".tpl")):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if isinstance(d, dict))
    return docs


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
    redis = shutil.which("redis-server", path=os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/usr/local/bin"]))
    if redis:
        out["redis-server"] = (redis,)
    return out


def _base_env() -> dict[str, str]:
    """The host environment without NIMBUS_* (pods get only the chart's settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def _probe(kind: str, target: Any) -> bool:
    """One readiness check: an HTTP GET answered 200-399, or a TCP connect."""
    try:
        async with asyncio.timeout(3):
            if kind == "tcp":
                _, writer = await asyncio.open_connection("127.0.0.1", int(target))
                writer.close()
                return True
            url = urlsplit(target)
            reader, writer = await asyncio.open_connection(url.hostname, url.port)
            try:
                writer.write(f"GET {url.path or '/'} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                             f"Connection: close\r\n\r\n".encode())
                await writer.drain()
                status = (await reader.readline()).split()
            finally:
                writer.close()
            return len(status) >= 2 and 200 <= int(status[1]) < 400
    except (OSError, TimeoutError, ValueError):
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
    killed: bool = False              # needed SIGKILL: SIGTERM did not end it in time
    _log_file: IO[bytes] | None = None


class LocalCluster:
    """The chart rendered with the given values, run as local processes.

    chart_dir: the chart (default: the source checkout's ``chart/``).
    values_files / set_args / set_string_args / set_file_args: as ``helm -f`` / ``--set`` /
        ``--set-string`` / ``--set-file``; set_values: dotted path -> value; replicas: MTA pods.
    workdir: pod directories and logs (default: a temporary directory, removed at exit).
    """

    def __init__(self, chart_dir: str | os.PathLike[str] | None = None, *,
                 values_files: Sequence[str | os.PathLike[str]] = (),
                 set_values: Mapping[str, Any] | None = None, set_args: Sequence[str] = (),
                 set_string_args: Sequence[str] = (), set_file_args: Sequence[str] = (),
                 replicas: int | None = None, workdir: str | os.PathLike[str] | None = None,
                 release: str = RELEASE, namespace: str = NAMESPACE,
                 ready_timeout: float = 60.0, stop_timeout: float = 30.0) -> None:
        self.chart_dir = Path(chart_dir) if chart_dir is not None else CHART_DIR
        self.values = compose_values(values_files, set_args=set_args,
                                     set_string_args=set_string_args,
                                     set_file_args=set_file_args, set_values=set_values,
                                     replicas=replicas)
        self._temp = workdir is None
        self.workdir = Path(workdir if workdir is not None
                            else tempfile.mkdtemp(prefix="nimbus-cluster-")).resolve()
        self.release, self.namespace = release, namespace
        self.ready_timeout, self.stop_timeout = ready_timeout, stop_timeout
        self.manifests: list[dict[str, Any]] = []
        self.plan = Plan(())
        self.pods: dict[str, LocalPod] = {}
        self._hurry: asyncio.Event | None = None

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

    async def __aenter__(self) -> "LocalCluster":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- lifecycle -------------------------------------------------------------------------

    def prepare(self) -> Plan:
        """Render and translate (no processes yet); raises ClusterError."""
        self.manifests = render_chart(self.chart_dir, self.values, release=self.release,
                                      namespace=self.namespace)
        try:
            self.plan = translate(self.manifests, workdir=str(self.workdir),
                                  namespace=self.namespace,
                                  allocate_port=_free_port_allocator(),
                                  executables=_executables())
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
                raise ClusterError(f"{spec.name} needs {spec.argv[0]!r}, which is not installed "
                                   f"(e.g. apt-get install redis-server)")
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            for wave in self.plan.waves():
                for spec in wave:
                    await self._spawn(spec)
                await _all((self._wait_ready(self.pods[s.name]) for s in wave))
        except BaseException:
            await self.stop()
            raise

    async def _spawn(self, spec: ProcessSpec) -> None:
        self._materialize(spec)
        log = self.workdir / "logs" / f"{spec.name.replace('/', '_')}.log"
        pod = LocalPod(spec.name, spec.role, dict(spec.ports), log, spec)
        pod._log_file = open(log, "wb")
        self.pods[spec.name] = pod
        env = {**_base_env(), **spec.env}
        try:
            pod.proc = await asyncio.create_subprocess_exec(
                *spec.argv, env=env, cwd=spec.cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=pod._log_file, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise ClusterError(f"{spec.name}: cannot run {spec.argv[0]}: {exc}") from None

    async def _wait_ready(self, pod: LocalPod) -> None:
        kind, target = pod.spec.readiness
        assert pod.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        while True:
            if pod.proc.returncode is not None:
                raise ClusterError(f"{pod.name} exited with status {pod.proc.returncode} before "
                                   f"it was ready; {pod.log}:\n{_tail(pod.log)}")
            if kind == "none" or await _probe(kind, target):
                return
            if loop.time() > deadline:
                raise ClusterError(f"{pod.name} not ready after {self.ready_timeout:.0f}s "
                                   f"({kind} {target}); {pod.log}:\n{_tail(pod.log)}")
            await asyncio.sleep(0.1)  # the probe period

    async def wait(self) -> LocalPod:
        """Until some process exits; returns it."""
        waits = {asyncio.ensure_future(p.proc.wait()): p for p in self.pods.values() if p.proc}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        return waits[next(iter(done))]

    async def stop(self) -> None:
        """Stop every process, reverse start order: SIGTERM, then SIGKILL after the grace."""
        if self._hurry is None:
            self._hurry = asyncio.Event()
        for wave in reversed(self.plan.waves()):
            await asyncio.gather(*(self._stop_one(self.pods[s.name]) for s in wave
                                   if s.name in self.pods))
        if self._temp:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def hurry(self) -> None:
        """Make a running ``stop()`` SIGKILL now instead of waiting out the grace periods."""
        if self._hurry is None:
            self._hurry = asyncio.Event()
        self._hurry.set()

    async def _stop_one(self, pod: LocalPod) -> None:
        proc = pod.proc
        if proc is not None:
            if proc.returncode is None:
                _signal_group(proc.pid, signal.SIGTERM)
                exited = asyncio.ensure_future(proc.wait())
                hurried = asyncio.ensure_future(self._hurry.wait())
                await asyncio.wait({exited, hurried}, return_when=asyncio.FIRST_COMPLETED,
                                   timeout=min(pod.spec.grace, self.stop_timeout))
                hurried.cancel()
                if not exited.done():
                    pod.killed = True
                    _signal_group(proc.pid, signal.SIGKILL)
                await exited
        if pod._log_file is not None:
            pod._log_file.close()
            pod._log_file = None

    # -- the table ---------------------------------------------------------------------------

    def summary(self) -> str:
        """What runs where, and how to inject a first message."""
        lines = [f"Nimbus local cluster: chart {self.chart_dir}, release {self.release}, "
                 f"workdir {self.workdir}", ""]
        rows = [("POD", "ROLE", "LISTENS ON", "LOG")]
        for pod in self.pods.values():
            addrs = "  ".join(f"{n}=127.0.0.1:{p}" for n, p in pod.ports.items())
            rows.append((pod.name, pod.role, addrs, os.path.relpath(pod.log, self.workdir)))
        rows.append(("", "", "", ""))
        rows.append(("SERVICE", "", "REACHES (first pod)", ""))
        for name, ports in self.plan.services.items():
            rows.append((name, "", "  ".join(f"{n}={a}" for n, a in ports.items()), ""))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        mtas = self.pods_of("mta")
        if mtas:
            body = json.dumps({"envelope_sender": "sender@example.com",
                               "recipients": [{"email": "recipient@example.com"}],
                               "content": "From: sender@example.com\r\nTo: recipient@example.com"
                                          "\r\nSubject: Hello from Nimbus\r\n\r\nIt works.\r\n"})
            auth = f"-u {shlex.quote(':'.join(self.credentials))} " if self.credentials else ""
            lines += ["", "Inject a first message:",
                      f"  curl -sS {auth}-H 'Content-Type: application/json' "
                      f"{self.http_url(mtas[0])}/api/inject/v1 -d {shlex.quote(body)}"]
        if self.sink_metrics_url:
            lines += ["Then see it at the sink:",
                      f"  curl -sS {self.sink_metrics_url} | grep nimbus_sink_messages_total"]
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


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # each child leads its own session (start_new_session)


# -- the command -------------------------------------------------------------------------------

async def up(cluster: LocalCluster, stop: asyncio.Event | None = None,
             out: IO[str] = sys.stdout) -> int:
    """Start, print the table, run until ``stop`` (Ctrl-C/SIGTERM) or a process exits."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        print(f"starting the chart's pods under {cluster.workdir} ...", file=out, flush=True)
        starting = asyncio.ensure_future(cluster.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # Ctrl-C while starting
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, ClusterError):
                await starting
            await cluster.stop()
            return 130
        stopping.cancel()
        starting.result()
        print(cluster.summary(), file=out, flush=True)
        exited = asyncio.ensure_future(cluster.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        status = 0
        if exited.done():
            pod = exited.result()
            print(f"{pod.name} exited with status {pod.proc.returncode if pod.proc else '?'}; "
                  f"stopping the cluster. {pod.log}:\n{_tail(pod.log)}", file=out, flush=True)
            status = 1
        else:
            exited.cancel()
            print("stopping the cluster (Ctrl-C again: kill now) ...", file=out, flush=True)
        stopping.cancel()
        for sig in handled:
            loop.add_signal_handler(sig, cluster.hurry)
        await cluster.stop()
        return status
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def add_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """``nimbus cluster up [-f values.yaml ...] [--set k=v ...] [--replicas N] [--workdir DIR]``."""
    cluster = subparsers.add_parser(
        "cluster", help="run the Helm chart as a local cluster (processes on loopback)")
    verbs = cluster.add_subparsers(dest="cluster_command", required=True)
    cmd = verbs.add_parser("up", help="render the chart and run its pods locally until Ctrl-C")
    cmd.add_argument("-f", "--values", action="append", default=[], metavar="FILE",
                     help="a values file, as helm -f (repeatable)")
    cmd.add_argument("--set", dest="set_args", action="append", default=[], metavar="K=V",
                     help="a value, as helm --set (repeatable)")
    cmd.add_argument("--set-string", dest="set_string_args", action="append", default=[],
                     metavar="K=V", help="a string value, as helm --set-string")
    cmd.add_argument("--set-file", dest="set_file_args", action="append", default=[],
                     metavar="K=PATH", help="a value read from a file, as helm --set-file")
    cmd.add_argument("--replicas", type=int, help="MTA pods (mta.replicas)")
    cmd.add_argument("--workdir", default="nimbus-cluster",
                     help="pod directories (spools kept across runs) and logs "
                          "(default: ./nimbus-cluster)")
    cmd.add_argument("--chart", help="chart directory (default: the source checkout's chart/)")
    cmd.add_argument("--release", default=RELEASE, help=f"release name (default {RELEASE})")
    cmd.add_argument("--ready-timeout", type=float, default=60.0,
                     help="seconds each pod gets to pass its readiness probe")
    cmd.set_defaults(cluster_run=run)
    return cluster


def run(args: argparse.Namespace) -> int:
    """Run ``nimbus cluster up``; 0 after Ctrl-C, 1 when a process fails, 2 on bad input."""
    try:
        cluster = LocalCluster(args.chart, values_files=args.values, set_args=args.set_args,
                               set_string_args=args.set_string_args,
                               set_file_args=args.set_file_args, replicas=args.replicas,
                               workdir=args.workdir, release=args.release,
                               ready_timeout=args.ready_timeout)
        cluster.prepare()
    except ClusterError as exc:
        print(f"nimbus cluster: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(up(cluster))
    except ClusterError as exc:
        print(f"nimbus cluster: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

