"""Request and answer helpers shared by the admin route modules.

Exports:
    ADMIN                 the app key of the ``AdminApi``
    Handler               a route handler's type
    api(request)          the node's AdminApi
    error(status, reason, field=None, **headers)   a JSON error answer
    read_json(request)    the JSON body under the shared limits (400 otherwise)
    bool_param / required_param / int_param    query parameters (400 on bad values)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from engine.admin.requests import AdminInputError
from engine.admin.state import AdminApi
from engine.reception.json_body import BodyInvalid, decode_json

__all__ = [
    "ADMIN",
    "Handler",
    "api",
    "error",
    "read_json",
    "bool_param",
    "required_param",
    "int_param",
]


ADMIN = web.AppKey("admin_api", AdminApi)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, reason: str, field: str | None = None, **headers: str) -> web.Response:
    body: dict[str, Any] = {"error": reason}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, headers=headers or None)


async def read_json(request: web.Request) -> Any:
    if request.content_type not in ("application/json", "application/octet-stream", ""):
        raise AdminInputError(
            None, f"content type must be application/json, got {request.content_type}"
        )
    raw = await request.read()
    try:
        return decode_json(raw)
    except BodyInvalid as exc:  # nesting, lone surrogates: 400 like the inject route
        raise AdminInputError(exc.field or None, exc.reason) from None


def bool_param(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise AdminInputError(name, f"expected true or false, got {value!r}")


def required_param(request: web.Request, name: str) -> str:
    value = request.query.get(name, "").strip()
    if not value:
        raise AdminInputError(name, "is required")
    return value


def api(request: web.Request) -> AdminApi:
    return request.app[ADMIN]


def int_param(request: web.Request, name: str, *, minimum: int = 0) -> int | None:
    """An optional integer query parameter, at least ``minimum``; None when absent."""
    raw = request.query.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise AdminInputError(name, f"must be an integer >= {minimum}")
    return value
