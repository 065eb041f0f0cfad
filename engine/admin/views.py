"""How admin answers read in a terminal: one table (or block) per verb, pure.

Exports:
    format_table(headers, rows, numeric=None)   aligned text table
    format_summary(summary, *, limit, by_volume, domain)   ``queue-summary``
    entries_table(kind, entries)    bounce-list / suspend-list / suspend-ready-q-list
    xfer_table(jobs), provider_table(rows, *, by_pool, show_domains, limit)
    ready_q_view(answer, *, connections, config, sched_q)   ``inspect-ready-q``
    egress_path_view(answer, *, part)   ``resolve-egress-path`` (all, config, constraints)
    message_view(answer), sched_q_view(answer), key_values(mapping)
    trace_line(event, *, color)     one trace event as one line
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "format_table",
    "format_summary",
    "entries_table",
    "xfer_table",
    "provider_table",
    "ready_q_view",
    "egress_path_view",
    "message_view",
    "sched_q_view",
    "key_values",
    "trace_line",
]


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


def _queue_domain(name: str) -> str:
    return name.rpartition("@")[2].partition("!")[0].lower()


def format_summary(
    summary: Mapping[str, Any],
    *,
    limit: int | None = None,
    by_volume: bool = False,
    domain: str | None = None,
) -> str:
    """``queue-summary``: the ready queues, then the scheduled queues (kcli's order is
    by name; ``by_volume`` sorts by count, descending), at most ``limit`` rows each."""

    def pick(items: list[dict[str, Any]], matches: Any) -> list[dict[str, Any]]:
        if domain:
            items = [q for q in items if matches(q["name"])]
        key = (lambda q: (-q.get("count", 0), q["name"])) if by_volume else (lambda q: q["name"])
        return sorted(items, key=key)[:limit]

    wanted = (domain or "").lower()
    sched = pick(list(summary.get("scheduled", [])), lambda n: _queue_domain(n) == wanted)
    ready = pick(list(summary.get("ready", [])), lambda n: wanted in n.lower())
    out = [
        format_table(
            ("READY QUEUE", "COUNT", "CONNECTIONS", "SUSPENDED"),
            [
                (q["name"], q.get("count", 0), q.get("connections", 0), q.get("suspended"))
                for q in ready
            ],
            (False, True, True, False),
        ),
    ]
    if not ready:
        out.append("(no ready queues)")
    out.append("")
    out.append(
        format_table(
            ("SCHEDULED QUEUE", "COUNT", "SUSPENDED"),
            [(q["name"], q.get("count", 0), q.get("suspended")) for q in sched],
            (False, True, False),
        )
    )
    if not sched:
        out.append("(no scheduled messages)")
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


def _criteria_text(entry: Mapping[str, Any]) -> str:
    parts = [
        f"{k}={entry[k]}"
        for k in ("domain", "routing_domain", "tenant", "campaign")
        if entry.get(k)
    ]
    if entry.get("queue_names"):
        parts.append("queues=" + ",".join(entry["queue_names"]))
    if entry.get("name"):
        parts.append(str(entry["name"]))
    return " ".join(parts) or "(everything)"


def entries_table(kind: str, entries: Sequence[Mapping[str, Any]]) -> str:
    """Admin entries: id, what they select, time left, reason (bounces: how many)."""
    if not entries:
        return f"(no {kind})"
    bounce = kind == "bounces"
    headers = ("ID", "SELECTS", "LEFT", "EXPIRES", *(("BOUNCED",) if bounce else ()), "REASON")
    rows = [
        (
            e["id"],
            _criteria_text(e),
            e.get("duration"),
            e.get("expires"),
            *((e.get("total_bounced", 0),) if bounce else ()),
            e.get("reason"),
        )
        for e in entries
    ]
    numeric = (False, False, False, False, *((True,) if bounce else ()), False)
    return format_table(headers, rows, numeric)


def xfer_table(jobs: Sequence[Mapping[str, Any]]) -> str:
    if not jobs:
        return "(no transfers)"
    return format_table(
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


def provider_table(
    rows: Sequence[Mapping[str, Any]],
    *,
    by_pool: bool = False,
    show_domains: bool = False,
    limit: int | None = None,
) -> str:
    """``provider-summary``: per provider (or site), by volume; pools merged unless
    ``by_pool``."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["provider"], r["pool"] if by_pool else "")
        m = merged.setdefault(
            key,
            {
                "provider": r["provider"],
                "pool": r["pool"],
                "ready": 0,
                "connections": 0,
                "domains": set(),
            },
        )
        m["ready"] += r.get("ready", 0)
        m["connections"] += r.get("connections", 0)
        m["domains"].update(r.get("domains", []))
    ordered = sorted(merged.values(), key=lambda m: (-m["ready"], m["provider"]))[:limit]
    if not ordered:
        return "(no ready queues)"
    headers = ["PROVIDER", *(["POOL"] if by_pool else []), "READY", "CONNECTIONS"]
    if show_domains:
        headers.append("DOMAINS")
    table = []
    for m in ordered:
        row: list[Any] = [
            m["provider"],
            *([m["pool"]] if by_pool else []),
            m["ready"],
            m["connections"],
        ]
        if show_domains:
            row.append(",".join(sorted(m["domains"])))
        table.append(row)
    numeric = [False, *([False] if by_pool else []), True, True, *([False] if show_domains else [])]
    return format_table(headers, table, numeric)


def key_values(mapping: Mapping[str, Any]) -> str:
    """``key: value`` lines, keys aligned; nested values as compact JSON."""
    if not mapping:
        return "(none)"
    width = max(len(str(k)) for k in mapping)
    return "\n".join(
        f"{str(k).ljust(width)}  {v if isinstance(v, str) else json.dumps(v, sort_keys=True)}"
        for k, v in mapping.items()
    )


def ready_q_view(
    answer: Mapping[str, Any], *, connections: bool, config: bool, sched_q: bool
) -> str:
    head = {
        k: answer.get(k)
        for k in (
            "queue_name",
            "egress_source",
            "egress_pool",
            "site_name",
            "provider_name",
            "ready_count",
            "connection_count",
            "connection_limit",
            "suspended",
        )
    }
    out = [key_values(head)]
    for state, facts in (answer.get("states") or {}).items():
        out.append(f"state {state}: {facts.get('context')} (since {facts.get('since')})")
    if connections:
        conns = answer.get("connections") or []
        out.append("")
        out.append(
            format_table(
                ("SESSION ID", "PHASE", "SECONDS", "ATTEMPTED", "IN FLIGHT", "STARTED"),
                [
                    (
                        c["session_id"],
                        c["phase"],
                        c["seconds_in_phase"],
                        c["attempted"],
                        c["in_flight"],
                        c["started"],
                    )
                    for c in conns
                ],
                (False, False, True, True, False, False),
            )
            if conns
            else "(no connections)"
        )
    if sched_q:
        out.append("")
        out.append(
            "scheduled queues feeding it: "
            + (", ".join(answer.get("scheduled_queues") or []) or "(none)")
        )
    if config:
        out.append("")
        out.append(key_values(answer.get("config") or {}))
    return "\n".join(out)


def egress_path_view(answer: Mapping[str, Any], *, part: str = "all") -> str:
    """``resolve-egress-path``: identity, ceilings, then each value with its origin
    (``part``: ``config`` only the values, ``constraints`` only the ceilings)."""
    config = answer.get("config") or {}
    values = format_table(
        ("OPTION", "VALUE", "FROM"),
        [(k, json.dumps(v["value"]), v["source"]) for k, v in config.items()],
    )
    constraints = key_values(answer.get("constraints") or {})
    if part == "config":
        return values
    if part == "constraints":
        return constraints
    head = key_values(
        {
            k: answer.get(k)
            for k in (
                "domain",
                "source",
                "egress_pool",
                "site_name",
                "mx_hosts",
                "ready_queue_name",
                "provider_name",
            )
        }
    )
    overrides = answer.get("tsa_overrides") or {}
    tsa = "TSA overrides: " + (json.dumps(overrides, sort_keys=True) if overrides else "(none)")
    return "\n".join((head, tsa, "", "ceilings:", constraints, "", values))


def message_view(answer: Mapping[str, Any]) -> str:
    msg = dict(answer.get("message") or {})
    data = msg.pop("data", None)
    out = key_values({"id": answer.get("id"), **msg})
    if data is not None:
        out += "\n\n" + str(data)
    return out


def sched_q_view(answer: Mapping[str, Any]) -> str:
    head = key_values({k: answer.get(k) for k in ("queue_name", "num_scheduled", "now")})
    rows = [
        (
            m["id"],
            m["message"].get("recipient"),
            m["message"].get("due"),
            m["message"].get("num_attempts"),
        )
        for m in answer.get("messages") or []
    ]
    table = format_table(("ID", "RECIPIENT", "DUE", "ATTEMPTS"), rows, (False, False, False, True))
    return head + "\n\n" + (table if rows else "(no messages shown)")


_COLORS = {"read": "\x1b[32m", "write": "\x1b[36m", "connected": "\x1b[1m", "closed": "\x1b[1m"}
_ARROWS = {"read": "<-", "write": "->", "connected": "==", "closed": "==", "dropped": "!!"}


def trace_line(event: Mapping[str, Any], *, color: bool = False) -> str:
    """``HH:MM:SS.mmm [session] -> line`` (``->`` we send, ``<-`` we receive); several
    lines of data are joined with ``\\n`` markers so one event stays one line."""
    when = datetime.datetime.fromtimestamp(float(event.get("when", 0)), tz=datetime.UTC)
    kind = str(event.get("kind"))
    if kind == "connected":
        text = f"connected {event.get('peer', '')}"
        extra = [event.get(k) for k in ("mx_host", "ready_queue") if event.get(k)]
        if extra:
            text += " (" + " ".join(map(str, extra)) + ")"
    elif kind == "closed":
        text = "closed"
    elif kind == "dropped":
        text = f"{event.get('count')} events dropped (the trace could not keep up)"
    else:
        text = (
            str(event.get("data", "")).rstrip("\r\n").replace("\r\n", "\\r\\n").replace("\n", "\\n")
        )
    line = (
        f"{when:%H:%M:%S.%f}"[:-3]
        + f" [{event.get('session_id', '')}] {_ARROWS.get(kind, '  ')} {text}"
    )
    if color and kind in _COLORS:
        return f"{_COLORS[kind]}{line}\x1b[0m"
    return line
