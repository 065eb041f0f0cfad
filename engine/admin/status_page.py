"""The live status page: ``GET /`` and ``GET /status`` (HTML), ``GET /api/admin/status/v1`` (JSON).

Exports:
    add_status_routes(app, *, read, poll_seconds=2.0)
    format_value(value, kind) -> str        a cell as the page shows it (pure)
    render_page(status, *, nonce, poll_seconds) -> str

Access is the admin API's (``admin/http.py`` ``admit``: a trusted host or an admin
user; 401/403/429 as JSON otherwise), so ``add_admin_routes`` must run first. The page
is ``templates/status.html`` rendered by Jinja2 with autoescaping: every string a user
controls (queue names, reasons, sites) is escaped on the server, and the page's script
writes cells with ``textContent`` only. It polls the JSON endpoint every
``poll_seconds`` and redraws every element marked ``data-field`` / ``data-rows``; the
script's formats mirror ``format_value``. No external resources: the inline style and
script carry a per-response CSP nonce and everything else is refused
(``Content-Security-Policy: default-src 'none'``).
"""

from __future__ import annotations

import inspect
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import jinja2
from aiohttp import web

from engine.admin.http import admit
from engine.admin.status import NodeStatus, Readings, build_status
from engine.records import JsonObject

__all__ = ["add_status_routes", "format_value", "render_page", "STATUS_PATH"]

STATUS_PATH = "/api/admin/status/v1"

ReadFn = Callable[[], Readings | Awaitable[Readings]]
_READ = web.AppKey[ReadFn]("status_read")
_POLL = web.AppKey("status_poll_seconds", float)

_NUMERIC = frozenset({"int", "age", "in", "bytes", "percent", "rate"})


def _span(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def format_value(value: Any, kind: str = "text") -> str:
    """A value as the page shows it; None is an em dash. kind: text, int, age (seconds
    ago), in (seconds from now), bytes, percent, rate, time (RFC 3339), states (a ready
    queue's [{state, context}]). The page's script formats the same way."""
    if value is None:
        return "\u2014"
    if kind == "int":
        return f"{int(value):,}"
    if kind in ("age", "in"):
        return _span(float(value))
    if kind == "bytes":
        return _bytes(float(value))
    if kind == "percent":
        return f"{float(value):.1f} %"
    if kind == "rate":
        return f"{float(value):.1f}"
    if kind == "time":  # RFC 3339 to the second: 2025-01-02 03:04:05Z
        return re.sub(r"\.\d+", "", str(value).replace("T", " "))
    if kind == "states":
        items = [f"{s.get('state')}: {s.get('context')}" for s in value]
        return "; ".join(items) or "\u2014"
    return str(value)


def _lookup(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("engine.admin", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["fmt"] = format_value
_ENV.globals["lookup"] = _lookup
_ENV.globals["numeric"] = _NUMERIC


def render_page(status: JsonObject, *, nonce: str, poll_seconds: float) -> str:
    """The page for ``status`` (a ``NodeStatus.to_json()``)."""
    return _ENV.get_template("status.html").render(
        status=status, nonce=nonce, poll_ms=int(poll_seconds * 1000), endpoint=STATUS_PATH
    )


async def _status(request: web.Request) -> NodeStatus:
    readings = request.app[_READ]()
    if inspect.isawaitable(readings):
        readings = await readings
    return build_status(readings)


def _headers(nonce: str | None = None) -> dict[str, str]:
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    if nonce is not None:
        headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
        headers["Referrer-Policy"] = "no-referrer"
    return headers


async def status_page(request: web.Request) -> web.StreamResponse:
    """GET / and /status: the page (it then updates itself from the JSON endpoint)."""
    who = admit(request)
    if isinstance(who, web.StreamResponse):
        return who
    nonce = secrets.token_urlsafe(16)
    html = render_page(
        (await _status(request)).to_json(), nonce=nonce, poll_seconds=request.app[_POLL]
    )
    return web.Response(text=html, content_type="text/html", headers=_headers(nonce))


async def status_v1(request: web.Request) -> web.StreamResponse:
    """GET /api/admin/status/v1: the node's status as JSON (``NodeStatus.to_json``)."""
    who = admit(request)
    if isinstance(who, web.StreamResponse):
        return who
    return web.json_response((await _status(request)).to_json(), headers=_headers())


def add_status_routes(app: web.Application, *, read: ReadFn, poll_seconds: float = 2.0) -> None:
    """Mount the page and its JSON endpoint on ``app`` (after ``add_admin_routes``).

    read: the node's readings now (``StatusSources.read``; plain or coroutine).
    poll_seconds: how often an open page asks for fresh JSON.
    """
    app[_READ] = read
    app[_POLL] = poll_seconds
    app.router.add_get("/", status_page)
    app.router.add_get("/status", status_page)
    app.router.add_get(STATUS_PATH, status_v1)
