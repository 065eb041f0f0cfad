"""``nimbus trace-smtp-server`` / ``trace-smtp-client``: print a node's live SMTP traces.

Exports:
    trace(client, path, args)   connect the websocket, print one line per event until
                                interrupted (or, with ``--only-one``, the session closes)
    SessionPicker               ``--only-new`` / ``--only-one`` over the event stream (pure)

Once subscribed it says so on stderr (``tracing <url>``), so a script can start SMTP
traffic after that line. ``--json`` prints each event as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import aiohttp

from engine.admin.client import AdminClient, AdminClientError
from engine.admin.views import trace_line

__all__ = ["trace", "SessionPicker"]


class SessionPicker:
    """Which events to print. only_new: sessions seen opening after we subscribed.
    only_one: the first such session (or the first seen at all); ``done`` once it closed."""

    def __init__(self, *, only_new: bool, only_one: bool) -> None:
        self._only_new = only_new
        self._only_one = only_one
        self._opened: set[str] = set()
        self._chosen: str | None = None
        self.done = False

    def wants(self, event: dict[str, Any]) -> bool:
        sid = str(event.get("session_id", ""))
        if event.get("kind") == "dropped":
            return True
        if event.get("kind") == "connected":
            self._opened.add(sid)
        if self._only_new and sid not in self._opened:
            return False
        if self._only_one:
            if self._chosen is None and (not self._only_new or sid in self._opened):
                self._chosen = sid
            if sid != self._chosen:
                return False
            if event.get("kind") == "closed":
                self.done = True
        return True


def _query(args: argparse.Namespace, client_side: bool) -> dict[str, Any]:
    query: dict[str, Any] = {"terse": "true" if args.terse else None}
    if client_side:
        for name in (
            "domain",
            "routing_domain",
            "tenant",
            "campaign",
            "mail_from",
            "rcpt_to",
            "mx_host",
            "egress_source",
            "egress_pool",
            "ready_queue",
        ):
            query[name] = getattr(args, name, None)
        query["mx_addr"] = list(args.mx_addr or [])
    else:
        query["source"] = list(args.source or [])
    return query


async def _run(client: AdminClient, path: str, args: argparse.Namespace) -> None:
    url = client.ws_url(path, _query(args, "client" in path))
    headers = {"Authorization": client.auth_header} if client.auth_header else {}
    color = args.color == "yes" or (args.color == "tty" and sys.stdout.isatty())
    picker = SessionPicker(only_new=args.only_new, only_one=args.only_one)
    timeout = aiohttp.ClientTimeout(total=None, connect=getattr(args, "timeout", None) or 30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        try:
            ws = await http.ws_connect(url, headers=headers, heartbeat=30)
        except aiohttp.WSServerHandshakeError as exc:
            raise AdminClientError(f"{exc.status} {exc.message}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise AdminClientError(f"cannot reach {client.base}: {exc}") from None
        print(f"tracing {url}", file=sys.stderr, flush=True)
        async with ws:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                event = json.loads(msg.data)
                if not picker.wants(event):
                    continue
                print(
                    json.dumps(event) if args.json else trace_line(event, color=color), flush=True
                )
                if picker.done:
                    return


def trace(client: AdminClient, path: str, args: argparse.Namespace) -> None:
    """Print trace events from ``path`` until interrupted or the picked session ends."""
    try:
        asyncio.run(_run(client, path, args))
    except KeyboardInterrupt:
        pass
