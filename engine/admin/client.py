"""The admin API client the CLI verbs use: blocking JSON over HTTP to one node.

Exports:
    AdminClient        call(method, path, body, query) -> JSON; text(path); ws_url(path,
                       query) for the trace websockets; auth_header
    AdminClientError   refused by the server (its status and reason), or unreachable
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["AdminClient", "AdminClientError"]


class AdminClientError(Exception):
    """The request failed: refused by the server, or the server unreachable."""


class AdminClient:
    """Blocking JSON-over-HTTP calls to one node (a CLI may block)."""

    def __init__(
        self, endpoint: str, user: str | None, password: str | None, timeout: float
    ) -> None:
        self._base = endpoint.rstrip("/")
        self._timeout = timeout
        self._auth = None
        if user:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self._auth = f"Basic {token}"

    def call(
        self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None
    ) -> Any:
        url = self._base + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self._auth:
            req.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise AdminClientError(f"{exc.code} {_reason(exc.read())}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise AdminClientError(f"cannot reach {self._base}: {exc}") from None
        return json.loads(raw) if raw else None

    def text(self, path: str) -> str:
        """GET a text answer (task dump, memory stats)."""
        req = urllib.request.Request(self._base + path)
        if self._auth:
            req.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                return resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            raise AdminClientError(f"{exc.code} {_reason(exc.read())}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise AdminClientError(f"cannot reach {self._base}: {exc}") from None

    def ws_url(self, path: str, query: dict[str, Any]) -> str:
        """The websocket URL of ``path`` with ``query`` (lists repeat the key)."""
        base = "ws" + self._base.removeprefix("http")
        pairs = [
            (k, str(x))
            for k, v in query.items()
            if v not in (None, False, [])
            for x in (v if isinstance(v, list) else [v])
        ]
        return base + path + ("?" + urllib.parse.urlencode(pairs) if pairs else "")

    @property
    def auth_header(self) -> str | None:
        return self._auth

    @property
    def base(self) -> str:
        return self._base


def _reason(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()
    if isinstance(body, dict) and "error" in body:
        return body["error"] + (f" (field {body['field']})" if body.get("field") else "")
    return json.dumps(body)
