"""The ``nimbus cluster up`` command: run the rendered Helm chart as local processes.

Exports:
    up(cluster, stop) -> int run a cluster until ``stop`` is set or a process exits
    scale(workdir, replicas) -> dict   ask a running ``cluster up`` to scale in
    add_subcommand(subparsers), run(args) -> int     the ``nimbus cluster`` CLI

``nimbus cluster up`` listens on ``<workdir>/control.sock`` (a Unix socket, one JSON
request per connection: ``{"scale": N}``) while it runs; ``nimbus cluster scale
--replicas N --workdir DIR`` sends that request and prints the answer.

    async with LocalCluster(replicas=2, workdir=tmp) as cluster:
        user, password = cluster.credentials
        url = cluster.http_url("nimbus-mta-0") + "/api/inject/v1"

The chart is rendered by engine.cluster.chart, translated by engine.cluster.render and
run by engine.cluster.local; this module starts it, prints what runs where, and stops it
on Ctrl-C/SIGTERM or when a process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import IO, Any, TypeVar

from engine.cluster.chart import (
    RELEASE,
    ClusterError,
)
from engine.cluster.local import LocalCluster, log_tail

__all__ = ["up", "scale", "add_subcommand", "run"]

CONTROL_SOCKET = "control.sock"

_T = TypeVar("_T")


# -- the command -------------------------------------------------------------------------------


async def up(
    cluster: LocalCluster, stop: asyncio.Event | None = None, out: IO[str] = sys.stdout
) -> int:
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
        starting = await _unless_stopped(cluster.start(), stop)
        if starting is None:  # Ctrl-C while starting
            await cluster.stop()
            return 130
        starting.result()
        print(cluster.summary(), file=out, flush=True)
        control = await _serve_control(cluster, out)
        try:
            exited = await _unless_stopped(cluster.wait(), stop)
        finally:
            control.close()
            await control.wait_closed()
            (cluster.workdir / CONTROL_SOCKET).unlink(missing_ok=True)
        status = 0
        if exited is not None:
            pod = exited.result()
            print(
                f"{pod.name} exited with status {pod.proc.returncode if pod.proc else '?'}; "
                f"stopping the cluster. {pod.log}:\n{log_tail(pod.log)}",
                file=out,
                flush=True,
            )
            status = 1
        else:
            print("stopping the cluster (Ctrl-C again: kill now) ...", file=out, flush=True)
        for sig in handled:
            loop.add_signal_handler(sig, cluster.hurry)
        await cluster.stop()
        return status
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


async def _serve_control(cluster: LocalCluster, out: IO[str]) -> asyncio.Server:
    """The control socket of a running ``cluster up`` (``nimbus cluster scale``)."""
    lock = asyncio.Lock()  # one scale at a time

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(await asyncio.wait_for(reader.readline(), 10))
            replicas = request["scale"]
            if not isinstance(replicas, int) or isinstance(replicas, bool):
                raise ValueError("scale must be a whole number")
            async with lock:
                started = time.monotonic()
                print(f"scaling in to {replicas} MTA pod(s) ...", file=out, flush=True)
                stopped = await cluster.scale_in(replicas)
                answer: dict[str, Any] = {
                    "stopped": stopped,
                    "running": cluster.running_mtas(),
                    "seconds": round(time.monotonic() - started, 3),
                }
                print(f"scaled in: {json.dumps(answer)}", file=out, flush=True)
        except (ValueError, KeyError, TypeError, TimeoutError) as exc:
            answer = {"error": f"bad request: {exc}"}
        except ClusterError as exc:
            answer = {"error": str(exc)}
        writer.write(json.dumps(answer).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    path = cluster.workdir / CONTROL_SOCKET
    path.unlink(missing_ok=True)
    return await asyncio.start_unix_server(handle, path=str(path))


async def scale(workdir: str | Path, replicas: int, timeout: float = 600.0) -> dict[str, Any]:
    """Ask the ``cluster up`` running on ``workdir`` to scale in to ``replicas``."""
    path = Path(workdir) / CONTROL_SOCKET
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except OSError as exc:
        raise ClusterError(
            f"no running cluster on {workdir} ({path}: {exc.strerror or exc}); "
            "start one with nimbus cluster up --workdir DIR"
        ) from None
    try:
        writer.write(json.dumps({"scale": replicas}).encode() + b"\n")
        await writer.drain()
        answer = json.loads(await asyncio.wait_for(reader.readline(), timeout))
    finally:
        writer.close()
    if "error" in answer:
        raise ClusterError(answer["error"])
    return dict(answer)


async def _unless_stopped(
    work: Coroutine[Any, Any, _T], stop: asyncio.Event
) -> asyncio.Task[_T] | None:
    """Run ``work`` until it ends or ``stop`` is set. Returns its finished task (call
    ``result()``), or None when ``stop`` came first: the work is then cancelled and awaited,
    so no task outlives this call."""
    task = asyncio.create_task(work)
    stopping = asyncio.create_task(stop.wait())
    stopped = False
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            stopped = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ClusterError):
                await task
    return None if stopped else task


def add_subcommand(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """``nimbus cluster up [-f values.yaml ...] [--set k=v ...] [--replicas N] [--workdir DIR]``."""
    cluster = subparsers.add_parser(
        "cluster", help="run the Helm chart as a local cluster (processes on loopback)"
    )
    verbs = cluster.add_subparsers(
        dest="cluster_command", required=True, help="what to do with the local cluster"
    )
    cmd = verbs.add_parser("up", help="render the chart and run its pods locally until Ctrl-C")
    cmd.add_argument(
        "-f",
        "--values",
        action="append",
        default=[],
        metavar="FILE",
        help="a values file, as helm -f (repeatable)",
    )
    cmd.add_argument(
        "--set",
        dest="set_args",
        action="append",
        default=[],
        metavar="K=V",
        help="a value, as helm --set (repeatable)",
    )
    cmd.add_argument(
        "--set-string",
        dest="set_string_args",
        action="append",
        default=[],
        metavar="K=V",
        help="a string value, as helm --set-string",
    )
    cmd.add_argument(
        "--set-file",
        dest="set_file_args",
        action="append",
        default=[],
        metavar="K=PATH",
        help="a value read from a file, as helm --set-file",
    )
    cmd.add_argument("--replicas", type=int, help="MTA pods (mta.replicas)")
    cmd.add_argument(
        "--workdir",
        default="nimbus-cluster",
        help="pod directories (spools kept across runs) and logs (default: ./nimbus-cluster)",
    )
    cmd.add_argument("--chart", help="chart directory (default: the source checkout's chart/)")
    cmd.add_argument("--release", default=RELEASE, help=f"release name (default {RELEASE})")
    cmd.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        help="seconds each pod gets to pass its readiness probe",
    )
    cmd.set_defaults(cluster_run=run)
    sc = verbs.add_parser(
        "scale",
        help="scale a running local cluster in: the highest MTA pods stop and hand "
        "their spools to the others",
    )
    sc.add_argument("--replicas", type=int, required=True, help="MTA pods to keep (at least 1)")
    sc.add_argument(
        "--workdir",
        default="nimbus-cluster",
        help="the running cluster's workdir (as given to cluster up; default ./nimbus-cluster)",
    )
    sc.set_defaults(cluster_run=run_scale)
    return cluster


def run_scale(args: argparse.Namespace) -> int:
    """``nimbus cluster scale``: 0 when done, 1 when refused or no cluster runs."""
    try:
        answer = asyncio.run(scale(args.workdir, args.replicas))
    except ClusterError as exc:
        print(f"nimbus cluster scale: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2, sort_keys=True))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``nimbus cluster up``; 0 after Ctrl-C, 1 when a process fails, 2 on bad input."""
    try:
        cluster = LocalCluster(
            args.chart,
            values_files=args.values,
            set_args=args.set_args,
            set_string_args=args.set_string_args,
            set_file_args=args.set_file_args,
            replicas=args.replicas,
            workdir=args.workdir,
            release=args.release,
            ready_timeout=args.ready_timeout,
        )
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
