"""Prometheus metrics, declared once. Names use the ``nimbus_`` prefix.

Exports:
    Metrics       counters and histograms, plus a collector reading live gauges
                  (``registry``: everything; ``live``: only what is read at scrape time)
    GaugeReading  what a GaugeSource returns at each scrape (queue sizes, connections, ...)
    oldest_age(oldest_created, now)   pure: seconds the oldest held message has waited
    per_site(waiting)                 pure: ready-queue backlog summed per MX site

Counters are incremented where things happen; gauges (queue sizes, connections,
spool size) are read from the engine at scrape time through ``GaugeSource``, so
the hot path never updates them. ``nimbus_spool_disk_free_bytes`` and
``nimbus_spool_disk_size_bytes`` are the load-shedding sampler's last reading of the spool
filesystem (no statvfs per scrape). ``nimbus_log_hook_failing{hook}`` is 1 while a hook's
last POST failed (a ``tsa:`` hook failing: this node cannot reach that TSA).
``nimbus_asyncio_tasks`` counts the loop's live tasks at scrape time (a leak of tasks
shows as growth; ``bench/soak.py`` watches it).

For autoscaling (README "Metrics"), one scrape gives per node:
``nimbus_queued_messages``, every message accepted and not yet disposed of (scheduled,
being routed, waiting in a ready queue, or on a connection: the spool's count);
``nimbus_oldest_message_age_seconds``, now minus the reception time of the oldest of
them (0 with none); ``nimbus_site_backlog_messages{site}``, messages waiting in the
ready queues of each MX site, summed over egress sources (not those on a connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, NotRequired, TypedDict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.records import LogRecord, RecordType

__all__ = ["Metrics", "GaugeReading", "GaugeSource", "oldest_age", "per_site"]


class GaugeReading(TypedDict):
    """One scrape's live values: counts by queue/listener, spool size, log-hook stats."""

    scheduled: dict[str, int]
    ready: dict[str, int]
    connections_in: dict[str, int]
    connections_out: dict[str, int]
    spool_bytes: int
    spool_messages: int
    spool_disk_free_bytes: NotRequired[int]
    spool_disk_size_bytes: NotRequired[int]
    log_hooks: NotRequired[dict[str, dict[str, int]]]
    log_records_dropped: NotRequired[int]
    queued: NotRequired[int]
    oldest_message_age: NotRequired[float]
    site_backlog: NotRequired[dict[str, int]]
    xfer_pending: NotRequired[int]
    suppression_refused: NotRequired[dict[str, int]]
    suppression_recorded: NotRequired[dict[str, int]]
    warmup: NotRequired[list[dict[str, Any]]]
    warmup_deferred: NotRequired[int]


GaugeSource = Callable[[], GaugeReading]


def oldest_age(oldest_created: float | None, now: float) -> float:
    """Seconds since the oldest held message was received.

    oldest_created: its reception time (unix seconds), None when the node holds none.
    now: the current time. Returns 0 with none, and never less (a clock stepped back).
    """
    return 0.0 if oldest_created is None else max(0.0, now - oldest_created)


def per_site(waiting: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Messages waiting per MX site.

    waiting: (site, messages waiting) of each ready queue; several queues share a site
    (one per egress source, and MTA-STS domains' own queues). Every site named is in
    the answer, with 0 when its queues hold nothing.
    """
    out: dict[str, int] = {}
    for site, n in waiting:
        out[site] = out.get(site, 0) + n
    return out


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
        yield from _disk_gauges(s)
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
        failing = GaugeMetricFamily(
            "nimbus_log_hook_failing",
            "1 while the hook's last publish attempt failed (a tsa: hook: that TSA is "
            "unreachable from this node), by hook",
            labels=["hook"],
        )
        for hook, stats in s.get("log_hooks", {}).items():
            pending.add_metric([hook], stats.get("pending", 0))
            sent.add_metric([hook], stats.get("sent", 0))
            failed.add_metric([hook], stats.get("failed_attempts", 0))
            failing.add_metric([hook], stats.get("failing", 0))
        yield pending
        yield sent
        yield failed
        yield failing
        yield CounterMetricFamily(
            "nimbus_log_records_dropped",
            "Log records that could not be written to the log directory (disk full, I/O error)",
            value=float(s.get("log_records_dropped", 0)),
        )
        yield from _autoscaling(s)
        yield from _warmup_metrics(s.get("warmup", []), s.get("warmup_deferred", 0))


def _autoscaling(s: GaugeReading) -> Iterable[Metric]:
    """The gauges an autoscaler reads (see the module docstring)."""
    yield GaugeMetricFamily(
        "nimbus_queued_messages",
        "Messages accepted and not yet delivered, bounced or expired (scheduled, routing, "
        "ready or in flight)",
        value=float(s.get("queued", 0)),
    )
    yield GaugeMetricFamily(
        "nimbus_oldest_message_age_seconds",
        "Seconds since the oldest queued message was received (0 when none is queued)",
        value=float(s.get("oldest_message_age", 0.0)),
    )
    backlog = GaugeMetricFamily(
        "nimbus_site_backlog_messages",
        "Messages waiting in the ready queues of an MX site, over all egress sources",
        labels=["site"],
    )
    for site, n in s.get("site_backlog", {}).items():
        backlog.add_metric([site], n)
    yield backlog
    yield GaugeMetricFamily(
        "nimbus_xfer_pending_messages",
        "Messages in this node's xfer queues, not yet taken by their target node",
        value=float(s.get("xfer_pending", 0)),
    )
    refused = CounterMetricFamily(
        "nimbus_suppression_refused",
        "Messages refused because the recipient is on the suppression list, by entry reason",
        labels=["reason"],
    )
    for reason, n in s.get("suppression_refused", {}).items():
        refused.add_metric([reason], n)
    yield refused
    recorded = CounterMetricFamily(
        "nimbus_suppression_recorded",
        "Suppression entries this node made from its log records (hard bounces, complaints)",
        labels=["reason"],
    )
    for reason, n in s.get("suppression_recorded", {}).items():
        recorded.add_metric([reason], n)
    yield recorded


def _disk_gauges(s: GaugeReading) -> Iterable[Metric]:
    """The spool filesystem's free and total bytes; no sample until the sampler has run."""
    free = GaugeMetricFamily(
        "nimbus_spool_disk_free_bytes",
        "Bytes free (to the node) on the spool filesystem, at the last load-shedding sample",
    )
    size = GaugeMetricFamily(
        "nimbus_spool_disk_size_bytes", "Size in bytes of the spool filesystem"
    )
    if "spool_disk_free_bytes" in s:
        free.add_metric([], float(s["spool_disk_free_bytes"]))
    if "spool_disk_size_bytes" in s:
        size.add_metric([], float(s["spool_disk_size_bytes"]))
    yield free
    yield size


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
        # The gauges read from this process at scrape time, alone: with several workers a
        # scrape sums every worker's (engine/workers/fanout.py); the rest comes from
        # prometheus-client's multiprocess files.
        self.live = CollectorRegistry()
        r = self.registry
        loop_gauges = _LoopGauges()
        r.register(loop_gauges)
        self.live.register(loop_gauges)
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
            multiprocess_mode="livemax",  # with workers: 1 while any live worker is
        )
        self.shedding = Gauge(
            "nimbus_shedding",
            "1 while the node sheds load (readiness 503, new SMTP sessions 421), by reason",
            ["reason"],
            registry=r,
            multiprocess_mode="livemax",
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
        # Known label values start at 0, so a dashboard panel or an alert on them has a
        # series (and rate() sees the first increase) before the first event.
        for listener in ("esmtp_listener", "http_listener"):
            self.received.labels(listener)
            self.rejected.labels(listener)
        for result in ("ok", "error"):
            self.policy_reloads.labels(result)
        self._by_type = {
            RecordType.DELIVERY: self.delivered,
            RecordType.TRANSIENT_FAILURE: self.transient,
            RecordType.BOUNCE: self.bounced,
            RecordType.EXPIRATION: self.expired,
        }

    def to_json(self) -> dict[str, Any]:
        """Every metric as JSON (``GET /metrics.json``, ``nimbus top``): name ->
        ``{"type", "help", "samples": [{"name", "labels", "value"}]}``, read now."""
        out: dict[str, Any] = {}
        for family in self.registry.collect():
            out[family.name] = {
                "type": family.type,
                "help": family.documentation,
                "samples": [
                    {"name": s.name, "labels": dict(s.labels), "value": s.value}
                    for s in family.samples
                    if s.value == s.value  # NaN is no JSON
                ],
            }
        return out

    def attach_gauges(self, source: GaugeSource) -> None:
        gauges = _LiveGauges(source)
        self.registry.register(gauges)
        self.live.register(gauges)

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
