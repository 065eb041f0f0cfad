"""The HTTP routes of reception: injection, probes and metrics (aiohttp, on the engine's loop).

Exports:
    build_app(...)   the aiohttp Application (one handler per versioned route); the node
                     adds the admin routes (``engine.admin.http``) and serves it with
                     ``engine.reception.http_listener.HttpListener``

Routes:
    POST /api/inject/v1        KumoMTA-compatible injection (basic auth)
    GET  /api/check-liveness/v1  readiness: 200 "OK", or 503 with the reason (starting,
                               shutting down; JSON while shedding load)
    GET  /api/check-alive/v1   liveness: 200 "OK" whenever the event loop runs it
    GET  /metrics              Prometheus exposition
    GET  /api/openapi.json     the OpenAPI document of every route (engine.reception.openapi)

Errors are JSON ``{"error": reason, "field": ...}``: 400 malformed JSON or field
(``engine.reception.json_body``: nesting, lone surrogates),
401 missing/wrong credentials, 429 too many failed authentications from the peer
(``Retry-After``; ``reception/auth.py``), 413 body over ``http.max_request_size`` (counted
while streaming, since aiohttp doesn't cap streamed reads) or more recipients than
``http.max_recipients``, 415 wrong content type or Content-Encoding
(``http_listener.body_rules``), 422 template error, 503 not ready /
shutting down / spool full / spool not answering within ``spool.write_timeout`` /
load shedding (``{"error": "load shedding", "reason": ..., "detail": ...}`` with
``Retry-After``), a failing auth hook or spool. No other 5xx (issue 9); the routes are
described by ``GET /api/openapi.json`` (``engine.reception.openapi``).
A recipient whose address is unusable or whose template fails is one failed recipient
of a 200 answer (KumoMTA's ``failed_recipients`` / ``errors``), not a failed request.
Building yields to the loop after each recipient, so a 10,000-recipient request never
holds up liveness, SMTP sessions or deliveries for longer than one message's build.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from cachetools import TTLCache
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engine.config.settings import Settings
from engine.logs.diagnostics import bound_contextvars
from engine.logs.metrics import Metrics
from engine.policy.events import (
    HTTP_MESSAGE_GENERATED,
    HTTP_SERVER_VALIDATE_AUTH_BASIC,
    PolicyFailure,
    Registry,
    Rejected,
)
from engine.reception.accept import Accepted, Acceptor, Incoming
from engine.reception.auth import (
    Credentials,
    FailureLimiter,
    MalformedAuthorization,
    parse_basic,
    too_many_failures_reason,
)
from engine.reception.inject.build import Templates, build_message
from engine.reception.inject.request import (
    InjectError,
    RequestInvalid,
    RequestTooLarge,
    TemplateFailed,
    check_recipient,
    parse_request,
)
from engine.reception.json_body import BodyInvalid, decode_json
from engine.reception.openapi import openapi_v1
from engine.reception.shedding import Shedding
from engine.records import Json, PeerAddress
from engine.storage.spool import SpoolError, SpoolFull, SpoolTimeout

__all__ = ["build_app"]

log = logging.getLogger("nimbus.http")

_ACCEPTOR = web.AppKey("acceptor", Acceptor)
_CREDENTIALS = web.AppKey("credentials", Credentials)
_SETTINGS = web.AppKey("settings", Settings)
_METRICS = web.AppKey("metrics", Metrics)
_POLICY = web.AppKey[Callable[[], Registry]]("policy")
_SHEDDING = web.AppKey[Callable[[], Shedding | None]]("shedding")


def _error(status: int, reason: str, field: str | None = None, **headers: str) -> web.Response:
    body: dict[str, Any] = {"error": reason}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, headers=headers or None)


async def _read_capped(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None when it exceeds ``limit`` bytes (stops reading early)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks, total = [], 0
    async for chunk in request.content.iter_chunked(65536):
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class _AuthCache:
    """``http_server_validate_auth_basic`` answers, kept 60 s (as KumoMTA) per user and
    password digest, so a policy lookup isn't paid on every request; at most SIZE users,
    least recently used evicted first."""

    TTL = 60.0
    SIZE = 10_000

    def __init__(self) -> None:
        self._entries: TTLCache[tuple[str, bytes], bool] = TTLCache(
            maxsize=self.SIZE, ttl=self.TTL, timer=time.monotonic
        )

    async def check(
        self, registry: Registry, credentials: Credentials, user: str, password: str
    ) -> bool:
        if not registry.has(HTTP_SERVER_VALIDATE_AUTH_BASIC):
            return credentials.check(user, password)
        # A digest, never the password itself, is kept as the key.
        key = (user, hashlib.sha256(password.encode()).digest())
        hit = self._entries.get(key)
        if hit is not None:
            return hit
        verdict = await registry.dispatch(HTTP_SERVER_VALIDATE_AUTH_BASIC, user, password)
        ok = credentials.check(user, password) if verdict is None else bool(verdict)
        self._entries[key] = ok
        return ok


@web.middleware
async def _log_context(request: web.Request, handler: Any) -> web.StreamResponse:
    """Name the request and its peer on every line logged while serving it (never the
    Authorization header). Scoped: keep-alive requests share one task."""
    with bound_contextvars(http_request=f"{request.method} {request.path}", peer=request.remote):
        return await handler(request)


_AUTH_CACHE = web.AppKey("auth_cache", _AuthCache)
_AUTH_LIMITER = web.AppKey("auth_limiter", FailureLimiter)


async def _authenticate(request: web.Request) -> str | web.Response:
    """The authenticated user name, or the 400/401/429 response to send."""
    challenge = {"WWW-Authenticate": 'Basic realm="nimbus"'}
    limiter = request.app[_AUTH_LIMITER]
    wait = limiter.retry_after(request.remote)
    if wait:
        return _error(429, too_many_failures_reason(wait), **{"Retry-After": str(wait)})
    header = request.headers.get("Authorization")
    if not header:
        return _error(401, "authentication required", **challenge)
    try:
        creds = parse_basic(header)
    except MalformedAuthorization as exc:
        limiter.failed(request.remote)
        return _error(400, str(exc))
    if creds is None:
        return _error(401, "only Basic authentication is supported", **challenge)
    try:
        ok = await request.app[_AUTH_CACHE].check(
            request.app[_POLICY](), request.app[_CREDENTIALS], *creds
        )
    except (PolicyFailure, Rejected):
        # 503, not 500: the client did nothing wrong and may retry (no 5xx but 503, issue 9).
        return _error(503, "authentication hook failed; try again later")
    if not ok:
        limiter.failed(request.remote)
        return _error(401, "invalid credentials", **challenge)
    return creds[0]


async def inject_v1(request: web.Request) -> web.Response:
    """POST /api/inject/v1: build one message per recipient, spool them in one commit."""
    acceptor = request.app[_ACCEPTOR]
    settings = request.app[_SETTINGS]
    if acceptor.not_ready:
        return _error(503, acceptor.not_ready)
    shedding = request.app[_SHEDDING]()
    if shedding is not None:
        return _shedding_response(shedding, request.app[_SETTINGS])
    user = await _authenticate(request)
    if isinstance(user, web.Response):
        return user
    if request.content_type not in ("application/json", "application/octet-stream", ""):
        return _error(415, f"content type must be application/json, got {request.content_type}")
    raw = await _read_capped(request, settings.http.max_request_size)
    if raw is None:
        return _error(413, f"request body exceeds {settings.http.max_request_size} bytes")
    try:  # decoding and validating 10,000 recipients take ~0.2 s: not on the loop
        body = await asyncio.to_thread(decode_json, raw)
    except BodyInvalid as exc:
        return _error(400, exc.reason, exc.field or None)
    try:
        req = await asyncio.to_thread(
            parse_request, body, max_recipients=settings.http.max_recipients
        )
        templates = Templates(req)
    except RequestTooLarge as exc:
        return _error(413, exc.reason, exc.field)
    except RequestInvalid as exc:
        return _error(400, exc.reason, exc.field)
    except TemplateFailed as exc:
        return _error(422, exc.reason, exc.field)
    peer_ip = request.remote or ""
    base_meta: dict[str, Json] = {
        "http_auth": user,
        "reception_protocol": "HTTP",
        "received_from": peer_ip,
        "received_via": settings.http.listen,
        "hostname": settings.effective_hostname,
    }
    batch, failed, errors = [], [], []
    now = time.time()
    for index, rcpt in enumerate(req.recipients):
        # One message's build (Jinja + the email package, ~2-6 ms) at a time, then let
        # the loop serve everything else: thousands of recipients must not stall it.
        await asyncio.sleep(0)
        meta: dict[str, Json] = {
            **base_meta,
            **({"extra": dict(rcpt.metadata)} if rcpt.metadata else {}),
        }
        try:
            check_recipient(req, index)
            data = build_message(
                req,
                templates,
                rcpt,
                message_id_domain=settings.effective_hostname,
                now=now,
                meta=meta,
            )
        except TemplateFailed as exc:
            if isinstance(req.content, str) or len(req.recipients) == 1:
                return _error(422, exc.reason, exc.field)
            failed.append(rcpt.email)
            errors.append(f"{rcpt.email}: {exc.reason}")
            continue
        except InjectError as exc:
            failed.append(rcpt.email)
            errors.append(f"{rcpt.email}: {exc}")
            continue
        batch.append(
            Incoming(sender=req.envelope_sender, recipient=rcpt.email, data=data, meta=meta)
        )
    try:
        results = await acceptor.accept(
            batch,
            event=HTTP_MESSAGE_GENERATED,
            event_arg={"user": user, "peer": peer_ip},
            protocol="HTTP",
            peer=PeerAddress(name="", addr=peer_ip),
        )
    except SpoolFull:
        return _error(503, "disk is too full")
    except SpoolTimeout as exc:
        return _error(503, f"spool is not answering; try again later ({exc})")
    except SpoolError:
        log.exception("spool_write_failed")
        return _error(503, "internal error storing the message; try again later")
    success = 0
    for item, result in zip(batch, results, strict=False):
        if isinstance(result, Accepted):
            success += 1
        elif isinstance(result, PolicyFailure):  # the why, as KumoMTA's error chain does
            failed.append(item.recipient)
            errors.append(f"{item.recipient}: {result.response} ({result.reason})")
        else:
            failed.append(item.recipient)
            errors.append(f"{item.recipient}: {result.response}")
    return web.json_response(
        {
            "success_count": success,
            "fail_count": len(failed),
            "failed_recipients": failed,
            "errors": errors,
        }
    )


def _shedding_response(shedding: Shedding, settings: Settings) -> web.Response:
    """503 naming why the node sheds load (RFC 9110 15.6.4: Retry-After says when to retry)."""
    return web.json_response(
        {"error": "load shedding", "reason": shedding.reason.value, "detail": shedding.detail},
        status=503,
        headers={"Retry-After": str(max(1, round(settings.shedding.retry_after)))},
    )


async def check_liveness_v1(request: web.Request) -> web.Response:
    """200 "OK"; 503 with the reason as text (KumoMTA's), or as JSON while shedding load."""
    reason = request.app[_ACCEPTOR].not_ready
    if reason:
        return web.Response(status=503, text=reason)
    shedding = request.app[_SHEDDING]()
    if shedding is not None:
        return _shedding_response(shedding, request.app[_SETTINGS])
    return web.Response(text="OK")


async def check_alive_v1(request: web.Request) -> web.Response:
    """200 "OK", always: that the loop served this request is the whole answer.

    Starting, draining and shedding load are readiness's business (check_liveness_v1);
    a kubelet liveness probe here restarts only a node whose loop no longer turns (a
    wedged loop cannot answer, so the probe's timeout fails), never one that is busy or
    refusing work on purpose. A TCP connect cannot tell: the kernel accepts for a
    wedged loop too.
    """
    return web.Response(text="OK")


async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[_METRICS].registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(
    *,
    settings: Settings,
    acceptor: Acceptor,
    credentials: Credentials,
    metrics_: Metrics,
    policy: Callable[[], Registry],
    shedding: Callable[[], Shedding | None] = lambda: None,
    auth_limiter: FailureLimiter | None = None,
) -> web.Application:
    # Our own cap (_read_capped) applies to inject; aiohttp's client_max_size is set
    # just above it so other routes stay bounded too.
    app = web.Application(
        client_max_size=settings.http.max_request_size + 1, middlewares=[_log_context]
    )
    app[_ACCEPTOR] = acceptor
    app[_CREDENTIALS] = credentials
    app[_SETTINGS] = settings
    app[_METRICS] = metrics_
    app[_POLICY] = policy
    app[_SHEDDING] = shedding
    app[_AUTH_CACHE] = _AuthCache()
    # One limiter for inject and admin (app.py passes the same one to both).
    if auth_limiter is None:
        auth_limiter = FailureLimiter.from_settings(settings.http)
    app[_AUTH_LIMITER] = auth_limiter
    app.router.add_post("/api/inject/v1", inject_v1)
    app.router.add_get("/api/check-liveness/v1", check_liveness_v1)
    app.router.add_get("/api/check-alive/v1", check_alive_v1)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/openapi.json", openapi_v1)
    return app
