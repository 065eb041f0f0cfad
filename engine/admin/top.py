"""``nimbus top``: a live terminal view of a node's rates and queues (rich).

Exports:
    top(client, args)             refresh every ``--update-interval`` until interrupted;
                                  ``--once`` prints one frame and exits (scripts, tests)
    Sample, sample(metrics)       the numbers one frame needs, from ``/metrics.json`` (pure)
    rates(before, after)          per-second rates between two samples (pure)
    frame(sample, rates, summary) the rich renderable of one frame

Counters come from ``GET /metrics.json`` (KumoMTA's top reads the same route), queues
from ``GET /api/admin/queue-summary/v1``. The first frame has no rates yet (``-``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from engine.admin.client import AdminClient

__all__ = ["top", "Sample", "sample", "rates", "frame"]

_COUNTERS = {
    "received": "nimbus_messages_received",
    "delivered": "nimbus_messages_delivered",
    "transient": "nimbus_messages_transient_failures",
    "bounced": "nimbus_messages_bounced",
    "expired": "nimbus_messages_expired",
}
_GAUGES = {
    "queued": "nimbus_queued_messages",
    "scheduled": "nimbus_scheduled_messages",
    "ready": "nimbus_ready_messages",
    "connections": "nimbus_connections_open",
    "oldest_age": "nimbus_oldest_message_age_seconds",
    "spool_bytes": "nimbus_spool_bytes",
}


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)


def _total(metrics: Mapping[str, Any], name: str, suffix: str = "") -> float:
    family = metrics.get(name) or {}
    return sum(
        float(s["value"])
        for s in family.get("samples", [])
        if s["name"] == name + suffix or (not suffix and s["name"] == name)
    )


def sample(metrics: Mapping[str, Any], at: float) -> Sample:
    """Counter totals (summed over labels) and gauges of one ``/metrics.json`` answer."""
    return Sample(
        at,
        {k: _total(metrics, n, "_total") for k, n in _COUNTERS.items()},
        {k: _total(metrics, n) for k, n in _GAUGES.items()},
    )


def rates(before: Sample | None, after: Sample) -> dict[str, float | None]:
    """Per-second counter rates between two samples; None without a previous one."""
    span = after.at - before.at if before is not None else 0.0
    return {
        k: (max(0.0, after.counters[k] - before.counters.get(k, 0.0)) / span)
        if before is not None and span > 0
        else None
        for k in after.counters
    }


def frame(now: Sample, per_second: Mapping[str, float | None], summary: Mapping[str, Any]) -> Group:
    """One screen: rates and totals, gauges, then the busiest ready and scheduled queues."""
    traffic = Table(title="traffic", expand=False)
    for col in ("", "per second", "total"):
        traffic.add_column(col, justify="right" if col else "left")
    for key in _COUNTERS:
        rate = per_second.get(key)
        traffic.add_row(key, "-" if rate is None else f"{rate:.1f}", f"{now.counters[key]:.0f}")
    gauges = Table(title="node", expand=False)
    gauges.add_column("")
    gauges.add_column("now", justify="right")
    for key, value in now.gauges.items():
        gauges.add_row(key.replace("_", " "), f"{value:.0f}")
    queues = Table(title="queues (by count)", expand=False)
    for col in ("queue", "kind", "count", "connections", "suspended"):
        queues.add_column(col, justify="right" if col in ("count", "connections") else "left")
    rows = [("ready", q) for q in summary.get("ready", [])] + [
        ("scheduled", q) for q in summary.get("scheduled", [])
    ]
    rows.sort(key=lambda r: -int(r[1].get("count", 0)))
    for kind, q in rows[:15]:
        queues.add_row(
            q["name"],
            kind,
            str(q.get("count", 0)),
            str(q.get("connections", "")),
            q.get("suspended") or "",
        )
    if not rows:
        queues.add_row("(no queues)", "", "", "", "")
    return Group(traffic, gauges, queues)


def _read(client: AdminClient) -> tuple[Sample, Mapping[str, Any]]:
    metrics = client.call("GET", "/metrics.json")
    summary = client.call("GET", "/api/admin/queue-summary/v1")
    return sample(metrics, time.monotonic()), summary


def top(client: AdminClient, args: argparse.Namespace) -> None:
    """Show frames until Ctrl-C; ``--once``: one frame, printed without screen control."""
    console = Console()
    if args.once:
        now, summary = _read(client)
        if args.json:
            print(json.dumps({"counters": now.counters, "gauges": now.gauges}, sort_keys=True))
        else:
            console.print(frame(now, rates(None, now), summary))
        return
    before: Sample | None = None
    try:
        with Live(console=console, auto_refresh=False, screen=console.is_terminal) as live:
            while True:
                now, summary = _read(client)
                live.update(frame(now, rates(before, now), summary), refresh=True)
                before = now
                time.sleep(max(0.1, args.update_interval))
    except KeyboardInterrupt:
        pass
