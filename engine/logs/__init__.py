"""Logs: the mail log and everything that reports what the node did.

Modules:
    writer       LogRecords (KumoMTA's JSON shape) to rotating NDJSON segments + subscribers
    hooks/       publishing records to the TSA and webhooks (durable queue, batches, backoff)
    metrics      Prometheus metrics, declared once
    rates        records per type over the last 1 and 5 minutes (a bounded per-second ring)
    diagnostics  the node's own diagnostic lines (JSON on stderr)
"""
