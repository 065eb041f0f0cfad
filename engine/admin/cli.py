"""kcli's verbs as ``nimbus <verb>``, over the admin HTTP API (``engine/admin/http.py``).

Exports:
    main(argv) -> exit code          standalone: ``python -m engine.admin.cli VERB ...``
    add_subcommands(subparsers)      the verbs, for the ``nimbus`` parser
    run(args) -> exit code           run a parsed verb
    VERBS                            the verb names
    format_table(headers, rows)      aligned text table (pure; ``engine/admin/views.py``)
    format_warmup(sources)           the warmup-status table (pure)

Verbs (kcli's names, options and endpoints): queue-summary, provider-summary, bounce,
bounce-list, bounce-cancel, suspend, suspend-list, suspend-cancel, suspend-ready-q,
suspend-ready-q-list, suspend-ready-q-cancel, rebind, set-log-filter,
abort-ready-q-conn, inspect-message, inspect-ready-q, inspect-sched-q,
resolve-egress-path, spool-compact, trace-smtp-client, trace-smtp-server, top, xfer,
xfer-cancel; and
Nimbus's xfer-list, retry-now, machine-info, task-dump, memory-stats, logs (reads the
log directory, no endpoint), warmup-status, and the suppression verbs
(``admin/suppression_verbs.py``: suppression-list, -add, -remove, -import, -export).

Every verb takes ``--endpoint`` (default ``$NIMBUS_ENDPOINT`` or
``http://127.0.0.1:8000``, as kcli's ``--endpoint``), ``--json`` (the raw answer instead
of the human view) and, for an untrusted host, ``--user`` with ``--password`` (or
``$NIMBUS_ADMIN_USER`` / ``$NIMBUS_ADMIN_PASSWORD``, which keeps the password out of the
process list). Exit 0 on success, 1 when the server refuses or can't be reached, 2 on a
usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from engine.admin import logtail, top, views, watch
from engine.admin.client import AdminClient, AdminClientError
from engine.admin.suppression_verbs import SUPPRESSION_VERBS, UsageError, add_suppression_verbs
from engine.admin.views import format_table

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


# -- output ------------------------------------------------------------------------


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _show(args: argparse.Namespace, answer: Any, view: Callable[[Any], str]) -> None:
    """``--json``: the raw answer; else the human view."""
    if getattr(args, "json", False):
        _print_json(answer)
    else:
        print(view(answer))


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


def _queue_summary(c: AdminClient, args: argparse.Namespace) -> None:
    _show(
        args,
        c.call("GET", "/api/admin/queue-summary/v1"),
        lambda s: views.format_summary(
            s, limit=args.limit, by_volume=args.by_volume, domain=args.domain
        ),
    )


def _provider_summary(c: AdminClient, args: argparse.Namespace) -> None:
    _show(
        args,
        c.call("GET", "/api/admin/provider-summary/v1"),
        lambda rows: views.provider_table(
            rows, by_pool=args.by_pool, show_domains=args.show_domains, limit=args.limit
        ),
    )


def _bounce(c: AdminClient, args: argparse.Namespace) -> None:
    body = _lifetime(args, _criteria(args, routing=True))
    if args.suppress_logging:
        body["suppress_logging"] = True
    _show(
        args,
        c.call("POST", "/api/admin/bounce/v1", body),
        lambda r: f"bounce {r['id']} added; bounced {r['total_bounced']} queued messages now",
    )


def _suspend(c: AdminClient, args: argparse.Namespace) -> None:
    body = _lifetime(args, _criteria(args, routing=False))
    _show(args, c.call("POST", "/api/admin/suspend/v1", body), lambda r: f"suspension {r['id']}")


def _suspend_ready_q(c: AdminClient, args: argparse.Namespace) -> None:
    body = _lifetime(args, {"name": args.name})
    _show(
        args,
        c.call("POST", "/api/admin/suspend-ready-q/v1", body),
        lambda r: f"ready-queue suspension {r['id']}",
    )


def _lister(path: str, kind: str) -> Callable[[AdminClient, argparse.Namespace], None]:
    def verb(c: AdminClient, args: argparse.Namespace) -> None:
        _show(args, c.call("GET", path) or [], lambda e: views.entries_table(kind, e))

    return verb


def _canceller(path: str) -> Callable[[AdminClient, argparse.Namespace], None]:
    def verb(c: AdminClient, args: argparse.Namespace) -> None:
        _show(args, c.call("DELETE", path, {"id": args.id}), lambda _r: f"cancelled {args.id}")

    return verb


def _rebind(c: AdminClient, args: argparse.Namespace) -> None:
    data: dict[str, Any] = {}
    if args.data:
        try:
            data = json.loads(args.data)
        except ValueError as exc:
            raise _Usage(f"--data is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise _Usage("--data must be a JSON object")
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _Usage(f"--set {item!r} must be KEY=VALUE")
        data[key] = value
    if not data:
        raise _Usage("give --data or --set KEY=VALUE")
    body = _criteria(args, routing=True)
    body.pop("queue_names", None)
    body.update(reason=args.reason, data=data)
    for flag in ("trigger_rebind_event", "always_flush", "suppress_logging"):
        if getattr(args, flag):
            body[flag] = True
    _show(args, c.call("POST", "/api/admin/rebind/v1", body), lambda _r: "rebound")


def _one(args: argparse.Namespace, positional: str, option: str, flag: str) -> str:
    value = getattr(args, positional, None) or getattr(args, option, None)
    if not value:
        raise _Usage(f"give the {positional.replace('_', ' ')} (or {flag})")
    return str(value)


def _inspect_message(c: AdminClient, args: argparse.Namespace) -> None:
    query = {"id": _one(args, "msg_id", "id_opt", "--id"), "want_body": _flag(args.want_body)}
    _show(args, c.call("GET", "/api/admin/inspect-message/v1", query=query), views.message_view)


def _flag(value: bool) -> str | None:
    return "true" if value else None


def _inspect_sched_q(c: AdminClient, args: argparse.Namespace) -> None:
    query = {
        "queue_name": _one(args, "queue_name", "queue_opt", "--queue"),
        "want_body": _flag(args.want_body),
        "limit": None if args.no_limit else args.limit,
    }
    _show(args, c.call("GET", "/api/admin/inspect-sched-q/v1", query=query), views.sched_q_view)


def _inspect_ready_q(c: AdminClient, args: argparse.Namespace) -> None:
    query = {"queue_name": args.queue_name, "include_scheduled_queues": _flag(args.sched_q)}
    _show(
        args,
        c.call("GET", "/api/admin/inspect-ready-q/v1", query=query),
        lambda a: views.ready_q_view(
            a, connections=args.connections, config=args.config, sched_q=args.sched_q
        ),
    )


def _abort_ready_q_conn(c: AdminClient, args: argparse.Namespace) -> None:
    body = {"queue_name": args.queue_name, "session_id": args.session_id}
    _show(
        args,
        c.call("POST", "/api/admin/abort-ready-q-conn/v1", body),
        lambda _r: f"aborted {args.session_id}",
    )


def _resolve_egress_path(c: AdminClient, args: argparse.Namespace) -> None:
    query = {"domain": args.domain, "source": args.source}
    part = "config" if args.config else "constraints" if args.constraints else "all"
    _show(
        args,
        c.call("GET", "/api/admin/resolve-egress-path/v1", query=query),
        lambda a: views.egress_path_view(a, part=part),
    )


def _set_log_filter(c: AdminClient, args: argparse.Namespace) -> None:
    body = {"filter": args.filter}
    _show(
        args,
        c.call("POST", "/api/admin/set_diagnostic_log_filter/v1", body),
        lambda _r: f"log filter set: {args.filter}",
    )


def _spool_compact(c: AdminClient, args: argparse.Namespace) -> None:
    _show(
        args,
        c.call("POST", "/api/admin/spool-compact/v1", {"name": args.name}),
        views.key_values,
    )


def _retry_now(c: AdminClient, args: argparse.Namespace) -> None:
    body = _criteria(args, routing=True)
    if args.everything:
        body["everything"] = True
    if args.reason:
        body["reason"] = args.reason
    _show(
        args,
        c.call("POST", "/api/admin/retry-now/v1", body),
        lambda r: views.format_table(
            ("SCHEDULED QUEUE", "MADE DUE NOW"),
            sorted(r["retried"].items()) + [("total", r["total_retried"])],
            (False, True),
        ),
    )


def _inspect_sched_q_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("queue_name", nargs="?", help="the scheduled queue's name")
    p.add_argument("--queue", dest="queue_opt", help="the same, as an option (older spelling)")
    p.add_argument("--want-body", action="store_true", help="include message bodies")
    p.add_argument("--limit", type=int, default=5, help="at most this many messages (default 5)")
    p.add_argument("--no-limit", action="store_true", help="every message (can be expensive)")


def _xfer(c: AdminClient, args: argparse.Namespace) -> None:
    body = _criteria(args, routing=True)
    if args.everything:
        body["everything"] = True
    body.update(target=args.target, reason=args.reason)
    _show(
        args,
        c.call("POST", "/api/admin/xfer/v1", body),
        lambda r: f"{r['messages']} messages to {r['queue_name']}",
    )


def _xfer_cancel(c: AdminClient, args: argparse.Namespace) -> None:
    body = {"queue_name": args.queue_name, "reason": args.reason}
    _show(
        args,
        c.call("POST", "/api/admin/xfer/cancel/v1", body),
        lambda r: f"cancelled {r['queue_name']}: {r['returned']} messages back in their queues",
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


def _warmup_status(c: AdminClient, args: argparse.Namespace) -> None:
    answer = c.call("GET", "/api/admin/warmup/v1") or {}
    sources = [
        s for s in answer.get("sources", []) if not args.source or s["source"] in args.source
    ]
    if args.json:
        _print_json({"sources": sources})
        return
    print(format_warmup(sources))


def _xfer_list(c: AdminClient, args: argparse.Namespace) -> None:
    _show(args, c.call("GET", "/api/admin/xfer/v1") or [], views.xfer_table)


def _machine_info(c: AdminClient, args: argparse.Namespace) -> None:
    _show(args, c.call("GET", "/api/machine-info"), views.key_values)


def _texter(path: str) -> Callable[[AdminClient, argparse.Namespace], None]:
    def verb(c: AdminClient, args: argparse.Namespace) -> None:
        text = c.text(path)
        if args.json:
            _print_json({"text": text})
        else:
            print(text, end="")

    return verb


def _trace(path: str) -> Callable[[AdminClient, argparse.Namespace], None]:
    def verb(c: AdminClient, args: argparse.Namespace) -> None:
        watch.trace(c, path, args)

    return verb


# -- parser ------------------------------------------------------------------------

_STATE_NOTE = (
    " Admin entries persist in the spool directory (admin-state.json) and survive a restart;"
    " expired ones are dropped at start."
)


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
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the node's raw JSON answer instead of the human view",
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


def _trace_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--color", choices=("tty", "yes", "no"), default="tty", help="colorize (default tty)"
    )
    p.add_argument("--only-new", action="store_true", help="only sessions opened from now on")
    p.add_argument("--only-one", action="store_true", help="the first session seen, then exit")
    p.add_argument(
        "--terse", action="store_true", help="abbreviate long data (a DATA body: first line)"
    )


def add_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the admin verbs to ``subparsers`` (from ``parser.add_subparsers``)."""
    common = [_connection_options()]

    def verb(
        name: str, fn: Callable[[AdminClient, argparse.Namespace], None], help: str
    ) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, parents=common, help=help, description=help)
        p.set_defaults(admin_verb=fn)
        return p

    p = verb("queue-summary", _queue_summary, "ready and scheduled queues with counts")
    p.add_argument("--limit", type=int, help="at most LIMIT rows per table")
    p.add_argument("--by-volume", action="store_true", help="order by count, not by name")
    p.add_argument("--domain", help="only queues of this destination domain")
    p = verb(
        "provider-summary", _provider_summary, "ready queues by provider (or MX site), by volume"
    )
    p.add_argument("--by-pool", action="store_true", help="a POOL column, volume per pool")
    p.add_argument("--show-domains", action="store_true", help="a DOMAINS column")
    p.add_argument("--limit", type=int, help="at most LIMIT rows")
    p = verb(
        "bounce",
        _bounce,
        "bounce matching queued messages, and new ones for a while." + _STATE_NOTE,
    )
    _selection(p, routing=True)
    _lifetime_flags(p)
    p.add_argument("--suppress-logging", action="store_true", help="log no AdminBounce records")
    verb("bounce-list", _lister("/api/admin/bounce/v1", "bounces"), "list active bounces")
    verb("bounce-cancel", _canceller("/api/admin/bounce/v1"), "cancel a bounce").add_argument(
        "--id", required=True, help="the bounce's id (bounce-list shows it)"
    )
    p = verb("suspend", _suspend, "suspend delivery of matching scheduled queues." + _STATE_NOTE)
    _selection(p, routing=False)
    _lifetime_flags(p)
    verb("suspend-list", _lister("/api/admin/suspend/v1", "suspensions"), "list suspensions")
    verb("suspend-cancel", _canceller("/api/admin/suspend/v1"), "cancel a suspension").add_argument(
        "--id", required=True, help="the suspension's id (suspend-list shows it)"
    )
    p = verb(
        "suspend-ready-q",
        _suspend_ready_q,
        "suspend one ready queue (egress path)." + _STATE_NOTE,
    )
    p.add_argument("--name", required=True, help="ready queue name, source->site@smtp_client")
    _lifetime_flags(p)
    verb(
        "suspend-ready-q-list",
        _lister("/api/admin/suspend-ready-q/v1", "ready-queue suspensions"),
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
        metavar="KEY=VALUE",
        help="meta to set (repeatable), e.g. --set routing_domain=relay.example",
    )
    p.add_argument("--data", help="a JSON object of meta to set (merged under --set)")
    p.add_argument("--reason", required=True, help="reason, logged")
    p.add_argument(
        "--trigger-rebind-event",
        action="store_true",
        help="run the rebind policy event instead of setting meta directly",
    )
    p.add_argument("--always-flush", action="store_true", help="requeue even if unchanged")
    p.add_argument("--suppress-logging", action="store_true", help="log no AdminRebind records")
    p = verb("set-log-filter", _set_log_filter, "change the node's diagnostic log filter now")
    p.add_argument("filter", help='e.g. "debug" or "info,nimbus.ready=debug" ("kumod=trace")')
    p = verb(
        "abort-ready-q-conn",
        _abort_ready_q_conn,
        "abort one connection of a ready queue; its message goes back, due now",
    )
    p.add_argument("queue_name", help="the ready queue")
    p.add_argument("session_id", help="the connection's session id (inspect-ready-q)")
    p = verb("inspect-message", _inspect_message, "show one message")
    p.add_argument("msg_id", nargs="?", help="the message's spool id (in its log records)")
    p.add_argument("--id", dest="id_opt", help="the same, as an option (older spelling)")
    p.add_argument("--want-body", action="store_true", help="include the message body")
    p = verb("inspect-ready-q", _inspect_ready_q, "show one ready queue: state, connections")
    p.add_argument("queue_name", help="the ready queue's name")
    p.add_argument("--connections", action="store_true", help="per-connection state")
    p.add_argument("--config", action="store_true", help="the egress path configuration")
    p.add_argument("--sched-q", action="store_true", help="scheduled queues feeding it")
    p = verb("inspect-sched-q", _inspect_sched_q, "show a scheduled queue and its messages")
    _inspect_sched_q_args(p)
    p = verb(
        "resolve-egress-path",
        _resolve_egress_path,
        "the effective egress path for a domain and source, and where each value came from",
    )
    p.add_argument("domain", help="destination domain")
    p.add_argument("source", nargs="?", help='egress source (default "unspecified")')
    p.add_argument("--config", action="store_true", help="only the values and their origins")
    p.add_argument("--constraints", action="store_true", help="only the ceilings")
    p = verb("trace-smtp-client", _trace("/api/admin/trace-smtp-client/v1"), "live outbound SMTP")
    for name, help in (
        ("domain", "recipient domain (per message)"),
        ("routing-domain", "routing domain (per message)"),
        ("tenant", "tenant (per message)"),
        ("campaign", "campaign (per message)"),
        ("mail-from", "envelope sender (per message)"),
        ("rcpt-to", "envelope recipient (per message)"),
        ("mx-host", "MX host name"),
        ("egress-source", "egress source"),
        ("egress-pool", "egress pool"),
        ("ready-queue", "ready queue name"),
    ):
        p.add_argument(f"--{name}", dest=name.replace("-", "_"), help=f"only this {help}")
    p.add_argument("--mx-addr", action="append", help="MX address CIDR (repeatable)")
    _trace_flags(p)
    p = verb("trace-smtp-server", _trace("/api/admin/trace-smtp-server/v1"), "live inbound SMTP")
    p.add_argument("--source", action="append", help="peer address CIDR (repeatable)")
    _trace_flags(p)
    p = verb("top", top.top, "live view of rates and queues")
    p.add_argument("--update-interval", type=float, default=1.0, help="seconds (default 1)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
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
    verb("xfer-list", _xfer_list, "transfers and their progress (moved, failed, left)")
    p = verb(
        "retry-now",
        _retry_now,
        "make matching scheduled messages due now (no attempt is counted)",
    )
    _selection(p, routing=True)
    p.add_argument("--reason", help="reason, kept in the audit record")
    p = verb(
        "spool-compact",
        _spool_compact,
        "flush and fully compact the spool (WAL checkpoint + VACUUM; writes wait meanwhile)",
    )
    p.add_argument(
        "--name",
        required=True,
        choices=("data", "meta", "spool"),
        help="spool to compact: data, meta (KumoMTA's names) or spool; one database here",
    )
    verb("machine-info", _machine_info, "the node's identity: node id, host, CPU, OS")
    verb("task-dump", _texter("/api/admin/task-dump"), "every asyncio task and its stack")
    verb("memory-stats", _texter("/api/admin/memory/stats"), "the node's memory use")
    p = subparsers.add_parser(
        "logs",
        help="print (and follow) the log records of a log directory, one line each",
        description="print (and follow) the log records of a log directory, one line each",
    )
    p.set_defaults(local_verb=logtail.logs)
    p.add_argument("--dir", help="log directory (default $NIMBUS_LOG_DIR or nimbus-data/logs)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    p.add_argument("--type", action="append", help="only this record type (repeatable)")
    p.add_argument("--domain", help="only this recipient (or queue) domain")
    p.add_argument("--queue", help="only this scheduled queue")
    p.add_argument("--id", help="only this message id")
    p.add_argument("--json", action="store_true", help="print each raw record (one JSON line)")
    p = verb(
        "warmup-status",
        _warmup_status,
        "IP warm-up: each warming source's day, used/allowed in its window (cluster-wide)",
    )
    p.add_argument(
        "--source", action="append", metavar="NAME", help="only this source (repeatable)"
    )
    add_suppression_verbs(verb, format_table)


VERBS = (
    "queue-summary",
    "provider-summary",
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
    "set-log-filter",
    "abort-ready-q-conn",
    "inspect-message",
    "inspect-ready-q",
    "inspect-sched-q",
    "resolve-egress-path",
    "trace-smtp-client",
    "trace-smtp-server",
    "top",
    "xfer",
    "xfer-cancel",
    "xfer-list",
    "retry-now",
    "spool-compact",
    "machine-info",
    "task-dump",
    "memory-stats",
    "logs",
    "warmup-status",
    *SUPPRESSION_VERBS,
)


def run(args: argparse.Namespace) -> int:
    """Run the verb ``args`` was parsed for; returns the exit code."""
    if getattr(args, "local_verb", None) is not None:
        return int(args.local_verb(args))
    env = os.environ
    client = AdminClient(
        getattr(args, "endpoint", None) or env.get("NIMBUS_ENDPOINT") or DEFAULT_ENDPOINT,
        getattr(args, "user", None) or env.get("NIMBUS_ADMIN_USER"),
        getattr(args, "password", None) or env.get("NIMBUS_ADMIN_PASSWORD"),
        getattr(args, "timeout", None) or 30.0,
    )
    if not hasattr(args, "json"):
        args.json = False
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
