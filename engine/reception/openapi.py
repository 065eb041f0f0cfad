"""The OpenAPI 3.1 document of the node's whole HTTP API, served at ``GET /api/openapi.json``.

Exports:
    DOCUMENT          the document (a JSON object); every route ``reception/http.py``,
                      ``admin/http.py``, ``admin/status_page.py`` and ``xfer/receiver.py``
                      mount is in it and nothing else (a test compares
                      them with the app's router, HEAD aside: aiohttp answers HEAD for
                      every GET)
    openapi_v1(req)   the handler (no authentication: the document holds no secrets)

Bodies follow shared/reference/kumomta-interfaces.md §1 (inject) and §8 (admin). The
schemas describe what the node accepts and answers; they are deliberately no stricter
than the parsers (``inject/request.py``, ``admin/requests.py``), which give the 400s.
Every error body is ``{"error": reason, "field"?: path}``. The only 5xx is 503
(not ready, draining, spool full, a failing auth hook or spool).
"""

from __future__ import annotations

from aiohttp import web

from engine.records import JsonObject

__all__ = ["DOCUMENT", "openapi_v1"]


def _ref(name: str) -> JsonObject:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: JsonObject, description: str) -> JsonObject:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _text(description: str) -> JsonObject:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _errors(*codes: int, why_not: dict[int, str] | None = None) -> dict[str, JsonObject]:
    why = {
        400: "malformed JSON (nesting, lone surrogates, encoding) or a bad field",
        401: "credentials missing or wrong",
        403: "untrusted peer and no admin users configured",
        404: "no such id, message or queue",
        413: "body over http.max_request_size, or recipients over http.max_recipients",
        415: "content type or Content-Encoding not supported",
        422: "a template failed to compile or render",
        429: "too many failed authentications from this peer (Retry-After)",
        409: "a transfer this node cannot make (no cluster secret, shutting down)",
        503: "not ready, shutting down or out of spool space; try again later",
        **(why_not or {}),
    }
    return {str(code): _json(_ref("Error"), why[code]) for code in codes}


_STR: JsonObject = {"type": "string"}
# inject/request.py's address check (``local@domain``, no spaces or angle brackets).
_EMAIL: JsonObject = {"type": "string", "pattern": r"^[^\s@<>]+@[^\s@<>]+$"}
_OBJ: JsonObject = {"type": "object"}
_NULLABLE_STR: JsonObject = {"type": ["string", "null"]}
_ADMIN_ERRORS = (400, 401, 403, 429)
_ADMIN_SECURITY: list[JsonObject] = [{}, {"basicAuth": []}]  # trusted host, or an admin user
_WANT_BODY: JsonObject = {
    "name": "want_body",
    "in": "query",
    "schema": {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]},
}

_ENTRY_ID: JsonObject = {
    "type": "object",
    "required": ["id"],
    "properties": {"id": _STR},
    "additionalProperties": False,
}
_LIFETIME: dict[str, JsonObject] = {
    "reason": {"type": "string", "minLength": 1},
    "duration": {"type": ["string", "number"], "description": 'e.g. "1h"; default 5m'},
    "expires": {"type": "string", "description": "RFC 3339; wins over duration"},
}
_CRITERIA: dict[str, JsonObject] = {
    "domain": {"type": "string", "minLength": 1},
    "tenant": {"type": "string", "minLength": 1},
    "campaign": {"type": "string", "minLength": 1},
}
_QUEUE_NAMES: JsonObject = {"type": "array", "items": {"type": "string", "minLength": 1}}


def _entry_routes(kind: str, add: JsonObject, added: JsonObject, tag: str) -> JsonObject:
    """POST (add), GET (list) and DELETE (cancel by id) of one kind of admin entry."""
    return {
        "post": {
            "operationId": f"{kind}_add",
            "tags": [tag],
            "security": _ADMIN_SECURITY,
            "requestBody": {"required": True, "content": {"application/json": {"schema": add}}},
            "responses": {"200": _json(added, "the entry was added"), **_errors(*_ADMIN_ERRORS)},
        },
        "get": {
            "operationId": f"{kind}_list",
            "tags": [tag],
            "security": _ADMIN_SECURITY,
            "responses": {
                "200": _json({"type": "array", "items": _ref("AdminEntry")}, "live entries"),
                **_errors(401, 403, 429),
            },
        },
        "delete": {
            "operationId": f"{kind}_cancel",
            "tags": [tag],
            "security": _ADMIN_SECURITY,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ENTRY_ID}},
            },
            "responses": {
                "200": _json({"type": "object", "maxProperties": 0}, "cancelled"),
                **_errors(*_ADMIN_ERRORS, 404),
            },
        },
    }


def _admin_get(op: str, summary: str, params: list[JsonObject], body: JsonObject) -> JsonObject:
    return {
        "get": {
            "operationId": op,
            "tags": ["admin"],
            "summary": summary,
            "security": _ADMIN_SECURITY,
            "parameters": params,
            "responses": {"200": _json(body, summary), **_errors(*_ADMIN_ERRORS, 404)},
        }
    }


def _admin_post(
    op: str, summary: str, body: JsonObject, answer: JsonObject, *extra: int
) -> JsonObject:
    return {
        "post": {
            "operationId": op,
            "tags": ["admin"],
            "summary": summary,
            "security": _ADMIN_SECURITY,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {"200": _json(answer, summary), **_errors(*_ADMIN_ERRORS, *extra)},
        }
    }


def _admin_text(op: str, summary: str) -> JsonObject:
    return {
        "get": {
            "operationId": op,
            "tags": ["admin"],
            "summary": summary,
            "security": _ADMIN_SECURITY,
            "responses": {"200": _text(summary), **_errors(401, 403, 429)},
        }
    }


def _websocket(op: str, summary: str, params: list[JsonObject]) -> JsonObject:
    terse = {**_WANT_BODY, "name": "terse"}
    return {
        "get": {
            "operationId": op,
            "tags": ["admin"],
            "summary": summary,
            "description": "Upgrade to a websocket; without the upgrade headers: 400.",
            "security": _ADMIN_SECURITY,
            "parameters": [*params, terse],
            "responses": {
                "101": {"description": "switching to the websocket"},
                **_errors(*_ADMIN_ERRORS),
            },
        }
    }


_RETRY_NOW: JsonObject = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **_CRITERIA,
        "routing_domain": {"type": "string", "minLength": 1},
        "queue_names": _QUEUE_NAMES,
        "everything": {"type": "boolean"},
        "reason": _STR,
    },
}


_BOUNCE: JsonObject = {
    "type": "object",
    "required": ["reason"],
    "additionalProperties": False,
    "properties": {
        **_CRITERIA,
        "routing_domain": {"type": "string", "minLength": 1},
        "queue_names": _QUEUE_NAMES,
        **_LIFETIME,
        "suppress_logging": {"type": "boolean"},
    },
}
_SUSPEND: JsonObject = {
    "type": "object",
    "required": ["reason"],
    "additionalProperties": False,
    "properties": {**_CRITERIA, "queue_names": _QUEUE_NAMES, **_LIFETIME},
}
_SUSPEND_READY: JsonObject = {
    "type": "object",
    "required": ["name", "reason"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string", "minLength": 1}, **_LIFETIME},
}
_REBIND: JsonObject = {
    "type": "object",
    "required": ["data"],
    "additionalProperties": False,
    "properties": {
        **_CRITERIA,
        "routing_domain": {"type": "string", "minLength": 1},
        "reason": _STR,
        "data": {"type": "object", "minProperties": 1, "additionalProperties": _STR},
        "always_flush": {"type": "boolean"},
        "trigger_rebind_event": {"type": "boolean"},
        "suppress_logging": {"type": "boolean"},
    },
}

_XFER: JsonObject = {
    "type": "object",
    "required": ["target", "reason"],
    "additionalProperties": False,
    "properties": {
        **_CRITERIA,
        "routing_domain": {"type": "string", "minLength": 1},
        "queue_names": _QUEUE_NAMES,
        "everything": {"type": "boolean", "description": "select every queue (alone)"},
        "target": {"type": "string", "description": "the other node, e.g. http://10.0.0.2:8000"},
        "reason": {"type": "string", "minLength": 1},
    },
}
_XFER_CANCEL: JsonObject = {
    "type": "object",
    "required": ["queue_name", "reason"],
    "additionalProperties": False,
    "properties": {
        "queue_name": {"type": "string", "minLength": 1},
        "reason": {"type": "string", "minLength": 1},
    },
}
_XFER_JOB: JsonObject = {
    "type": "object",
    "required": ["queue_name", "target", "state", "total", "moved", "failed", "left"],
    "properties": {
        "queue_name": _STR,
        "target": _STR,
        "reason": _STR,
        "state": {"type": "string", "enum": ["running", "done", "cancelled", "stopped"]},
        "started": _STR,
        "total": {"type": "integer"},
        "moved": {"type": "integer"},
        "duplicates": {"type": "integer"},
        "failed": {"type": "integer"},
        "returned": {"type": "integer"},
        "in_flight": {"type": "integer"},
        "left": {"type": "integer"},
        "errors": {"type": "array", "items": _STR},
    },
}

_NULLABLE_INT: JsonObject = {"type": ["integer", "null"]}
_WARMUP_COUNTER: JsonObject = {
    "type": "object",
    "required": ["provider", "state", "used", "allowed", "window_start", "window_end"],
    "properties": {
        "provider": _NULLABLE_STR,
        "state": {"enum": ["before_start", "warming", "done"]},
        "used": {"type": "integer", "minimum": 0},
        "allowed": _NULLABLE_INT,
        "window_start": _STR,
        "window_end": _STR,
        "overflow": {"type": "integer", "minimum": 0},
    },
}
_WARMUP_SOURCE: JsonObject = {
    "type": "object",
    "required": ["source", "start", "timezone", "window", "day", "days", "state", "counters"],
    "properties": {
        "source": _STR,
        "start": {"type": "string", "format": "date"},
        "timezone": _STR,
        "window": {"enum": ["day", "hour"]},
        "day": {"type": "integer"},
        "days": {"type": "integer", "minimum": 1},
        "state": {"enum": ["before_start", "warming", "done"]},
        "counters": {"type": "array", "items": _WARMUP_COUNTER},
    },
}

_INT: JsonObject = {"type": "integer"}
_NUM_OR_NULL: JsonObject = {"type": ["number", "null"]}
_INT_OR_NULL: JsonObject = {"type": ["integer", "null"]}


def _rows(required: list[str], **props: JsonObject) -> JsonObject:
    return {
        "type": "array",
        "items": {"type": "object", "required": required, "properties": props},
    }


# engine/admin/status.py NodeStatus.to_json(): what the status page shows.
_STATUS: JsonObject = {
    "type": "object",
    "required": [
        "generated",
        "node",
        "queues",
        "ready_queues",
        "rates",
        "bounces",
        "holds",
        "health",
        "spool",
        "transfers",
        "warmup",
    ],
    "properties": {
        "generated": _STR,
        "node": {
            "type": "object",
            "required": ["id", "state", "why", "uptime_seconds", "workers"],
            "properties": {
                "id": _STR,
                "state": {"type": "string", "enum": ["up", "starting", "shedding", "draining"]},
                "why": _NULLABLE_STR,
                "not_ready": _NULLABLE_STR,
                "shedding": {"type": ["object", "null"]},
                "uptime_seconds": {"type": "number"},
                "workers": _rows(["name", "count"], name=_STR, count=_INT, detail=_STR),
            },
        },
        "queues": {
            "type": "object",
            "required": ["scheduled", "ready", "destinations"],
            "properties": {
                "scheduled": {
                    "type": "object",
                    "required": ["messages", "queues", "oldest_age_seconds", "top", "hidden"],
                    "properties": {
                        "messages": _INT,
                        "queues": _INT,
                        "oldest_age_seconds": _NUM_OR_NULL,
                        "top": _rows(
                            ["name", "count"],
                            name=_STR,
                            count=_INT,
                            oldest_age_seconds=_NUM_OR_NULL,
                            suspended=_NULLABLE_STR,
                        ),
                        "hidden": _INT,
                    },
                },
                "ready": {
                    "type": "object",
                    "required": ["messages", "queues", "connections", "oldest_age_seconds"],
                    "properties": {
                        "messages": _INT,
                        "queues": _INT,
                        "connections": _INT,
                        "oldest_age_seconds": _NUM_OR_NULL,
                    },
                },
                "destinations": _rows(["domain", "count"], domain=_STR, count=_INT),
            },
        },
        "ready_queues": _rows(
            ["name", "site", "source", "count", "connections", "connection_limit", "states"],
            name=_STR,
            site=_STR,
            source=_STR,
            count=_INT,
            connections=_INT,
            connection_limit=_INT,
            oldest_age_seconds=_NUM_OR_NULL,
            states=_rows(["state", "context"], state=_STR, context=_STR, since=_NULLABLE_STR),
        ),
        "ready_queues_hidden": _INT,
        "rates": _rows(
            ["type", "last_1m", "last_5m"],
            type=_STR,
            last_1m=_INT,
            last_5m=_INT,
            per_minute_5m={"type": "number"},
        ),
        "bounces": _rows(
            ["classification", "last_5m", "total"], classification=_STR, last_5m=_INT, total=_INT
        ),
        "holds": _rows(
            ["origin", "kind", "id", "target", "reason", "expires", "expires_in_seconds"],
            origin={"type": "string", "enum": ["admin", "tsa"]},
            kind=_STR,
            id=_STR,
            target=_STR,
            reason=_STR,
            expires=_STR,
            expires_in_seconds={"type": "number"},
            detail=_STR,
        ),
        "health": {
            "type": "object",
            "required": ["redis", "tsa"],
            "properties": {
                "redis": {"type": "object", "required": ["state"], "properties": {"state": _STR}},
                "tsa": {"type": "object", "required": ["state"], "properties": {"state": _STR}},
            },
        },
        "spool": {
            "type": "object",
            "required": ["messages", "bytes"],
            "properties": {
                "messages": _INT,
                "bytes": _INT,
                "disk_total_bytes": _INT_OR_NULL,
                "disk_free_bytes": _INT_OR_NULL,
                "disk_used_percent": _NUM_OR_NULL,
            },
        },
        "transfers": {"type": "array", "items": _OBJ},
        "warmup": _rows(
            ["source", "provider", "day", "state", "used", "allowed", "window_end"],
            source=_STR,
            provider=_STR,
            day=_INT,
            state=_STR,
            used=_INT,
            allowed=_INT_OR_NULL,
            window_end=_STR,
        ),
    },
}


def _status_page(op: str) -> JsonObject:
    return {
        "get": {
            "operationId": op,
            "tags": ["admin"],
            "summary": "The live status page (HTML; it polls /api/admin/status/v1)",
            "security": _ADMIN_SECURITY,
            "responses": {
                "200": {
                    "description": "the page",
                    "content": {"text/html": {"schema": _STR}},
                },
                **_errors(*_ADMIN_ERRORS),
            },
        }
    }


_ADDRESS: JsonObject = {
    "type": "object",
    "required": ["email"],
    "additionalProperties": False,
    "properties": {"email": _STR, "name": _NULLABLE_STR},
}
_BUILDER: JsonObject = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "subject": _NULLABLE_STR,
        "from": {"oneOf": [_ADDRESS, {"type": "null"}]},
        "reply_to": {"oneOf": [_ADDRESS, {"type": "null"}]},
        "headers": {"type": ["object", "null"], "additionalProperties": _STR},
        "text_body": _NULLABLE_STR,
        "html_body": _NULLABLE_STR,
        "amp_html_body": _NULLABLE_STR,
        "attachments": {
            "type": ["array", "null"],
            "items": {
                "type": "object",
                "required": ["data", "content_type"],
                "additionalProperties": False,
                "properties": {
                    "data": _STR,
                    "content_type": _STR,
                    "base64": {"type": ["boolean", "null"]},
                    "file_name": _NULLABLE_STR,
                    "content_id": _NULLABLE_STR,
                },
            },
        },
    },
}
_INJECT: JsonObject = {
    "type": "object",
    "required": ["envelope_sender", "recipients", "content"],
    "additionalProperties": False,
    "properties": {
        "envelope_sender": {
            "type": "string",
            "pattern": r"^([^\s@<>]+@[^\s@<>]+)?$",
            "description": '"" is the null reverse-path',
        },
        "recipients": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["email"],
                "additionalProperties": False,
                "properties": {
                    "email": _EMAIL,
                    "name": _NULLABLE_STR,
                    "substitutions": {"type": ["object", "null"]},
                    "metadata": {"type": ["object", "null"]},
                },
            },
        },
        "content": {"oneOf": [{"type": "string"}, _BUILDER]},
        "substitutions": {"type": ["object", "null"]},
        "template_dialect": {"type": ["string", "null"], "enum": ["Jinja", "Static", None]},
        "deferred_generation": {"type": ["boolean", "null"]},
        "deferred_spool": {"type": ["boolean", "null"]},
        "trace_headers": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "supplemental_header": {"type": ["boolean", "null"]},
                "header_name": _NULLABLE_STR,
                "received_header": {"type": ["boolean", "null"]},
                "include_meta_names": {"type": ["array", "null"], "items": _STR},
            },
        },
    },
}
_INJECT_RESULT: JsonObject = {
    "type": "object",
    "required": ["success_count", "fail_count", "failed_recipients", "errors"],
    "properties": {
        "success_count": {"type": "integer", "minimum": 0},
        "fail_count": {"type": "integer", "minimum": 0},
        "failed_recipients": {"type": "array", "items": _STR},
        "errors": {"type": "array", "items": _STR},
    },
}

_SUPPRESSION_REASONS = ("bounce", "complaint", "admin")
_SUPPRESSION_DOWN = {503: "the suppression store (Redis) is not answering; try again later"}
_SUPPRESSED_ADDRESS: JsonObject = {"type": "string", "pattern": r"^[^\s@]+@[^\s@]+$"}
_SUPPRESSION_ENTRY_IN: JsonObject = {
    "type": "object",
    "required": ["recipient"],
    "properties": {
        "recipient": _SUPPRESSED_ADDRESS,
        "tenant": {"type": ["string", "null"], "description": "absent: every tenant"},
        "reason": {"type": ["string", "null"], "enum": [*_SUPPRESSION_REASONS, None]},
        "detail": {"type": ["string", "null"]},
        "duration": {"type": ["string", "number"], "description": 'e.g. "30d"'},
        "expires": {"type": ["string", "null"], "description": "RFC 3339; wins over duration"},
        "created": {"type": ["string", "null"], "description": "RFC 3339; default now"},
    },
    "additionalProperties": False,
}
_SUPPRESSION_ADD: JsonObject = {
    "oneOf": [
        _SUPPRESSION_ENTRY_IN,
        {
            "type": "object",
            "required": ["entries"],
            "properties": {
                "entries": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 10000,
                    "items": _SUPPRESSION_ENTRY_IN,
                }
            },
            "additionalProperties": False,
        },
    ]
}
_SUPPRESSION_REMOVE: JsonObject = {
    "type": "object",
    "required": ["recipient"],
    "properties": {"recipient": _SUPPRESSED_ADDRESS, "tenant": {"type": ["string", "null"]}},
    "additionalProperties": False,
}


_PATHS: JsonObject = {
    "/api/inject/v1": {
        "post": {
            "operationId": "inject_v1",
            "tags": ["inject"],
            "summary": "Build one message per recipient and spool them in one commit",
            "security": [{"basicAuth": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("InjectRequest")}},
            },
            "responses": {
                "200": _json(_ref("InjectResult"), "accepted (per-recipient failures listed)"),
                **_errors(400, 401, 413, 415, 422, 429, 503),
            },
        }
    },
    "/api/check-liveness/v1": {
        "get": {
            "operationId": "check_liveness_v1",
            "tags": ["health"],
            "summary": "Readiness: 200 OK, or 503 with the reason (starting, draining, shedding)",
            "security": [],
            "responses": {
                "200": _text("ready"),
                "503": {
                    "description": "not ready (the reason as text), or shedding load (JSON)",
                    "content": {
                        "text/plain": {"schema": _STR},
                        "application/json": {"schema": _ref("Error")},
                    },
                },
            },
        }
    },
    "/api/check-alive/v1": {
        "get": {
            "operationId": "check_alive_v1",
            "tags": ["health"],
            "summary": "Liveness: 200 OK whenever the event loop answers (also while "
            "starting, draining or shedding load)",
            "security": [],
            "responses": {"200": _text("the event loop answers")},
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "tags": ["health"],
            "summary": "Prometheus exposition format",
            "security": [],
            "responses": {"200": _text("the metrics")},
        }
    },
    "/api/openapi.json": {
        "get": {
            "operationId": "openapi_v1",
            "tags": ["health"],
            "summary": "This document",
            "security": [],
            "responses": {"200": _json(_OBJ, "the OpenAPI document")},
        }
    },
    "/api/admin/bounce/v1": _entry_routes(
        "bounce",
        _BOUNCE,
        {
            "type": "object",
            "required": ["id", "bounced", "total_bounced"],
            "properties": {
                "id": _STR,
                "bounced": {"type": "object", "additionalProperties": {"type": "integer"}},
                "total_bounced": {"type": "integer", "minimum": 0},
            },
        },
        "admin",
    ),
    "/api/admin/suspend/v1": _entry_routes("suspend", _SUSPEND, _ENTRY_ID, "admin"),
    "/api/admin/suspend-ready-q/v1": _entry_routes(
        "suspend_ready_q", _SUSPEND_READY, _ENTRY_ID, "admin"
    ),
    "/api/admin/rebind/v1": {
        "post": {
            "operationId": "rebind_v1",
            "tags": ["admin"],
            "summary": "Set meta on matching scheduled messages and requeue them",
            "security": _ADMIN_SECURITY,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _REBIND}}},
            "responses": {
                "200": _json({"type": "object", "maxProperties": 0}, "done"),
                **_errors(*_ADMIN_ERRORS),
            },
        }
    },
    "/api/admin/inspect-message/v1": _admin_get(
        "inspect_message_v1",
        "One spooled message: envelope, meta and (want_body) its data",
        [{"name": "id", "in": "query", "required": True, "schema": _STR}, _WANT_BODY],
        _OBJ,
    ),
    "/api/admin/inspect-sched-q/v1": _admin_get(
        "inspect_sched_q_v1",
        "One scheduled queue and (up to limit) its messages",
        [
            {"name": "queue_name", "in": "query", "required": True, "schema": _STR},
            _WANT_BODY,
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        ],
        _OBJ,
    ),
    "/api/admin/ready-q-states/v1": _admin_get(
        "ready_q_states_v1",
        "Ready queue states, all or the comma-separated queues",
        [{"name": "queues", "in": "query", "schema": _STR}],
        {
            "type": "object",
            "required": ["states_by_ready_queue"],
            "properties": {"states_by_ready_queue": _OBJ},
        },
    ),
    "/api/admin/queue-summary/v1": _admin_get(
        "queue_summary_v1",
        "Every scheduled and ready queue with counts and suspensions",
        [],
        {
            "type": "object",
            "required": ["scheduled", "ready"],
            "properties": {
                "scheduled": {"type": "array", "items": _OBJ},
                "ready": {"type": "array", "items": _OBJ},
                "xfer": {"type": "array", "items": _OBJ},
            },
        },
    ),
    "/": _status_page("status_page"),
    "/status": _status_page("status_page_status"),
    "/api/admin/status/v1": {
        "get": {
            "operationId": "status_v1",
            "tags": ["admin"],
            "summary": "The node's status: state, queues, rates, holds, health, spool",
            "security": _ADMIN_SECURITY,
            "responses": {
                "200": _json(_STATUS, "the status (what the status page shows)"),
                **_errors(*_ADMIN_ERRORS),
            },
        }
    },
    "/api/admin/xfer/v1": {
        **_admin_post(
            "xfer_v1",
            "Move the selected queues' waiting messages to another node",
            _XFER,
            {
                "type": "object",
                "required": ["queue_name", "messages"],
                "properties": {"queue_name": _STR, "messages": {"type": "integer"}},
            },
            409,
        ),
        "get": {
            "operationId": "xfer_list_v1",
            "tags": ["admin"],
            "summary": "Transfer jobs and their progress",
            "security": _ADMIN_SECURITY,
            "responses": {
                "200": _json({"type": "array", "items": _XFER_JOB}, "every transfer job"),
                **_errors(*_ADMIN_ERRORS),
            },
        },
    },
    "/api/admin/suppression/v1": {
        "get": {
            "operationId": "suppression_list_v1",
            "tags": ["admin"],
            "summary": "Suppressed recipients matching the filters (Nimbus addition)",
            "security": _ADMIN_SECURITY,
            "parameters": [
                {"name": "recipient", "in": "query", "schema": _STR},
                {"name": "domain", "in": "query", "schema": _STR},
                {"name": "tenant", "in": "query", "schema": _STR},
                {"name": "reason", "in": "query", "schema": {"enum": list(_SUPPRESSION_REASONS)}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["entries", "total", "truncated"],
                        "properties": {
                            "entries": {"type": "array", "items": _ref("Suppression")},
                            "total": {"type": "integer"},
                            "truncated": {"type": "boolean"},
                        },
                    },
                    "the first `limit` matching entries (default 1000; 0: all)",
                ),
                **_errors(*_ADMIN_ERRORS, 503, why_not=_SUPPRESSION_DOWN),
            },
        },
        "post": {
            "operationId": "suppression_add_v1",
            "tags": ["admin"],
            "summary": "Suppress one recipient, or many ({entries: [...]}, an import)",
            "security": _ADMIN_SECURITY,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _SUPPRESSION_ADD}},
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["added"],
                        "properties": {"added": {"type": "integer"}},
                    },
                    "the entries were stored",
                ),
                **_errors(*_ADMIN_ERRORS, 503, why_not=_SUPPRESSION_DOWN),
            },
        },
        "delete": {
            "operationId": "suppression_remove_v1",
            "tags": ["admin"],
            "summary": "Remove a recipient's entry (for one tenant, or for every tenant)",
            "security": _ADMIN_SECURITY,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _SUPPRESSION_REMOVE}},
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["removed"],
                        "properties": {"removed": {"type": "integer"}},
                    },
                    "removed",
                ),
                **_errors(*_ADMIN_ERRORS, 404, 503, why_not=_SUPPRESSION_DOWN),
            },
        },
    },
    "/api/admin/xfer/cancel/v1": _admin_post(
        "xfer_cancel_v1",
        "Stop a transfer: what it has not sent goes back to its queues",
        _XFER_CANCEL,
        {
            "type": "object",
            "required": ["queue_name", "returned"],
            "properties": {"queue_name": _STR, "returned": {"type": "integer"}},
        },
        404,
    ),
    "/api/admin/warmup/v1": {
        "get": {
            "operationId": "warmup_v1",
            "tags": ["admin"],
            "summary": "IP warm-up: each warming source's day and used/allowed per window",
            "security": _ADMIN_SECURITY,
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["sources"],
                        "properties": {"sources": {"type": "array", "items": _WARMUP_SOURCE}},
                    },
                    "every egress source with a warm-up schedule (allowed null: no limit)",
                ),
                **_errors(*_ADMIN_ERRORS),
            },
        }
    },
    "/api/admin/inspect-ready-q/v1": _admin_get(
        "inspect_ready_q_v1",
        "One ready queue: identity, state, connection tasks (session ids), path config",
        [
            {"name": "queue_name", "in": "query", "required": True, "schema": _STR},
            {**_WANT_BODY, "name": "include_scheduled_queues"},
        ],
        {"type": "object", "required": ["queue_name", "connections", "config"]},
    ),
    "/api/admin/abort-ready-q-conn/v1": _admin_post(
        "abort_ready_q_conn_v1",
        "Abort one connection task of a ready queue; its message goes back, due now",
        {
            "type": "object",
            "required": ["queue_name", "session_id"],
            "additionalProperties": False,
            "properties": {"queue_name": _STR, "session_id": _STR},
        },
        {"type": "object", "maxProperties": 0},
        404,
    ),
    "/api/admin/resolve-egress-path/v1": _admin_get(
        "resolve_egress_path_v1",
        "The effective egress path for a domain and source, each value with its origin",
        [
            {"name": "domain", "in": "query", "required": True, "schema": _STR},
            {"name": "source", "in": "query", "schema": _STR},
        ],
        {"type": "object", "required": ["domain", "source", "ready_queue_name", "config"]},
    ),
    "/api/admin/provider-summary/v1": _admin_get(
        "provider_summary_v1",
        "Ready queues rolled up by provider (or MX site), pool and source",
        [],
        {"type": "array", "items": _OBJ},
    ),
    "/api/admin/retry-now/v1": _admin_post(
        "retry_now_v1",
        "Make the selected scheduled messages due now, counting no attempt",
        _RETRY_NOW,
        {
            "type": "object",
            "required": ["retried", "total_retried"],
            "properties": {
                "retried": {"type": "object", "additionalProperties": {"type": "integer"}},
                "total_retried": {"type": "integer", "minimum": 0},
            },
        },
    ),
    "/api/admin/spool-compact/v1": _admin_post(
        "spool_compact_v1",
        "Flush and fully compact the spool (WAL checkpoint + VACUUM); writes wait meanwhile",
        {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {"name": {"type": "string", "enum": ["data", "meta", "spool"]}},
        },
        {
            "type": "object",
            "required": ["name", "bytes_before", "bytes_after", "seconds"],
            "properties": {
                "name": _STR,
                "bytes_before": {"type": "integer"},
                "bytes_after": {"type": "integer"},
                "seconds": {"type": "number"},
            },
        },
        404,
    ),
    "/api/admin/set_diagnostic_log_filter/v1": _admin_post(
        "set_diagnostic_log_filter_v1",
        'Change the diagnostic log filter now, e.g. "info,nimbus.ready=debug"',
        {
            "type": "object",
            "required": ["filter"],
            "additionalProperties": False,
            "properties": {"filter": {"type": "string", "minLength": 1}},
        },
        {"type": "object", "maxProperties": 0},
    ),
    "/api/admin/trace-smtp-server/v1": _websocket(
        "trace_smtp_server_v1",
        "Websocket: live inbound SMTP sessions, one JSON event per message",
        [{"name": "source", "in": "query", "schema": _STR}],
    ),
    "/api/admin/trace-smtp-client/v1": _websocket(
        "trace_smtp_client_v1",
        "Websocket: live outbound SMTP sessions, one JSON event per message",
        [
            {"name": name, "in": "query", "schema": _STR}
            for name in (
                "domain",
                "routing_domain",
                "tenant",
                "campaign",
                "mail_from",
                "rcpt_to",
                "mx_host",
                "mx_addr",
                "egress_source",
                "egress_pool",
                "ready_queue",
            )
        ],
    ),
    "/api/admin/task-dump": _admin_text("task_dump", "Every asyncio task and its stack"),
    "/api/admin/memory/stats": _admin_text("memory_stats", "Memory use of this process"),
    "/api/machine-info": _admin_get(
        "machine_info",
        "This node: node id, hostname, CPU, OS, container runtime",
        [],
        {"type": "object", "required": ["node_id", "hostname", "mac_address", "cpu_brand"]},
    ),
    "/metrics.json": _admin_get(
        "metrics_json",
        "Every metric as JSON: name -> {type, help, samples}",
        [],
        {"type": "object", "additionalProperties": _OBJ},
    ),
    "/api/xfer/inject/v1": {
        "post": {
            "operationId": "xfer_inject_v1",
            "tags": ["cluster"],
            "summary": "Node to node: take over one message (stored with fsync before 200)",
            "security": [{"clusterSecret": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/vnd.nimbus.xfer.v1": {
                        "schema": {
                            "type": "string",
                            "format": "binary",
                            "description": "one JSON envelope line, a newline, the message",
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["id", "queue", "duplicate", "queued"],
                        "properties": {
                            "id": _STR,
                            "queue": _STR,
                            "duplicate": {"type": "boolean"},
                            "queued": {"type": "integer"},
                        },
                    },
                    "stored (or already here: duplicate)",
                ),
                **_errors(
                    401,
                    403,
                    409,
                    413,
                    415,
                    422,
                    503,
                    why_not={
                        401: "no Authorization: Bearer <cluster secret>",
                        403: "wrong secret, no secret on this node, or refused by policy",
                        409: "the message comes from this node itself",
                        413: "larger than this node takes",
                        422: "not a well-formed transfer (the reason names the field)",
                        503: "starting, shutting down, shedding load, or no spool room",
                    },
                ),
            },
        }
    },
}

DOCUMENT: JsonObject = {
    "openapi": "3.1.0",
    "info": {
        "title": "Nimbus HTTP API",
        "version": "1",
        "description": "Injection (KumoMTA-compatible), admin, readiness, liveness and metrics.",
    },
    "paths": _PATHS,
    "components": {
        "securitySchemes": {
            "basicAuth": {"type": "http", "scheme": "basic"},
            "clusterSecret": {"type": "http", "scheme": "bearer"},
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": _STR, "field": _NULLABLE_STR},
            },
            "InjectRequest": _INJECT,
            "InjectResult": _INJECT_RESULT,
            "AdminEntry": {"type": "object", "required": ["id", "reason", "duration", "expires"]},
            "Suppression": {
                "type": "object",
                "required": ["recipient", "tenant", "reason", "detail", "created", "expires"],
                "properties": {
                    "recipient": _STR,
                    "tenant": _NULLABLE_STR,
                    "reason": {"enum": list(_SUPPRESSION_REASONS)},
                    "detail": _STR,
                    "created": _STR,
                    "expires": _NULLABLE_STR,
                },
            },
        },
    },
}


async def openapi_v1(request: web.Request) -> web.Response:
    """GET /api/openapi.json: the document above."""
    return web.json_response(DOCUMENT)
