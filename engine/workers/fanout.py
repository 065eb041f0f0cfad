"""Answering for the whole node on any worker: admin requests and /metrics fan out.

Exports:
    install_fanout(app, role, metrics)   the middleware and the private route, on the app
                                         every worker serves (before the app is frozen)
    copy_entries(role, admin)            a (re)started worker takes its siblings' bounces
                                         and suspensions

Every worker serves the node's HTTP app twice: on the shared port (``SO_REUSEPORT``:
the kernel picks a worker per connection) and on its private Unix socket
``<runtime>/worker-<i>.sock`` (a 0700 directory: only the node's processes reach it).
A public request to ``/api/admin/*`` is first answered by the receiving worker (access
check and audit as always), then, unless refused, sent to every other worker's socket
and the answers merged (``merge.py``): reads sum over the shards, actions apply on every
worker. A bounce or suspension keeps one id on every worker (``ENTRY_ID_HEADER``), so
listing and cancelling see one entry. Requests on a private socket are never fanned out
again, are trusted, and are not audited twice.

``/metrics`` on any worker: prometheus-client's multiprocess files (counters, histograms
and gauges of every worker, dead ones' counters kept) plus the scrape-time gauges of every
live worker, summed (``/api/worker/live-metrics``, private socket only).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from engine.admin.http import ENTRY_ID_HEADER
from engine.admin.requests import AdminInputError
from engine.admin.state import AdminApi
from engine.logs.metrics import Metrics
from engine.reception.http_listener import private_request
from engine.workers.merge import merge_admin, merge_live_metrics
from engine.workers.role import WorkerRole

__all__ = ["install_fanout", "copy_entries"]

log = logging.getLogger("nimbus.workers")

_LIVE_PATH = "/api/worker/live-metrics"
# A bounce or rebind walks a whole shard; the same bound as an admin client's wait.
_FORWARD_TIMEOUT = 60.0
_ENTRY_POSTS = ("/api/admin/bounce/v1", "/api/admin/suspend/v1", "/api/admin/suspend-ready-q/v1")
_FORWARDED_HEADERS = ("Content-Type", "Authorization")

_ROLE = web.AppKey("worker_role", WorkerRole)
_METRICS = web.AppKey("worker_metrics", Metrics)


async def _forward(
    role: WorkerRole,
    index: int,
    method: str,
    path_qs: str,
    body: bytes,
    headers: dict[str, str],
    *,
    quiet: bool = False,
) -> tuple[int, Any]:
    """One request to worker ``index``'s private socket: (status, JSON body); 503 when the
    worker does not answer (restarting; logged unless ``quiet``)."""
    try:
        connector = aiohttp.UnixConnector(path=str(role.admin_socket(index)))
        timeout = aiohttp.ClientTimeout(total=_FORWARD_TIMEOUT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            async with session.request(
                method, f"http://worker{path_qs}", data=body or None, headers=headers
            ) as resp:
                text = await resp.text()
                try:
                    return resp.status, json.loads(text) if text else None
                except ValueError:
                    return resp.status, text
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        if quiet:
            return 503, None
        log.warning(
            "worker_unreachable",
            extra={"worker": index, "path": path_qs, "error": f"{type(exc).__name__}: {exc}"},
        )
        return 503, {"error": f"worker {index} did not answer"}


def _json_of(response: web.StreamResponse) -> Any:
    if isinstance(response, web.Response) and isinstance(response.body, bytes):
        try:
            return json.loads(response.body)
        except ValueError:
            return None
    return None


async def _fan_admin(request: web.Request, handler: Handler) -> web.StreamResponse:
    role = request.app[_ROLE]
    local = await handler(request)
    body = _json_of(local)
    refused = local.status >= 400 and local.status != 404
    if refused or body is None and local.status < 400:
        return local  # access refused, bad input, or not JSON: the other workers agree
    headers = {k: request.headers[k] for k in _FORWARDED_HEADERS if k in request.headers}
    if request.method == "POST" and request.path in _ENTRY_POSTS and isinstance(body, dict):
        headers[ENTRY_ID_HEADER] = str(body.get("id", ""))
    raw = await request.read() if request.body_exists else b""  # cached by the handler
    others = await asyncio.gather(
        *(
            _forward(role, i, request.method, request.path_qs, raw, headers)
            for i in range(role.count)
            if i != role.index
        )
    )
    status, merged = merge_admin(request.method, request.path, [(local.status, body), *others])
    if status == local.status and merged is body:
        return local
    return web.json_response(merged, status=status)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


async def _node_metrics(request: web.Request) -> web.Response:
    role, metrics = request.app[_ROLE], request.app[_METRICS]
    texts = [generate_latest(metrics.live).decode()]
    for index in range(role.count):
        if index != role.index:
            status, text = await _forward(role, index, "GET", _LIVE_PATH, b"", {})
            if status == 200 and isinstance(text, str):
                texts.append(text)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(role.metrics_dir))
    registry.register(_Families(merge_live_metrics(texts)))
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _live_metrics(request: web.Request) -> web.Response:
    if not private_request(request):
        raise web.HTTPNotFound()
    return web.Response(body=generate_latest(request.app[_METRICS].live), content_type="text/plain")


@web.middleware
async def _fanout(request: web.Request, handler: Handler) -> web.StreamResponse:
    if private_request(request):
        return await handler(request)
    if request.path == "/metrics" and request.method == "GET":
        return await _node_metrics(request)
    if request.path.startswith("/api/admin/"):
        return await _fan_admin(request, handler)
    return await handler(request)


# Fields of a listed entry that are not part of the request that made it.
_LISTED_ONLY = ("id", "bounced", "total_bounced", "duration")


async def copy_entries(role: WorkerRole, admin: AdminApi) -> int:
    """Take the live bounces and suspensions of the first sibling that answers, with their
    ids and expiry times (a restarted worker must hold what the node holds). Before the
    spool is recovered, so recovered mail meets them. Returns how many were copied."""
    for index in range(role.count):
        if index == role.index:
            continue
        lists = [
            await _forward(role, index, "GET", f"/api/admin/{kind}/v1", b"", {}, quiet=True)
            for kind in ("bounce", "suspend", "suspend-ready-q")
        ]
        if any(status != 200 or not isinstance(body, list) for status, body in lists):
            continue
        adders = (admin.bounce, admin.suspend, admin.suspend_ready_q)
        copied = 0
        for add, (_, entries) in zip(adders, lists, strict=True):
            for entry in entries:
                body = {k: v for k, v in entry.items() if k not in _LISTED_ONLY}
                try:
                    result = add(body, entry_id=str(entry["id"]))
                    if asyncio.iscoroutine(result):
                        await result
                    copied += 1
                except (AdminInputError, KeyError) as exc:
                    log.warning("admin_entry_not_copied", extra={"entry": entry, "error": str(exc)})
        if copied:
            log.info("admin_entries_copied", extra={"from_worker": index, "entries": copied})
        return copied
    return 0


def install_fanout(app: web.Application, role: WorkerRole, metrics: Metrics) -> None:
    """Make ``app`` answer admin requests and /metrics for every worker of ``role``'s node."""
    app[_ROLE] = role
    app[_METRICS] = metrics
    app.router.add_get(_LIVE_PATH, _live_metrics)
    app.middlewares.insert(0, _fanout)
