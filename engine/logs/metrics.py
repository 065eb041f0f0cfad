"""Prometheus metrics, declared once. Names use the ``nimbus_`` prefix.

Exports:
    Metrics       counters and histograms, plus a collector reading live gauges
    GaugeReading  what a GaugeSource returns at each scrape (queue sizes, connections, ...)

Counters are incremented where things happen; gauges (queue sizes, connections,
spool size) are read from the engine at scrape time through ``GaugeSource``, so
the hot path never updates them. ``nimbus_asyncio_tasks`` counts the loop's live
tasks at scrape time (a leak of tasks shows as growth; ``bench/soak.py`` watches it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, NotRequired, TypedDict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.records import LogRecord, RecordType

__all__ = ["Metrics", "GaugeReading", "GaugeSource"]


class GaugeReading(TypedDict):
    """One scrape's live values: counts by queue/listener, spool size, log-hook stats."""

    scheduled: dict[str, int]
    ready: dict[str, int]
    connections_in: dict[str, int]
    connections_out: dict[str, int]
    spool_bytes: int
    spool_messages: int
    log_hooks: NotRequired[dict[str, dict[str, int]]]
    log_records_dropped: NotRequired[int]
    warmup: NotRequired[list[dict[str, Any]]]
    warmup_deferred: NotRequired[int]


GaugeSource = Callable[[], GaugeReading]


class _LiveGauges(Collector):
    def __init__(self, source: GaugeSource) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        s = self._source()
        sched = GaugeMetricFamily(
            "nimbus_scheduled_messages", "Messages waiting in scheduled queues", labels=["queue"]
        )
        for q, n in s["scheduled"].items():
            sched.add_metric([q], n)
        yield sched
        ready = GaugeMetricFamily(
            "nimbus_ready_messages", "Messages waiting in ready queues", labels=["queue"]
        )
        for q, n in s["ready"].items():
            ready.add_metric([q], n)
        yield ready
        conns = GaugeMetricFamily(
            "nimbus_connections_open",
            "Open connections by direction and service",
            labels=["direction", "service"],
        )
        for listener, n in s["connections_in"].items():
            conns.add_metric(["inbound", listener], n)
        for q, n in s["connections_out"].items():
            conns.add_metric(["outbound", q], n)
        yield conns
        yield GaugeMetricFamily(
            "nimbus_spool_bytes", "Bytes used by the spool", value=float(s["spool_bytes"])
        )
        yield GaugeMetricFamily(
            "nimbus_spool_messages",
            "Messages in the spool",
            value=float(s["spool_messages"]),
        )
        pending = GaugeMetricFamily(
            "nimbus_log_hook_pending_records",
            "Log records waiting to be published, by hook",
            labels=["hook"],
        )
        sent = CounterMetricFamily(
            "nimbus_log_hook_sent_records", "Log records published, by hook", labels=["hook"]
        )
        failed = CounterMetricFamily(
            "nimbus_log_hook_failed_attempts", "Failed publish attempts, by hook", labels=["hook"]
        )
        for hook, stats in s.get("log_hooks", {}).items():
            pending.add_metric([hook], stats.get("pending", 0))
            sent.add_metric([hook], stats.get("sent", 0))
            failed.add_metric([hook], stats.get("failed_attempts", 0))
        yield pending
        yield sent
        yield failed
        yield CounterMetricFamily(
            "nimbus_log_records_dropped",
            "Log records that could not be written to the log directory (disk full, I/O error)",
            value=float(s.get("log_records_dropped", 0)),
        )
        yield from _warmup_metrics(s.get("warmup", []), s.get("warmup_deferred", 0))


def _warmup_metrics(sources: list[dict[str, Any]], deferred: int) -> Iterable[Metric]:
    """IP warm-up: the status of each warming source (``engine/shaping/warmup.py``)."""
    day = GaugeMetricFamily(
        "nimbus_warmup_day",
        "Day of the warm-up schedule of each source (1 = start date; 0 or less before it)",
        labels=["source"],
    )
    used = GaugeMetricFamily(
        "nimbus_warmup_used",
        "Messages counted in the current warm-up window (cluster-wide, as last seen here)",
        labels=["source", "provider"],
    )
    allowed = GaugeMetricFamily(
        "nimbus_warmup_allowed",
        "Messages allowed in the current warm-up window (absent: no limit)",
        labels=["source", "provider"],
    )
    overflow = CounterMetricFamily(
        "nimbus_warmup_overflow",
        "Messages a warming source turned away (window used up) to the pool's next source",
        labels=["source", "provider"],
    )
    for source in sources:
        day.add_metric([source["source"]], source["day"])
        for c in source["counters"]:
            labels = [source["source"], c["provider"] or "*"]
            used.add_metric(labels, c["used"])
            if c["allowed"] is not None:
                allowed.add_metric(labels, c["allowed"])
            overflow.add_metric(labels, c["overflow"])
    yield day
    yield used
    yield allowed
    yield overflow
    yield CounterMetricFamily(
        "nimbus_warmup_deferred",
        "Messages that waited for the next warm-up window: no source of their pool had room",
        value=float(deferred),
    )


class _LoopGauges(Collector):
    """Gauges of the event loop the scrape runs on (/metrics is served on it)."""

    def collect(self) -> Iterable[Metric]:
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # scraped with no running loop: nothing to report
            return
        yield GaugeMetricFamily(
            "nimbus_asyncio_tasks", "Live asyncio tasks on the node's loop", value=float(tasks)
        )


class Metrics:
    """All of a node's metrics in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(_LoopGauges())
        self.received = Counter(
            "nimbus_messages_received", "Messages accepted into the spool", ["listener"], registry=r
        )
        self.rejected = Counter(
            "nimbus_messages_rejected",
            "Messages or recipients refused at reception",
            ["listener"],
            registry=r,
        )
        self.delivered = Counter(
            "nimbus_messages_delivered", "Messages delivered", ["queue"], registry=r
        )
        self.transient = Counter(
            "nimbus_messages_transient_failures",
            "Delivery attempts that failed temporarily",
            ["queue"],
            registry=r,
        )
        self.bounced = Counter(
            "nimbus_messages_bounced", "Messages bounced permanently", ["queue"], registry=r
        )
        self.expired = Counter(
            "nimbus_messages_expired", "Messages expired past max_age", ["queue"], registry=r
        )
        self.connections = Counter(
            "nimbus_smtp_connections", "SMTP sessions accepted", ["listener"], registry=r
        )
        self.spool_commits = Counter(
            "nimbus_spool_commits", "Spool group commits (fsyncs)", registry=r
        )
        self.spool_commit_ops = Counter(
            "nimbus_spool_commit_requests", "Write requests carried by spool commits", registry=r
        )
        self.redis_degraded = Gauge(
            "nimbus_redis_degraded",
            "1 while Redis is unreachable and limits are enforced locally",
            registry=r,
        )
        self.shedding = Gauge(
            "nimbus_shedding",
            "1 while the node sheds load (readiness 503, new SMTP sessions 421), by reason",
            ["reason"],
            registry=r,
        )
        self.redis_outages = Counter(
            "nimbus_redis_outages", "Redis outages (fallback to local limits)", registry=r
        )
        self.xfer = Counter(
            "nimbus_xfer_messages",
            "Messages moved between nodes, by result: sent, duplicate (the peer had it), "
            "failed (refused), returned (back to its queue), received, received_duplicate",
            ["result"],
            registry=r,
        )
        self.policy_reloads = Counter(
            "nimbus_policy_reloads", "Policy reloads by result", ["result"], registry=r
        )
        self.policy_latency = Histogram(
            "nimbus_policy_event_duration_seconds",
            "Time spent in policy event handlers",
            ["event"],
            registry=r,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
        )
        self.delivery_latency = Histogram(
            "nimbus_delivery_duration_seconds",
            "Reception to final delivery",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 3600, 86400),
        )
        self._by_type = {
            RecordType.DELIVERY: self.delivered,
            RecordType.TRANSIENT_FAILURE: self.transient,
            RecordType.BOUNCE: self.bounced,
            RecordType.EXPIRATION: self.expired,
        }

    def attach_gauges(self, source: GaugeSource) -> None:
        self.registry.register(_LiveGauges(source))

    def count_record(self, record: LogRecord) -> None:
        """Count a disposition from its log record (the single source of truth)."""
        if record.type == RecordType.RECEPTION:
            self.received.labels(_listener(record)).inc()
        elif record.type == RecordType.REJECTION:
            self.rejected.labels(_listener(record)).inc()
        else:
            counter = self._by_type.get(record.type)
            if counter is not None:
                counter.labels(record.site or record.queue).inc()
            if record.type == RecordType.DELIVERY:
                self.delivery_latency.observe(max(0.0, record.timestamp - record.created))

    def on_commit(self, ops: int) -> None:
        self.spool_commits.inc()
        self.spool_commit_ops.inc(ops)

    def on_policy_dispatch(self, event: str, seconds: float) -> None:
        self.policy_latency.labels(event).observe(seconds)


def _listener(record: LogRecord) -> str:
    return "http_listener" if record.reception_protocol == "HTTP" else "esmtp_listener"
