"""kcli-like admin verbs over the admin HTTP API (``engine/admin/http.py``).

Exports:
    main(argv) -> exit code          standalone: ``python -m engine.admin.cli VERB ...``
    add_subcommands(subparsers)      the verbs, for the ``nimbus`` parser
    run(args) -> exit code           run a parsed verb
    VERBS                            the verb names
    format_table(headers, rows)      aligned text table (pure)
    format_warmup(sources)           the warmup-status table (pure)

Verbs: queue-summary, bounce, bounce-list, bounce-cancel, suspend, suspend-list,
suspend-cancel, suspend-ready-q, suspend-ready-q-list, suspend-ready-q-cancel, rebind,
inspect-message, inspect-sched-q, xfer, xfer-cancel, xfer-list, warmup-status, and the
suppression verbs (``admin/suppression_verbs.py``: suppression-list, -add, -remove, -import,
-export).

Every verb takes ``--endpoint`` (default ``$NIMBUS_ENDPOINT`` or
``http://127.0.0.1:8000``, as kcli's ``--endpoint``) and, for an untrusted host,
``--user`` with ``--password`` (or ``$NIMBUS_ADMIN_USER`` / ``$NIMBUS_ADMIN_PASSWORD``,
which keeps the password out of the process list). Answers print as JSON, except
``queue-summary``, ``xfer-list`` and ``warmup-status``, which print tables. Exit 0 on
success, 1 when the server refuses or can't be reached, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from engine.admin.suppression_verbs import SUPPRESSION_VERBS, UsageError, add_suppression_verbs

__all__ = [
    "main",
    "add_subcommands",
    "run",
    "VERBS",
    "format_table",
    "format_warmup",
    "AdminClientError",
]

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"


class AdminClientError(Exception):
    """The request failed: refused by the server, or the server unreachable."""


class _Client:
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


def _reason(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()
    if isinstance(body, dict) and "error" in body:
        return body["error"] + (f" (field {body['field']})" if body.get("field") else "")
    return json.dumps(body)


# -- output ------------------------------------------------------------------------


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] | None = None
) -> str:
    """Rows under headers, columns padded; ``numeric`` columns right-aligned."""
    numeric = numeric or [False] * len(headers)
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=False)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_summary(summary: dict[str, Any]) -> str:
    """``queue-summary``: the scheduled queues, then the ready queues, by count."""
    sched = sorted(summary.get("scheduled", []), key=lambda q: (-q.get("count", 0), q["name"]))
    ready = sorted(summary.get("ready", []), key=lambda q: (-q.get("count", 0), q["name"]))
    out = [
        format_table(
            ("SCHEDULED QUEUE", "COUNT", "SUSPENDED"),
            [(q["name"], q.get("count", 0), q.get("suspended")) for q in sched],
            (False, True, False),
        )
    ]
    if not sched:
        out.append("(no scheduled messages)")
    out.append("")
    out.append(
        format_table(
            ("READY QUEUE", "COUNT", "CONNECTIONS", "SUSPENDED"),
            [
                (q["name"], q.get("count", 0), q.get("connections", 0), q.get("suspended"))
                for q in ready
            ],
            (False, True, True, False),
        )
    )
    if not ready:
        out.append("(no ready queues)")
    xfer = summary.get("xfer") or []
    if xfer:
        out.append("")
        out.append(
            format_table(
                ("XFER QUEUE", "COUNT", "STATE"),
                [(q["name"], q.get("count", 0), q.get("state")) for q in xfer],
                (False, True, False),
            )
        )
    return "\n".join(out)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


# -- verbs -------------------------------------------------------------------------


def _criteria(args: argparse.Namespace, *, routing: bool) -> dict[str, Any]:
    """Selection flags as request fields; refuses an empty selection without --everything."""
    body: dict[str, Any] = {}
    for name in ("domain", "tenant", "campaign") + (("routing_domain",) if routing else ()):
        if getattr(args, name, None):
            body[name] = getattr(args, name)
    if getattr(args, "queue", None):
        body["queue_names"] = list(args.queue)
    if getattr(args, "everything", False):
        if body:
            raise _Usage("--everything cannot be combined with other criteria")
    elif not body:
        raise _Usage(
            "give at least one of --domain, --tenant, --campaign"
            + (", --routing-domain" if routing else "")
            + ", --queue, or --everything"
        )
    return body


def _lifetime(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    body["reason"] = args.reason
    if args.duration:
        body["duration"] = args.duration
    return body


class _Usage(Exception):
    """A usage error found after parsing (exit 2)."""


def _queue_summary(c: _Client, args: argparse.Namespace) -> None:
    print(format_summary(c.call("GET", "/api/admin/queue-summary/v1")))


def _bounce(c: _Client, args: argparse.Namespace) -> None:
    body = _lifetime(args, _criteria(args, routing=True))
    if args.suppress_logging:
        body["suppress_logging"] = True
    _print_json(c.call("POST", "/api/admin/bounce/v1", body))


def _suspend(c: _Client, args: argparse.Namespace) -> None:
    _print_json(
        c.call("POST", "/api/admin/suspend/v1", _lifetime(args, _criteria(args, routing=False)))
    )


def _suspend_ready_q(c: _Client, args: argparse.Namespace) -> None:
    _print_json(
        c.call("POST", "/api/admin/suspend-ready-q/v1", _lifetime(args, {"name": args.name}))
    )


def _lister(path: str) -> Callable[[_Client, argparse.Namespace], None]:
    def verb(c: _Client, args: argparse.Namespace) -> None:
        _print_json(c.call("GET", path))

    return verb


def _canceller(path: str) -> Callable[[_Client, argparse.Namespace], None]:
    def verb(c: _Client, args: argparse.Namespace) -> None:
        c.call("DELETE", path, {"id": args.id})
        print(f"cancelled {args.id}")

    return verb


def _rebind(c: _Client, args: argparse.Namespace) -> None:
    data = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _Usage(f"--set {item!r} must be KEY=VALUE")
        data[key] = value
    body = _criteria(args, routing=True)
    body.pop("queue_names", None)
    body.update(reason=args.reason, data=data)
    if args.trigger_rebind_event:
        body["trigger_rebind_event"] = True
    _print_json(c.call("POST", "/api/admin/rebind/v1", body))


def _inspect_message(c: _Client, args: argparse.Namespace) -> None:
    _print_json(
        c.call(
            "GET",
            "/api/admin/inspect-message/v1",
            query={"id": args.id, "want_body": "true" if args.want_body else None},
        )
    )


def _inspect_sched_q(c: _Client, args: argparse.Namespace) -> None:
    _print_json(
        c.call(
            "GET",
            "/api/admin/inspect-sched-q/v1",
            query={
                "queue_name": args.queue,
                "want_body": "true" if args.want_body else None,
                "limit": args.limit,
            },
        )
    )


def _xfer(c: _Client, args: argparse.Namespace) -> None:
    body = _criteria(args, routing=True)
    if args.everything:
        body["everything"] = True
    body.update(target=args.target, reason=args.reason)
    _print_json(c.call("POST", "/api/admin/xfer/v1", body))


def _xfer_cancel(c: _Client, args: argparse.Namespace) -> None:
    _print_json(
        c.call(
            "POST",
            "/api/admin/xfer/cancel/v1",
            {"queue_name": args.queue_name, "reason": args.reason},
        )
    )


def _xfer_list(c: _Client, args: argparse.Namespace) -> None:
    jobs = c.call("GET", "/api/admin/xfer/v1") or []
    if args.json:
        _print_json(jobs)
        return
    print(
        format_table(
            ("XFER QUEUE", "STATE", "TOTAL", "MOVED", "FAILED", "LEFT", "LAST ERROR"),
            [
                (
                    j["queue_name"],
                    j["state"],
                    j["total"],
                    j["moved"],
                    j["failed"],
                    j["left"],
                    (j.get("errors") or [None])[-1],
                )
                for j in jobs
            ],
            (False, False, True, True, True, True, False),
        )
        if jobs
        else "(no transfers)"
    )


def format_warmup(sources: Sequence[dict[str, Any]]) -> str:
    """``warmup-status``: one row per counter of each warming source (pure)."""
    if not sources:
        return "(no source has a warm-up schedule)"
    rows = []
    for s in sources:
        for c in s.get("counters", []):
            allowed = c.get("allowed")
            rows.append(
                (
                    s["source"],
                    c.get("provider") or "*",
                    f"{s['day']}/{s['days']}",
                    c.get("state"),
                    c.get("used", 0),
                    "no limit" if allowed is None else allowed,
                    c.get("overflow", 0),
                    c.get("window_end"),
                )
            )
    return format_table(
        ("SOURCE", "PROVIDER", "DAY", "STATE", "USED", "ALLOWED", "OVERFLOW", "WINDOW ENDS"),
        rows,
        (False, False, True, False, True, True, True, False),
    )


def _warmup_status(c: _Client, args: argparse.Namespace) -> None:
    answer = c.call("GET", "/api/admin/warmup/v1") or {}
    sources = [
        s for s in answer.get("sources", []) if not args.source or s["source"] in args.source
    ]
    if args.json:
        _print_json({"sources": sources})
        return
    print(format_warmup(sources))


# -- parser ------------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    # SUPPRESS: a subcommand's unset flag must not hide one given before the verb.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--endpoint",
        default=argparse.SUPPRESS,
        help=f"node HTTP URL (default $NIMBUS_ENDPOINT or {DEFAULT_ENDPOINT})",
    )
    common.add_argument(
        "--user",
        default=argparse.SUPPRESS,
        help="admin user (default $NIMBUS_ADMIN_USER); not needed from a trusted host",
    )
    common.add_argument(
        "--password",
        default=argparse.SUPPRESS,
        help="admin password (default $NIMBUS_ADMIN_PASSWORD)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        help="seconds to wait for the node (default 30)",
    )
    return common


def _selection(p: argparse.ArgumentParser, *, routing: bool, queues: bool = True) -> None:
    p.add_argument("--domain", help="recipient domain of the scheduled queue")
    if routing:
        p.add_argument("--routing-domain", dest="routing_domain", help="routing domain")
    p.add_argument("--tenant", help="tenant")
    p.add_argument("--campaign", help="campaign")
    if queues:
        p.add_argument(
            "--queue",
            action="append",
            metavar="NAME",
            help="exact scheduled queue name (repeatable; wins over the others)",
        )
    p.add_argument("--everything", action="store_true", help="no criteria: applies to EVERY queue")


def _lifetime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", required=True, help="reason, logged and listed")
    p.add_argument("--duration", help="how long the entry lives (default 5m)")


def add_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the admin verbs to ``subparsers`` (from ``parser.add_subparsers``)."""
    common = [_connection_options()]

    def verb(
        name: str, fn: Callable[[_Client, argparse.Namespace], None], help: str
    ) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, parents=common, help=help, description=help)
        p.set_defaults(admin_verb=fn)
        return p

    verb("queue-summary", _queue_summary, "scheduled and ready queues with counts")
    p = verb("bounce", _bounce, "bounce matching queued messages, and new ones for a while")
    _selection(p, routing=True)
    _lifetime_flags(p)
    p.add_argument("--suppress-logging", action="store_true", help="log no AdminBounce records")
    verb("bounce-list", _lister("/api/admin/bounce/v1"), "list active bounces")
    verb("bounce-cancel", _canceller("/api/admin/bounce/v1"), "cancel a bounce").add_argument(
        "--id", required=True, help="the bounce's id (bounce-list shows it)"
    )
    p = verb("suspend", _suspend, "suspend delivery of matching scheduled queues")
    _selection(p, routing=False)
    _lifetime_flags(p)
    verb("suspend-list", _lister("/api/admin/suspend/v1"), "list active suspensions")
    verb("suspend-cancel", _canceller("/api/admin/suspend/v1"), "cancel a suspension").add_argument(
        "--id", required=True, help="the suspension's id (suspend-list shows it)"
    )
    p = verb("suspend-ready-q", _suspend_ready_q, "suspend one ready queue (egress path)")
    p.add_argument("--name", required=True, help="ready queue name, source->site@smtp_client")
    _lifetime_flags(p)
    verb(
        "suspend-ready-q-list",
        _lister("/api/admin/suspend-ready-q/v1"),
        "list ready-queue suspensions",
    )
    verb(
        "suspend-ready-q-cancel",
        _canceller("/api/admin/suspend-ready-q/v1"),
        "cancel a ready-queue suspension",
    ).add_argument("--id", required=True, help="the suspension's id (suspend-ready-q-list)")
    p = verb("rebind", _rebind, "set meta on matching scheduled messages and requeue them")
    _selection(p, routing=True, queues=False)
    p.add_argument(
        "--set",
        action="append",
        required=True,
        metavar="KEY=VALUE",
        help="meta to set (repeatable), e.g. --set routing_domain=relay.example",
    )
    p.add_argument("--reason", required=True, help="reason, logged")
    p.add_argument(
        "--trigger-rebind-event",
        action="store_true",
        help="run the rebind policy event instead of setting meta directly",
    )
    p = verb("inspect-message", _inspect_message, "show one message")
    p.add_argument("--id", required=True, help="the message's spool id (in its log records)")
    p.add_argument("--want-body", action="store_true", help="include the message body")
    p = verb("inspect-sched-q", _inspect_sched_q, "show a scheduled queue and its messages")
    p.add_argument("--queue", required=True, help="scheduled queue name")
    p.add_argument("--want-body", action="store_true", help="include message bodies")
    p.add_argument("--limit", type=int, help="at most this many messages")
    p = verb("xfer", _xfer, "move matching queued messages to another node (kcli xfer)")
    _selection(p, routing=True)
    p.add_argument(
        "--target",
        required=True,
        help="the other node's HTTP URL prefix, e.g. http://10.0.0.2:8000",
    )
    p.add_argument("--reason", required=True, help="reason, logged (AdminRebind records)")
    p = verb("xfer-cancel", _xfer_cancel, "stop a transfer: unsent messages go back")
    p.add_argument("queue_name", help="the xfer queue (xfer and xfer-list print it)")
    p.add_argument("--reason", required=True, help="reason, logged (AdminRebind records)")
    p = verb("xfer-list", _xfer_list, "transfers and their progress (moved, failed, left)")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p = verb(
        "warmup-status",
        _warmup_status,
        "IP warm-up: each warming source's day, used/allowed in its window (cluster-wide)",
    )
    p.add_argument(
        "--source", action="append", metavar="NAME", help="only this source (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    add_suppression_verbs(verb, format_table)


VERBS = (
    "queue-summary",
    "bounce",
    "bounce-list",
    "bounce-cancel",
    "suspend",
    "suspend-list",
    "suspend-cancel",
    "suspend-ready-q",
    "suspend-ready-q-list",
    "suspend-ready-q-cancel",
    "rebind",
    "inspect-message",
    "inspect-sched-q",
    "xfer",
    "xfer-cancel",
    "xfer-list",
    "warmup-status",
    *SUPPRESSION_VERBS,
)


def run(args: argparse.Namespace) -> int:
    """Run the verb ``args`` was parsed for; returns the exit code."""
    env = os.environ
    client = _Client(
        getattr(args, "endpoint", None) or env.get("NIMBUS_ENDPOINT") or DEFAULT_ENDPOINT,
        getattr(args, "user", None) or env.get("NIMBUS_ADMIN_USER"),
        getattr(args, "password", None) or env.get("NIMBUS_ADMIN_PASSWORD"),
        getattr(args, "timeout", None) or 30.0,
    )
    name = getattr(args, "command", None) or "nimbus"
    try:
        args.admin_verb(client, args)
    except (_Usage, UsageError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except AdminClientError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nimbus-admin",
        parents=[_connection_options()],
        description="Nimbus admin verbs (kcli-like)",
    )
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return int(exc.code or 0)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
