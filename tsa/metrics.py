"""The TSA's Prometheus metrics, declared once. Names use the ``nimbus_tsa_`` prefix.

Exports:
    TsaMetrics    counters in their own registry (served on the TSA's /metrics)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

__all__ = ["TsaMetrics"]


class TsaMetrics:
    """All of one TSA replica's metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.records = Counter(
            "nimbus_tsa_records",
            "Log records received, by outcome (matched, unmatched, "
            "ignored type, duplicate from another replica, invalid)",
            ["outcome"],
            registry=r,
        )
        self.rule_matches = Counter(
            "nimbus_tsa_rule_matches",
            "Automation rules matched by a record, by trigger",
            ["trigger"],
            registry=r,
        )
        self.actions = Counter(
            "nimbus_tsa_actions",
            "Overlay entries triggered (new or re-triggered), by kind",
            ["kind"],
            registry=r,
        )
        self.redis_errors = Counter(
            "nimbus_tsa_redis_errors", "Redis operations that failed or timed out", registry=r
        )
        self.shaping_reloads = Counter(
            "nimbus_tsa_shaping_reloads",
            "shaping.toml (re)loads, by result (ok, error)",
            ["result"],
            registry=r,
        )
