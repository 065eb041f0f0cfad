"""Queue naming: scheduled queues and ready queues (KumoMTA docs/reference/queues.md).

Exports:
    QueueName            parsed ``[campaign:][tenant@]domain[!routing_domain]``
    scheduled_queue_name(recipient, meta) -> str
    ready_queue_name(source, site, proto) -> str

Pure functions; tested by table in tests/unit/test_queue_name.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.records import Json

__all__ = ["QueueName", "scheduled_queue_name", "ready_queue_name", "NULL_QUEUE"]

NULL_QUEUE = "null"
"""A message assigned to this queue at reception is discarded (and counted as accepted)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueName:
    """The parts of a scheduled queue name."""

    domain: str
    tenant: str | None = None
    campaign: str | None = None
    routing_domain: str | None = None

    def __str__(self) -> str:
        name = self.domain
        if self.tenant is not None or self.campaign is not None:
            name = f"{self.tenant or ''}@{name}"
        if self.campaign is not None:
            name = f"{self.campaign}:{name}"
        if self.routing_domain:
            name = f"{name}!{self.routing_domain}"
        return name

    @property
    def destination(self) -> str:
        """The domain whose MX records carry this queue's mail."""
        return self.routing_domain or self.domain

    @classmethod
    def parse(cls, name: str) -> QueueName:
        """Split a queue name into its parts; the inverse of ``str()``.

        A campaign runs up to the first ``:`` and a tenant up to the last ``@``
        (domains contain neither). Raises ValueError for an empty domain.
        """
        rest, _, routing = name.partition("!")
        campaign = tenant = None
        if "@" in rest:
            left, _, domain = rest.rpartition("@")
            if ":" in left:
                campaign, _, tenant_part = left.partition(":")
                tenant = tenant_part or None
            else:
                tenant = left or None
        else:
            domain = rest
        if not domain:
            raise ValueError(f"queue name {name!r} has no domain")
        return cls(domain=domain, tenant=tenant, campaign=campaign, routing_domain=routing or None)


def scheduled_queue_name(recipient: str, meta: Mapping[str, Json]) -> str:
    """The scheduled queue a message belongs in.

    recipient: the envelope recipient; its domain is lowercased.
    meta: the message metadata. ``queue`` overrides everything; otherwise
        ``tenant``, ``campaign`` and ``routing_domain`` shape the name.
    """
    explicit = meta.get("queue")
    if explicit:
        return str(explicit)
    domain = recipient.rpartition("@")[2].lower()
    return str(
        QueueName(
            domain=domain,
            tenant=_opt(meta.get("tenant")),
            campaign=_opt(meta.get("campaign")),
            routing_domain=_opt(meta.get("routing_domain")),
        )
    )


def ready_queue_name(source: str, site: str, proto: str = "smtp_client") -> str:
    """``{egress_source}->{site_name}@{proto}``, as KumoMTA's compute_queue_name."""
    return f"{source}->{site}@{proto}"


def _opt(value: Any) -> str | None:
    return None if value in (None, "") else str(value)
