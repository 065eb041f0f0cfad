"""One answer for the node from every worker's answer (pure).

Exports:
    merge_admin(method, path, answers) -> (status, body)   admin API answers of every worker
    merge_live_metrics(texts) -> [Metric]                   scrape-time gauges of every worker

Each worker holds its own shard's queues, so a read sums or joins the workers' answers
and an action (bounce, suspend, rebind, xfer) is applied by every worker and its counts
added. ``answers`` are (status, JSON body) pairs, the receiving worker's first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["merge_admin", "merge_live_metrics"]

Answer = tuple[int, Any]

# Gauges that are one value for the node, not a sum: the oldest message of any worker,
# the spool filesystem (one disk), a hook failing on any worker.
_MAX = frozenset(
    {
        "nimbus_oldest_message_age_seconds",
        "nimbus_spool_disk_free_bytes",
        "nimbus_spool_disk_size_bytes",
        "nimbus_log_hook_failing",
    }
)


def _ok(answers: list[Answer]) -> list[Any]:
    return [body for status, body in answers if 200 <= status < 300]


def _sum_queues(items: Iterable[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Queue entries with the same name as one, ``keys`` added up (order of first sight)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name = item.get("name")
        if not isinstance(name, str):
            continue
        seen = out.get(name)
        if seen is None:
            out[name] = dict(item)
            continue
        for key in keys:
            seen[key] = int(seen.get(key) or 0) + int(item.get(key) or 0)
        seen["suspended"] = seen.get("suspended") or item.get("suspended")
    return list(out.values())


def _queue_summary(bodies: list[Any]) -> dict[str, Any]:
    return {
        "scheduled": _sum_queues((i for b in bodies for i in b.get("scheduled", [])), ("count",)),
        "ready": _sum_queues(
            (i for b in bodies for i in b.get("ready", [])), ("count", "connections")
        ),
        "xfer": _sum_queues((i for b in bodies for i in b.get("xfer", [])), ("count",)),
    }


def _entries(bodies: list[Any]) -> list[Any]:
    """Bounce/suspend lists: one entry per id (every worker holds the same entries);
    a bounce's counts are added up."""
    out: dict[str, dict[str, Any]] = {}
    for body in bodies:
        for entry in body if isinstance(body, list) else []:
            seen = out.get(entry.get("id"))
            if seen is None:
                out[entry.get("id")] = dict(entry)
                continue
            if "bounced" in entry:
                seen["bounced"] = _add_counts(seen.get("bounced", {}), entry.get("bounced", {}))
                seen["total_bounced"] = sum(seen["bounced"].values())
    return list(out.values())


def _add_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for key, n in b.items():
        out[key] = out.get(key, 0) + int(n)
    return out


def _bounce(bodies: list[Any]) -> dict[str, Any]:
    bounced: dict[str, int] = {}
    for body in bodies:
        bounced = _add_counts(bounced, body.get("bounced", {}))
    return {
        "id": bodies[0].get("id"),
        "bounced": bounced,
        "total_bounced": sum(int(b.get("total_bounced") or 0) for b in bodies),
    }


def _sched_q(bodies: list[Any]) -> dict[str, Any]:
    first = dict(bodies[0])
    first["messages"] = [m for b in bodies for m in b.get("messages", [])]
    first["num_scheduled"] = sum(int(b.get("num_scheduled") or 0) for b in bodies)
    return first


def _xfer(bodies: list[Any]) -> dict[str, Any]:
    first = dict(bodies[0])
    if "messages" in first:
        first["messages"] = sum(int(b.get("messages") or 0) for b in bodies)
    return first


def _by_key(rows: Iterable[dict[str, Any]], key: str, add: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows with the same ``key`` as one, ``add`` fields summed (order of first sight)."""
    out: dict[Any, dict[str, Any]] = {}
    for row in rows:
        seen = out.get(row.get(key))
        if seen is None:
            out[row.get(key)] = dict(row)
            continue
        for field in add:
            if field in seen or field in row:
                seen[field] = (seen.get(field) or 0) + (row.get(field) or 0)
    return list(out.values())


def _oldest(values: Iterable[Any]) -> Any:
    found = [v for v in values if isinstance(v, int | float)]
    return max(found) if found else None


_STATE_ORDER = ("up", "starting", "shedding", "draining")  # worst last


def _state_rank(node: dict[str, Any]) -> int:
    state = node.get("state", "up")
    return _STATE_ORDER.index(state) if state in _STATE_ORDER else 0


def _status(bodies: list[Any]) -> dict[str, Any]:
    """The status page's JSON for the node: queues, connections, rates, bounces, spool and
    transfers summed over the workers; the node's state the worst of theirs; holds,
    health and warm-up (the same on every worker) from the first."""
    first: dict[str, Any] = dict(bodies[0])
    nodes: list[dict[str, Any]] = [b["node"] for b in bodies]
    worst: dict[str, Any] = max(nodes, key=_state_rank)
    node: dict[str, Any] = {**worst}
    node["workers"] = [
        {"name": "engine workers", "count": len(bodies), "detail": "this view sums them"},
        *first["node"].get("workers", []),
    ]
    first["node"] = node
    sched = [b["queues"]["scheduled"] for b in bodies]
    ready = [b["queues"]["ready"] for b in bodies]
    top = _by_key((t for s in sched for t in s.get("top", [])), "name", ("count",))
    first["queues"] = {
        "scheduled": {
            "messages": sum(s.get("messages", 0) for s in sched),
            "queues": len({t["name"] for t in top}) + max(s.get("hidden", 0) for s in sched),
            "oldest_age_seconds": _oldest(s.get("oldest_age_seconds") for s in sched),
            "top": sorted(top, key=lambda t: -t.get("count", 0))[: len(sched[0].get("top", []))],
            "hidden": max(s.get("hidden", 0) for s in sched),
        },
        "ready": {
            "messages": sum(r.get("messages", 0) for r in ready),
            "queues": max(r.get("queues", 0) for r in ready),
            "connections": sum(r.get("connections", 0) for r in ready),
            "oldest_age_seconds": _oldest(r.get("oldest_age_seconds") for r in ready),
        },
        "destinations": sorted(
            _by_key(
                (d for b in bodies for d in b["queues"].get("destinations", [])),
                "domain",
                ("count",),
            ),
            key=lambda d: -d.get("count", 0),
        ),
    }
    first["ready_queues"] = _by_key(
        (q for b in bodies for q in b.get("ready_queues", [])), "name", ("count", "connections")
    )
    first["rates"] = _by_key(
        (r for b in bodies for r in b.get("rates", [])),
        "type",
        ("last_1m", "last_5m", "per_minute_5m"),
    )
    first["bounces"] = _by_key(
        (r for b in bodies for r in b.get("bounces", [])), "classification", ("last_5m", "total")
    )
    spool = dict(first.get("spool", {}))
    spool["messages"] = sum(b.get("spool", {}).get("messages", 0) for b in bodies)
    spool["bytes"] = sum(b.get("spool", {}).get("bytes", 0) for b in bodies)
    first["spool"] = spool
    first["transfers"] = [t for b in bodies for t in b.get("transfers", [])]
    return first


def _retry_now(bodies: list[Any]) -> dict[str, Any]:
    retried: dict[str, int] = {}
    for body in bodies:
        retried = _add_counts(retried, body.get("retried", {}))
    return {"retried": retried, "total_retried": sum(retried.values())}


def merge_admin(method: str, path: str, answers: list[Answer]) -> Answer:
    """The node's answer to an admin request every worker answered.

    method, path: the request's. answers: (status, body) of each worker, the receiving
    worker's first. Any 2xx wins over refusals (a message or an entry lives in one worker,
    e.g. a 404 of the others); with none, the receiving worker's answer.
    """
    bodies = _ok(answers)
    if not bodies:
        return answers[0]
    if path.endswith("/queue-summary/v1"):
        return 200, _queue_summary(bodies)
    if path.endswith("/bounce/v1") and method == "POST":
        return 200, _bounce(bodies)
    if method == "GET" and path.endswith(("/bounce/v1", "/suspend/v1", "/suspend-ready-q/v1")):
        return 200, _entries(bodies)
    if path.endswith("/inspect-sched-q/v1"):
        return 200, _sched_q(bodies)
    if path.endswith("/ready-q-states/v1"):
        states: dict[str, Any] = {}
        for body in bodies:
            states.update(body.get("states_by_ready_queue", {}))
        return 200, {"states_by_ready_queue": states}
    if path.endswith("/xfer/v1") and method == "GET":
        return 200, [job for body in bodies for job in body]
    if path.endswith(("/xfer/v1", "/xfer/cancel/v1")):
        return 200, _xfer(bodies)
    if path.endswith("/status/v1") and method == "GET":
        return 200, _status(bodies)
    if path.endswith("/retry-now/v1"):
        return 200, _retry_now(bodies)
    return 200, bodies[0]  # suspend ids (the same on every worker), rebind {}, inspect-message


def merge_live_metrics(texts: Iterable[str]) -> list[Metric]:
    """The scrape-time gauges of every worker (Prometheus text) as one family each:
    samples with the same name and labels added up (``_MAX`` names: the largest)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            seen = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key in seen and family.name in _MAX:
                    seen[key] = max(seen[key], sample.value)
                else:
                    seen[key] = seen.get(key, 0.0) + sample.value
    out = []
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
        out.append(family)
    return out
