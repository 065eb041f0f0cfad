"""``nimbus mta --workers N``: the supervisor of a node's engine worker processes.

Exports:
    Supervisor(settings, workers, argv)   ``await run()`` -> exit code
    die_with_parent()                     in a worker: be killed when the supervisor dies

The model is uvicorn's ``supervisors/multiprocess.py``: a small parent that runs no mail
itself. It
- reserves the SMTP and HTTP ports (a socket bound with ``SO_REUSEPORT`` and never
  listening, so a configured port 0 becomes one port every worker binds, and a worker
  restarted later finds it free); each worker listens on it with ``SO_REUSEPORT`` and
  the kernel spreads connections over the workers;
- serves the node's throttle store on ``<runtime>/throttle.sock`` (limits that hold per
  node hold for all workers: ``engine/shaping/throttle/node_socket.py``);
- starts worker i as ``python -m engine.cli <the same arguments> --worker-index i``; it
  owns spool shard i, writes log segments ``*.w<i>``, and serves the node's app also on
  ``<runtime>/worker-<i>.sock`` (admin and /metrics for the whole node, ``fanout.py``);
- loads the policy once before any worker starts (a broken policy: one line, exit 2);
- logs one ``ready`` line (with the ports) once every worker is ready; a worker that
  fails before the node was ever ready stops the node (its one-line error is on stderr,
  exit 2), as one process would;
- restarts a worker that exits unexpectedly, after a backoff (0.5 s doubling to 10 s,
  reset after 30 s of uptime), with one ``worker_restarting`` line; its multiprocess
  gauge files are marked dead;
- forwards SIGHUP (policy reload) to every worker, and at SIGTERM/SIGINT forwards
  SIGTERM, waits until every worker has drained and exited, then exits 0.

Workers ask the kernel to SIGKILL them when the supervisor dies (``PR_SET_PDEATHSIG``),
so a kill -9 of the supervisor is a kill -9 of the node: nothing acknowledged is lost,
every shard is recovered at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

from engine.config.settings import Settings
from engine.config.units import parse_hostport
from engine.policy.loader import load_policy
from engine.reception.listen import binding
from engine.shaping.throttle.embedded import EmbeddedStore
from engine.shaping.throttle.factory import COUNTS_FILE
from engine.shaping.throttle.node_socket import serve_store
from engine.workers.role import WorkerRole

__all__ = ["Supervisor", "die_with_parent"]

log = logging.getLogger("nimbus.workers")

_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 10.0
_STABLE_AFTER = 30.0  # seconds of uptime after which a crash starts the backoff anew
_PR_SET_PDEATHSIG = 1


def die_with_parent(supervisor_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent (the supervisor, ``supervisor_pid``)
    dies; exit at once if it is already gone (the parent changed before the request took
    effect). Elsewhere: nothing (the workers outlive a killed parent)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor_pid:
        os._exit(1)


_RUNTIME_PREFIX = "nimbus-node-"


def _remove_stale_runtimes() -> None:
    """Delete runtime directories of supervisors that are gone (a kill -9 leaves its
    sockets and metric files behind); only ours (same owner), only with a dead pid."""
    for path in Path(tempfile.gettempdir()).glob(_RUNTIME_PREFIX + "*"):
        try:
            if path.stat().st_uid != os.getuid():
                continue
            pid = int((path / "supervisor.pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            continue  # not readable, not ours, or still starting: leave it


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reserve(address: str, setting: str, service: str) -> tuple[socket.socket, str]:
    """Bind (never listen) ``address`` with SO_REUSEPORT; returns the socket and the
    address with its real port. Raises ListenError (one line, with the fix)."""
    host, port = parse_hostport(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with binding(service, address, setting):
            sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock, _hostport(host, sock.getsockname()[1])


class _Worker:
    """One worker slot: its current process and its restarts."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.failures = 0


class Supervisor:
    """Runs a node as ``workers`` engine processes.

    settings: the node's settings (ports, node id; the workers load their own).
    workers: how many (> 1).
    argv: the command line of ``nimbus`` (``["mta", ...]``): each worker gets it again.
    """

    def __init__(self, settings: Settings, workers: int, argv: list[str]) -> None:
        self.settings = settings
        self.count = workers
        self.argv = argv
        self._stopping = asyncio.Event()
        self._workers = [_Worker(i) for i in range(workers)]
        self._listen: dict[str, str] = {}
        self._failed: int | None = None  # exit code of a worker that failed to start

    async def run(self) -> int:
        """Reserve the ports, serve the throttle store, run the workers until SIGTERM."""
        s = self.settings
        # Load the policy once here: a broken one is one line on stderr and exit 2, as
        # with one process, not one line per worker.
        await asyncio.to_thread(load_policy, s.policy.dir)
        http_sock, self._listen["http"] = _reserve(s.http.listen, "http.listen", "HTTP")
        smtp_sock, self._listen["smtp"] = _reserve(s.smtp.listen, "smtp.listen", "SMTP")
        await asyncio.to_thread(_remove_stale_runtimes)
        runtime = Path(tempfile.mkdtemp(prefix=_RUNTIME_PREFIX))  # mode 0700
        (runtime / "supervisor.pid").write_text(f"{os.getpid()}\n")
        role = WorkerRole(index=0, count=self.count, runtime=runtime)
        role.metrics_dir.mkdir()
        # The node's window counters (IP warm-up) persist in the spool directory, as with
        # one process (engine/shaping/throttle/factory.py COUNTS_FILE).
        await asyncio.to_thread(Path(s.spool.dir).mkdir, parents=True, exist_ok=True)
        store = EmbeddedStore(counts_file=Path(s.spool.dir) / COUNTS_FILE)
        server = await serve_store(role.throttle_socket, store)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        try:
            async with asyncio.TaskGroup() as tg:
                for worker in self._workers:
                    tg.create_task(self._keep(worker, runtime), name=f"worker-{worker.index}")
                announce = tg.create_task(self._announce(), name="announce-ready")
                await self._stopping.wait()
                announce.cancel()
                self._forward(signal.SIGTERM)
        finally:
            server.close()
            await store.close()
            http_sock.close()
            smtp_sock.close()
            shutil.rmtree(runtime, ignore_errors=True)
        if self._failed is not None:
            return self._failed
        log.info("stopped", extra={"workers": self.count})
        return 0

    async def _announce(self) -> None:
        for worker in self._workers:
            await worker.ready.wait()
        log.info(
            "ready",
            extra={
                "smtp_port": parse_hostport(self._listen["smtp"])[1],
                "http_port": parse_hostport(self._listen["http"])[1],
                "node_id": self.settings.effective_node_id,
                "workers": self.count,
                "pids": [w.proc.pid for w in self._workers if w.proc is not None],
            },
        )

    def _forward(self, sig: int) -> None:
        for worker in self._workers:
            if worker.proc is not None and worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(sig)

    async def _spawn(
        self, worker: _Worker, runtime: Path
    ) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
        read_fd, write_fd = os.pipe()
        cmd = [
            sys.executable,
            "-m",
            "engine.cli",
            *self.argv,
            "--workers",
            str(self.count),
            "--worker-index",
            str(worker.index),
            "--worker-runtime",
            str(runtime),
            "--worker-ready-fd",
            str(write_fd),
            "--worker-supervisor",
            str(os.getpid()),
            "--smtp-listen",
            self._listen["smtp"],
            "--http-listen",
            self._listen["http"],
        ]
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(runtime / "metrics")}
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                *cmd, env=env, pass_fds=(write_fd,), stdin=asyncio.subprocess.DEVNULL
            )
        finally:
            os.close(write_fd)
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb")
        )
        return reader, transport

    async def _keep(self, worker: _Worker, runtime: Path) -> None:
        """Run worker ``worker.index`` until the node stops, restarting it when it dies."""
        while True:
            reader, pipe = await self._spawn(worker, runtime)
            proc = worker.proc
            assert proc is not None
            if self._stopping.is_set():  # SIGTERM came while it was starting
                proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            if await reader.readline():
                worker.ready.set()
            pipe.close()
            code = await proc.wait()
            with contextlib.suppress(OSError):
                mark_process_dead(proc.pid, str(runtime / "metrics"))
            if self._stopping.is_set():
                return
            if not worker.ready.is_set():
                # It never served: a bad setting, a busy port, a locked spool. Stop the
                # node as one process would (the worker printed the reason).
                self._failed = code if code and code > 0 else 2
                self._stopping.set()
                return
            worker.failures = (
                1 if time.monotonic() - started > _STABLE_AFTER else worker.failures + 1
            )
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (worker.failures - 1))
            log.warning(
                "worker_restarting",
                extra={"worker": worker.index, "pid": proc.pid, "exit": code, "delay": delay},
            )
            try:
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
                return
            except TimeoutError:
                pass
