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
