"""Live SMTP traces over a websocket: ``trace-smtp-server`` and ``trace-smtp-client``.

Exports:
    ROUTES                     the two GET routes, for ``admin/http.py``
    server_filter(query), client_filter(query)   the filters a query asks for (pure;
                               AdminInputError on a bad CIDR)
    terse(event) -> event      a long read or write cut to its first line and its size

Routes (admin-guarded; a plain GET without the websocket upgrade is a 400):
    GET /api/admin/trace-smtp-server/v1?source=CIDR&terse=
    GET /api/admin/trace-smtp-client/v1?domain=&routing_domain=&tenant=&campaign=
        &mail_from=&rcpt_to=&mx_host=&mx_addr=CIDR&egress_source=&egress_pool=
        &ready_queue=&terse=

Each websocket text message is one trace event (``engine/logs/trace.py``) as JSON. A
per-message filter (domain, rcpt_to, ...) lets through the events of a session that has
no transaction yet, as kcli does; ``source``/``mx_addr`` may repeat. The subscription
ends when the client closes the socket or the node stops; events a slow client could not
take are counted and reported as ``{"kind": "dropped", "count"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web
from multidict import MultiMapping

from engine.admin.requests import AdminInputError
from engine.admin.web import Handler, bool_param
from engine.trace import CLIENT_TRACES, SERVER_TRACES, TraceHub

__all__ = ["ROUTES", "server_filter", "client_filter", "terse"]

Event = dict[str, Any]
Want = Callable[[Event], bool]

_PER_MESSAGE = {
    "domain": "domain",
    "mail_from": "mail_from",
    "rcpt_to": "rcpt_to",
}
_PER_SESSION = ("mx_host", "egress_source", "egress_pool", "ready_queue")
CLIENT_PARAMS = (*_PER_MESSAGE, "routing_domain", "tenant", "campaign", *_PER_SESSION)


def _networks(values: list[str], field: str) -> list[Any]:
    try:
        return [ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip()]
    except ValueError as exc:
        raise AdminInputError(field, str(exc)) from None


def _ip_in(address: str, nets: list[Any]) -> bool:
    host = address.rpartition(":")[0] if address.count(":") == 1 else address
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in nets)


def server_filter(query: MultiMapping[str]) -> Want:
    """Inbound events from peers in any ``source`` CIDR (none given: every peer)."""
    nets = _networks(list(query.getall("source", [])), "source")
    if not nets:
        return lambda _e: True
    return lambda e: _ip_in(str(e.get("peer_ip") or e.get("peer", "")), nets)


def client_filter(query: MultiMapping[str]) -> Want:
    """Outbound events matching every given filter; per-message ones pass events that
    have no transaction yet."""
    nets = _networks(list(query.getall("mx_addr", [])), "mx_addr")
    wanted = {k: query.get(k, "").strip() for k in CLIENT_PARAMS if query.get(k, "").strip()}
    for key in ("domain", "routing_domain", "mx_host"):
        if key in wanted:
            wanted[key] = wanted[key].lower()

    def want(e: Event) -> bool:
        if nets and not _ip_in(str(e.get("peer", "")), nets):
            return False
        for key, value in wanted.items():
            have = e.get(key)
            if key in _PER_SESSION:
                if str(have or "").lower() != value.lower():
                    return False
            elif have is not None and str(have).lower() != value.lower():
                return False
        return True

    return want


def terse(event: Event) -> Event:
    """A read or write longer than one line: its first line and ``… (N bytes)``."""
    data = event.get("data")
    if not isinstance(data, str) or data.count("\n") <= 1:
        return event
    first = data.split("\n", 1)[0].rstrip("\r")
    return {**event, "data": f"{first} ... ({event.get('bytes', len(data))} bytes)\r\n"}


async def _stream(request: web.Request, hub: TraceHub, want: Want) -> web.StreamResponse:
    short = bool_param(request, "terse")
    ws = web.WebSocketResponse(heartbeat=30)
    if not ws.can_prepare(request).ok:
        raise AdminInputError(None, "this is a websocket endpoint: send an upgrade request")
    await ws.prepare(request)
    sub = hub.subscribe(want)
    reader = asyncio.create_task(_until_closed(ws))
    reported = 0
    try:
        while not reader.done():
            getter = asyncio.ensure_future(sub.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            event = getter.result()
            if sub.dropped > reported:
                await ws.send_json({"kind": "dropped", "count": sub.dropped - reported})
                reported = sub.dropped
            await ws.send_json(terse(event) if short else event)
    except (ConnectionError, RuntimeError):
        pass  # the client went away mid-send
    finally:
        sub.close()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await ws.close()
    return ws


async def _until_closed(ws: web.WebSocketResponse) -> None:
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            return


async def trace_smtp_server_v1(request: web.Request) -> web.StreamResponse:
    """Websocket: inbound SMTP sessions, live."""
    return await _stream(request, SERVER_TRACES, server_filter(request.query))


async def trace_smtp_client_v1(request: web.Request) -> web.StreamResponse:
    """Websocket: outbound SMTP sessions, live."""
    return await _stream(request, CLIENT_TRACES, client_filter(request.query))


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/api/admin/trace-smtp-server/v1", trace_smtp_server_v1),
    ("GET", "/api/admin/trace-smtp-client/v1", trace_smtp_client_v1),
)
