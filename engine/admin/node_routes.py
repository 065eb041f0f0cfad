"""Operator routes about queues and the node itself (kumod's newer admin endpoints).

Exports:
    NodeFacts        what the node routes read: node id, start time, metrics as JSON
    ROUTES           (method, path, handler) of every route below, for ``admin/http.py``
    machine_info(node_id) -> dict     ``/api/machine-info`` (reads /proc, /etc; no network)
    task_dump() -> str, memory_stats() -> str

Routes (guarded and audited like every admin route, ``admin/http.py``):
    GET  /api/admin/inspect-ready-q/v1?queue_name=&include_scheduled_queues=
    POST /api/admin/abort-ready-q-conn/v1          {queue_name, session_id} -> {}
    GET  /api/admin/resolve-egress-path/v1?domain=&source=
    GET  /api/admin/provider-summary/v1            Nimbus addition (kcli reads /metrics)
    POST /api/admin/retry-now/v1                   Nimbus addition: due now, no attempt
    POST /api/admin/spool-compact/v1               {name}: checkpoint + VACUUM the spool
    POST /api/admin/set_diagnostic_log_filter/v1   {"filter": "info,nimbus.ready=debug"}
    GET  /api/admin/task-dump                      text: every asyncio task and its stack
    GET  /api/admin/memory/stats                   text: RSS, GC, allocator blocks
    GET  /api/machine-info                         JSON: node id, host, CPU, OS
    GET  /metrics.json                             every metric as JSON
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import os
import platform
import resource
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.admin.requests import AdminInputError, parse_log_filter_request
from engine.admin.web import Handler, api, bool_param, read_json, required_param
from engine.delivery.mx import MxError
from engine.logs.diagnostics import set_log_filter
from engine.policy.events import PolicyFailure

__all__ = ["NodeFacts", "ROUTES", "NODE_FACTS", "machine_info", "task_dump", "memory_stats"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFacts:
    """node_id: this node's id. started: when it started (unix s). metrics_json: every
    metric read now (``Metrics.to_json``)."""

    node_id: str
    started: float
    metrics_json: Callable[[], dict[str, Any]]


NODE_FACTS = web.AppKey("admin_node_facts", NodeFacts)


def _facts(request: web.Request) -> NodeFacts:
    return request.app[NODE_FACTS]


# -- queues ------------------------------------------------------------------------


async def inspect_ready_q_v1(request: web.Request) -> web.Response:
    """One ready queue: identity, state, connection tasks, path config."""
    name = required_param(request, "queue_name")
    found = await api(request).inspect_ready_q(
        name, bool_param(request, "include_scheduled_queues")
    )
    return web.json_response(found)


async def abort_ready_q_conn_v1(request: web.Request) -> web.Response:
    """Abort one connection task; its in-flight message goes back, due now."""
    return web.json_response(await api(request).abort_ready_q_conn(await read_json(request)))


async def resolve_egress_path_v1(request: web.Request) -> web.Response:
    """The effective egress path for a domain and source, each value with its origin."""
    domain = required_param(request, "domain")
    source = request.query.get("source", "").strip() or None
    try:
        found = await api(request).resolve_egress_path(domain, source)
    except MxError as exc:
        raise AdminInputError("domain", f"MX lookup failed: {exc}") from None
    except PolicyFailure as exc:
        raise AdminInputError(None, f"the policy did not answer: {exc}") from None
    return web.json_response(found)


async def provider_summary_v1(request: web.Request) -> web.Response:
    """Ready queues rolled up by provider (or site), pool and source."""
    return web.json_response(await api(request).provider_summary())


async def retry_now_v1(request: web.Request) -> web.Response:
    """Make the selected scheduled messages due now, counting no attempt."""
    return web.json_response(await api(request).retry_now(await read_json(request)))


async def spool_compact_v1(request: web.Request) -> web.Response:
    """Flush and fully compact the spool (KumoMTA's spool-compact)."""
    return web.json_response(await api(request).spool_compact(await read_json(request)))


# -- the node ----------------------------------------------------------------------


async def set_diagnostic_log_filter_v1(request: web.Request) -> web.Response:
    """Change the diagnostic log filter of this process now."""
    spec = parse_log_filter_request(await read_json(request))
    try:
        set_log_filter(spec)
    except ValueError as exc:
        raise AdminInputError("filter", str(exc)) from None
    return web.json_response({})


def task_dump() -> str:
    """Every asyncio task of the running loop: name, coroutine, and where it waits."""
    out = io.StringIO()
    tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    out.write(f"{len(tasks)} tasks\n")
    for task in tasks:
        coro = task.get_coro()
        out.write(f"\n{task.get_name()}: {getattr(coro, '__qualname__', coro)!s}\n")
        for frame in task.get_stack(limit=8):
            code = frame.f_code
            out.write(f"    {code.co_filename}:{frame.f_lineno} in {code.co_name}\n")
    return out.getvalue()


async def task_dump_get(request: web.Request) -> web.Response:
    """Text: every task of the loop and its stack (cheap here: no stop-the-world)."""
    return web.Response(text=task_dump())


def _status_fields() -> dict[str, str]:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    wanted = ("VmRSS", "VmHWM", "VmSize", "RssAnon", "RssFile", "Threads")
    return {k: v.strip() for k, _, v in (ln.partition(":") for ln in lines) if k in wanted}


def memory_stats() -> str:
    """Human-readable memory facts of this process (not a stable format, as kumod's)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    lines = [f"{k}: {v}" for k, v in _status_fields().items()]
    lines.append(f"max_rss_kib: {usage.ru_maxrss}")
    lines.append(f"allocated_blocks: {sys.getallocatedblocks()}")
    lines.append(f"gc_counts: {gc.get_count()}")
    for gen, stats in enumerate(gc.get_stats()):
        lines.append(f"gc_gen{gen}: {stats}")
    return "\n".join(lines) + "\n"


async def memory_stats_get(request: web.Request) -> web.Response:
    return web.Response(text=memory_stats())


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _container_runtime() -> str | None:
    if os.path.exists("/run/.containerenv"):
        return "podman"
    if os.path.exists("/.dockerenv"):
        return "docker"
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "kubernetes"
    return None


def machine_info(node_id: str) -> dict[str, Any]:
    """KumoMTA's MachineInfoV1 fields, from this machine's files; no network."""
    os_release = dict(
        (k, v.strip('"'))
        for k, _, v in (ln.partition("=") for ln in _read("/etc/os-release").splitlines())
        if k
    )
    cpus = sorted(
        {
            ln.partition(":")[2].strip()
            for ln in _read("/proc/cpuinfo").splitlines()
            if ln.startswith("model name")
        }
    )
    mac = uuid.getnode()
    mac_text = ":".join(f"{(mac >> s) & 0xFF:02x}" for s in range(40, -1, -8))
    machine_id = _read("/etc/machine-id").strip()
    hostname = socket.gethostname()
    fingerprint = hashlib.sha256(f"{hostname}|{mac_text}|{machine_id}".encode()).hexdigest()
    return {
        "node_id": node_id,
        "hostname": hostname,
        "mac_address": mac_text,
        "cpu_brand": ", ".join(cpus) or platform.processor() or platform.machine(),
        "num_cores": os.cpu_count(),
        "distribution": os_release.get("PRETTY_NAME", platform.system()),
        "kernel_version": platform.release(),
        "container_runtime": _container_runtime(),
        "fingerprint": fingerprint,
        "python_version": platform.python_version(),
    }


async def machine_info_get(request: web.Request) -> web.Response:
    """This node's identity: node id, host, CPU, OS, container runtime."""
    facts = _facts(request)
    info = machine_info(facts.node_id)
    info["uptime_seconds"] = round(time.time() - facts.started, 3)
    return web.json_response(info)


async def metrics_json_get(request: web.Request) -> web.Response:
    """Every metric as JSON (``nimbus top`` reads it)."""
    return web.json_response(_facts(request).metrics_json())


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/api/admin/inspect-ready-q/v1", inspect_ready_q_v1),
    ("POST", "/api/admin/abort-ready-q-conn/v1", abort_ready_q_conn_v1),
    ("GET", "/api/admin/resolve-egress-path/v1", resolve_egress_path_v1),
    ("GET", "/api/admin/provider-summary/v1", provider_summary_v1),
    ("POST", "/api/admin/retry-now/v1", retry_now_v1),
    ("POST", "/api/admin/spool-compact/v1", spool_compact_v1),
    ("POST", "/api/admin/set_diagnostic_log_filter/v1", set_diagnostic_log_filter_v1),
    ("GET", "/api/admin/task-dump", task_dump_get),
    ("GET", "/api/admin/memory/stats", memory_stats_get),
    ("GET", "/api/machine-info", machine_info_get),
    ("GET", "/metrics.json", metrics_json_get),
)
