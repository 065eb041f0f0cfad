"""The admin HTTP API: KumoMTA's ``/api/admin/*`` routes over an ``AdminApi``.

Exports:
    add_admin_routes(app, *, admin, settings, credentials=None, audit=None, auth_limiter=None)
    admit(request) -> who | refusal     the same access rule, for routes mounted beside
                                        these (the status page, ``admin/status_page.py``)

Routes (KumoMTA ``crates/kumod/src/http_server/mod.rs``; bodies and answers in
shared/reference/kumomta-interfaces.md §8):
    POST/GET/DELETE /api/admin/bounce/v1            bounce (and list / cancel by id)
    POST/GET/DELETE /api/admin/suspend/v1           suspend scheduled queues
    POST/GET/DELETE /api/admin/suspend-ready-q/v1   suspend one ready queue
    POST /api/admin/rebind/v1                       set meta on matching messages -> {}
    GET  /api/admin/inspect-message/v1?id=&want_body=
    GET  /api/admin/inspect-sched-q/v1?queue_name=&want_body=&limit=
    GET  /api/admin/ready-q-states/v1?queues=a,b
    GET  /api/admin/queue-summary/v1                Nimbus addition: scheduled, ready and xfer
                                                    queues with counts (``nimbus queue-summary``)
    POST /api/admin/xfer/v1                         move matching messages to another node ->
                                                    {queue_name, messages} (KumoMTA: {})
    GET  /api/admin/xfer/v1                         Nimbus addition: transfer jobs and progress
    POST /api/admin/xfer/cancel/v1                  stop a transfer: unsent messages go back
    GET  /api/admin/warmup/v1                       Nimbus addition: each warming source's day
                                                    and used/allowed (``nimbus warmup-status``)
    GET/POST/DELETE /api/admin/suppression/v1       Nimbus addition: list (filters), add
                                                    (one or many), remove a suppressed
                                                    recipient (``admin/suppression.py``)

Access: a peer in ``http.trusted_hosts`` (KumoMTA's default ACL), or Basic
credentials of a user in ``http.admin_auth_dir``. Otherwise 401 (credentials
missing or wrong) or 403 (untrusted peer and no admin users configured); 429 with
``Retry-After`` while the peer has failed basic auth too often (the limiter shared with
the inject API, ``reception/auth.py``). Every POST/DELETE, allowed or refused, is
handed to ``audit`` as an ``AdminAudit`` record (``admin/audit.py``); GETs are not.
Errors are JSON ``{"error": reason, "field": ...}``: 400 bad JSON or field,
404 unknown id / message / queue / suppression entry, 409 a transfer this node cannot
make (no cluster secret, shutting down), 503 the suppression store (Redis) not answering.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web

from engine.admin import node_routes, trace_ws
from engine.admin import suppression as supp
from engine.admin.audit import ANONYMOUS, AUDITED_METHODS, TRUSTED_HOST, audit_params, audit_record
from engine.admin.requests import AdminInputError
from engine.admin.state import (
    AdminApi,
    UnknownEntry,
    UnknownReadyQueue,
    UnknownSpool,
    UnknownXferQueue,
    XferNotAvailable,
)
from engine.admin.web import ADMIN as _ADMIN
from engine.admin.web import Handler
from engine.admin.web import api as _api
from engine.admin.web import bool_param as _bool_param
from engine.admin.web import error as _error
from engine.admin.web import read_json as _json
from engine.admin.web import required_param as _required_param
from engine.config.settings import Settings
from engine.reception.auth import (
    Credentials,
    FailureLimiter,
    MalformedAuthorization,
    parse_basic,
    too_many_failures_reason,
)
from engine.reception.http_listener import private_request
from engine.records import LogRecord
from engine.suppression.service import Suppressions
from engine.suppression.store import MemoryStore, StoreUnavailable

__all__ = ["add_admin_routes", "admit", "ENTRY_ID_HEADER"]

ENTRY_ID_HEADER = "X-Nimbus-Entry-Id"
"""On a request over a worker's private socket: the id the receiving worker gave the new
bounce or suspension, kept by every worker (engine/workers/fanout.py)."""


class _Guard:
    """Who may use the admin API: trusted networks, or admin users."""

    def __init__(
        self, trusted_hosts: list[str], credentials: Credentials, limiter: FailureLimiter
    ) -> None:
        self._nets = [ipaddress.ip_network(c, strict=False) for c in trusted_hosts]
        self._credentials = credentials
        self._limiter = limiter

    def trusted(self, address: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self._nets)

    def admit(self, request: web.Request) -> str | web.Response:
        """Who is asking (an admin user or ``TRUSTED_HOST``), else the 400/401/403/429.
        A request over a worker's private socket was admitted by the worker it reached."""
        if private_request(request) or self.trusted(request.remote):
            return TRUSTED_HOST
        wait = self._limiter.retry_after(request.remote)
        if wait:
            return _error(429, too_many_failures_reason(wait), **{"Retry-After": str(wait)})
        challenge = {"WWW-Authenticate": 'Basic realm="nimbus-admin"'}
        header = request.headers.get("Authorization")
        if not header:
            if not self._credentials.configured:
                return _error(
                    403,
                    "admin API: peer is not a trusted host "
                    "(http.trusted_hosts) and no admin users are configured",
                )
            return _error(401, "admin API: trusted host or admin credentials required", **challenge)
        try:
            creds = parse_basic(header)
        except MalformedAuthorization as exc:
            self._limiter.failed(request.remote)
            return _error(400, str(exc))
        if creds is None:
            return _error(401, "only Basic authentication is supported", **challenge)
        if not self._credentials.check(*creds):
            self._limiter.failed(request.remote)
            return _error(401, "invalid admin credentials", **challenge)
        return creds[0]


_GUARD = web.AppKey("admin_guard", _Guard)


def admit(request: web.Request) -> str | web.Response:
    """Who is asking (an admin user or ``TRUSTED_HOST``), else the refusal to answer;
    the app must have had ``add_admin_routes``."""
    return request.app[_GUARD].admit(request)


_AUDIT = web.AppKey[Callable[[LogRecord], None] | None]("admin_audit")
_NODE_ID = web.AppKey("admin_node_id", str)
_SUPPRESSIONS = web.AppKey("admin_suppressions", Suppressions)


def _reason(response: web.StreamResponse) -> str:
    """A response's short reason: the JSON ``error`` of a refusal, else the status phrase."""
    if response.status >= 400 and isinstance(response, web.Response):
        try:
            body = json.loads(response.body) if isinstance(response.body, bytes) else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            field = body.get("field")
            return f"{field}: {body['error']}" if field else body["error"]
    return response.reason


async def _body(request: web.Request) -> bytes:
    """The request body for the audit record; b"" when it cannot be read (too large, or
    the client went away): the attempt is recorded all the same."""
    try:
        # Read once by aiohttp and cached, so this costs nothing after a handler read it.
        return await request.read()
    except (web.HTTPException, aiohttp.ClientError, ConnectionError):
        return b""


async def _audit(request: web.Request, who: str, status: int, reason: str) -> None:
    sink = request.app[_AUDIT]
    if sink is None:
        return
    sink(
        audit_record(
            who=who,
            peer=request.remote or "",
            method=request.method,
            path=request.path,
            params=audit_params(request.query, await _body(request)),
            status=status,
            reason=reason,
            node_id=request.app[_NODE_ID],
        )
    )


async def _serve(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AdminInputError as exc:
        return _error(400, exc.reason, exc.field)
    except UnknownEntry as exc:
        return _error(404, f"no entry with id {exc.args[0]}", "id")
    except UnknownSpool as exc:
        return _error(404, str(exc), exc.field)
    except UnknownReadyQueue as exc:
        return _error(404, str(exc), exc.field)
    except UnknownXferQueue as exc:
        return _error(404, f"no transfer with queue name {exc.args[0]}", "queue_name")
    except XferNotAvailable as exc:
        return _error(409, str(exc))
    except StoreUnavailable as exc:
        return _error(503, f"suppression store not answering: {exc}")


def _entry_id(request: web.Request) -> str | None:
    """The id a fanned-out bounce/suspension must keep (private socket only), else None."""
    return request.headers.get(ENTRY_ID_HEADER) or None if private_request(request) else None


def _guarded(handler: Handler, method: str) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        # The worker a request reached audits it; its copies to the other workers are not.
        audited = method in AUDITED_METHODS and not private_request(request)
        admitted = request.app[_GUARD].admit(request)
        if isinstance(admitted, web.StreamResponse):
            if audited:
                await _audit(request, ANONYMOUS, admitted.status, _reason(admitted))
            return admitted
        try:
            response = await _serve(request, handler)
        except web.HTTPException as exc:  # e.g. 413 from aiohttp while reading the body
            if audited:
                await _audit(request, admitted, exc.status, exc.reason)
            raise
        except Exception as exc:
            if audited:  # aiohttp answers 500; the attempt is still on the record
                await _audit(request, admitted, 500, f"internal error: {type(exc).__name__}")
            raise
        if audited:
            await _audit(request, admitted, response.status, _reason(response))
        return response

    guarded.__name__ = handler.__name__
    guarded.__doc__ = handler.__doc__
    return guarded


# -- bounce ------------------------------------------------------------------------


async def bounce_v1_post(request: web.Request) -> web.Response:
    """Bounce matching messages now and matching new mail until the entry expires."""
    return web.json_response(
        await _api(request).bounce(await _json(request), entry_id=_entry_id(request))
    )


async def bounce_v1_get(request: web.Request) -> web.Response:
    return web.json_response(_api(request).list_bounces())


async def bounce_v1_delete(request: web.Request) -> web.Response:
    _api(request).cancel_bounce(await _json(request))
    return web.json_response({})


# -- suspend -----------------------------------------------------------------------


async def suspend_v1_post(request: web.Request) -> web.Response:
    """Hold matching scheduled queues until the entry expires."""
    return web.json_response(
        _api(request).suspend(await _json(request), entry_id=_entry_id(request))
    )


async def suspend_v1_get(request: web.Request) -> web.Response:
    return web.json_response(_api(request).list_suspensions())


async def suspend_v1_delete(request: web.Request) -> web.Response:
    _api(request).cancel_suspension(await _json(request))
    return web.json_response({})


async def suspend_ready_q_v1_post(request: web.Request) -> web.Response:
    """Stop opening connections for one ready queue until the entry expires."""
    return web.json_response(
        _api(request).suspend_ready_q(await _json(request), entry_id=_entry_id(request))
    )


async def suspend_ready_q_v1_get(request: web.Request) -> web.Response:
    return web.json_response(_api(request).list_ready_suspensions())


async def suspend_ready_q_v1_delete(request: web.Request) -> web.Response:
    _api(request).cancel_ready_suspension(await _json(request))
    return web.json_response({})


# -- rebind and inspection ---------------------------------------------------------


async def rebind_v1(request: web.Request) -> web.Response:
    """Set meta on matching scheduled messages and requeue them."""
    return web.json_response(await _api(request).rebind(await _json(request)))


async def inspect_message_v1(request: web.Request) -> web.Response:
    id = _required_param(request, "id")
    found = await _api(request).inspect_message(id, _bool_param(request, "want_body"))
    if found is None:
        return _error(404, f"no message with id {id}", "id")
    return web.json_response(found)


async def inspect_sched_q_v1(request: web.Request) -> web.Response:
    name = _required_param(request, "queue_name")
    limit = None
    if request.query.get("limit", "").strip():
        try:
            limit = int(request.query["limit"])
        except ValueError:
            limit = -1
        if limit < 0:
            raise AdminInputError("limit", "must be a non-negative integer")
    found = await _api(request).inspect_sched_q(name, _bool_param(request, "want_body"), limit)
    if found is None:
        return _error(404, f"no scheduled queue named {name}", "queue_name")
    return web.json_response(found)


async def ready_q_states_v1(request: web.Request) -> web.Response:
    raw = request.query.get("queues", "")
    queues = [q.strip() for q in raw.split(",") if q.strip()] or None
    return web.json_response(await _api(request).ready_q_states(queues))


async def queue_summary_v1(request: web.Request) -> web.Response:
    """Nimbus addition: every scheduled and ready queue with counts and suspensions."""
    return web.json_response(await _api(request).queue_summary())


# -- transfers to other nodes -------------------------------------------------------


async def xfer_v1_post(request: web.Request) -> web.Response:
    """Move the selected queues' waiting messages to another node."""
    return web.json_response(await _api(request).xfer(await _json(request)))


async def xfer_v1_get(request: web.Request) -> web.Response:
    """Nimbus addition: every transfer job with its progress."""
    return web.json_response(await _api(request).xfer_jobs())


async def xfer_cancel_v1(request: web.Request) -> web.Response:
    """Stop a transfer; what it has not sent goes back to its queues."""
    return web.json_response(await _api(request).xfer_cancel(await _json(request)))


# -- IP warm-up -------------------------------------------------------------------------


async def warmup_v1_get(request: web.Request) -> web.Response:
    """Nimbus addition: each warming source's schedule day and used/allowed per counter."""
    return web.json_response(await _api(request).warmup_status())


# -- suppression list (Nimbus addition) -----------------------------------------------


def _suppressions(request: web.Request) -> Suppressions:
    return request.app[_SUPPRESSIONS]


async def suppression_v1_get(request: web.Request) -> web.Response:
    """List suppressed recipients matching the query's filters."""
    criteria, limit = supp.list_filter(request.query)
    entries = await _suppressions(request).list(criteria)
    return web.json_response(supp.answer_list(entries, limit))


async def suppression_v1_post(request: web.Request) -> web.Response:
    """Add one entry, or ``{"entries": [...]}`` (an import)."""
    suppressions = _suppressions(request)
    entries = supp.parse_add(await _json(request), suppressions.settings, time.time())
    await suppressions.add(entries)
    return web.json_response({"added": len(entries)})


async def suppression_v1_delete(request: web.Request) -> web.Response:
    """Remove one recipient's entry (for one tenant, or the one for every tenant)."""
    recipient, tenant = supp.parse_remove(await _json(request))
    if not await _suppressions(request).remove(recipient, tenant):
        scope = f" for tenant {tenant}" if tenant else ""
        return _error(404, f"{recipient} is not suppressed{scope}", "recipient")
    return web.json_response({"removed": 1})


_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/api/admin/bounce/v1", bounce_v1_post),
    ("GET", "/api/admin/bounce/v1", bounce_v1_get),
    ("DELETE", "/api/admin/bounce/v1", bounce_v1_delete),
    ("POST", "/api/admin/suspend/v1", suspend_v1_post),
    ("GET", "/api/admin/suspend/v1", suspend_v1_get),
    ("DELETE", "/api/admin/suspend/v1", suspend_v1_delete),
    ("POST", "/api/admin/suspend-ready-q/v1", suspend_ready_q_v1_post),
    ("GET", "/api/admin/suspend-ready-q/v1", suspend_ready_q_v1_get),
    ("DELETE", "/api/admin/suspend-ready-q/v1", suspend_ready_q_v1_delete),
    ("POST", "/api/admin/rebind/v1", rebind_v1),
    ("GET", "/api/admin/inspect-message/v1", inspect_message_v1),
    ("GET", "/api/admin/inspect-sched-q/v1", inspect_sched_q_v1),
    ("GET", "/api/admin/ready-q-states/v1", ready_q_states_v1),
    ("GET", "/api/admin/queue-summary/v1", queue_summary_v1),
    ("POST", "/api/admin/xfer/v1", xfer_v1_post),
    ("GET", "/api/admin/xfer/v1", xfer_v1_get),
    ("POST", "/api/admin/xfer/cancel/v1", xfer_cancel_v1),
    ("GET", "/api/admin/warmup/v1", warmup_v1_get),
    ("GET", "/api/admin/suppression/v1", suppression_v1_get),
    ("POST", "/api/admin/suppression/v1", suppression_v1_post),
    ("DELETE", "/api/admin/suppression/v1", suppression_v1_delete),
    *node_routes.ROUTES,
    *trace_ws.ROUTES,
)


def add_admin_routes(
    app: web.Application,
    *,
    admin: AdminApi,
    settings: Settings,
    suppressions: Suppressions | None = None,
    credentials: Credentials | None = None,
    audit: Callable[[LogRecord], None] | None = None,
    auth_limiter: FailureLimiter | None = None,
    node: node_routes.NodeFacts | None = None,
) -> None:
    """Register the admin routes on ``app``.

    admin: answers the requests (and holds the entries the node enforces).
    suppressions: the node's suppression list (default: one of its own in memory, for
        tests of the other routes).
    settings: ``http.trusted_hosts`` and ``http.admin_auth_dir`` decide access.
    credentials: the admin users; default read from ``http.admin_auth_dir``.
    audit: receives the ``AdminAudit`` record of each POST/DELETE (the node's
        ``LogWriter.emit``); None: not audited.
    auth_limiter: failed basic-auth attempts per peer (share the inject API's);
        default a new one from ``settings.http``.
    node: the facts ``/api/machine-info`` and ``/metrics.json`` read (default: node id
        only, no metrics).
    """
    app[_ADMIN] = admin
    app[_GUARD] = _Guard(
        settings.http.trusted_hosts,
        credentials or Credentials(settings.http.admin_auth_dir or None),
        auth_limiter if auth_limiter is not None else FailureLimiter.from_settings(settings.http),
    )
    app[_AUDIT] = audit
    app[_SUPPRESSIONS] = suppressions or Suppressions(settings.suppression, MemoryStore())
    app[_NODE_ID] = settings.effective_node_id
    app[node_routes.NODE_FACTS] = node or node_routes.NodeFacts(
        node_id=settings.effective_node_id, started=time.time(), metrics_json=dict
    )
    for method, path, handler in _ROUTES:
        app.router.add_route(method, path, _guarded(handler, method))
