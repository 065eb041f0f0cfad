"""Admin entry records and the pure decision of which scheduled queues an entry selects.

Exports:
    BounceEntry, SuspendEntry, ReadyQSuspendEntry, Criteria   frozen records
    matches_queue(entry, queue_name) -> bool                  pure criteria match
    is_live(entry, now) -> bool                               not yet expired
    Entry                                                     TypeVar over the entry kinds

An entry with **no criteria matches every queue**, as in KumoMTA; ``queue_names``,
when given, is an exact list and takes precedence over the other criteria.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from engine.queues.naming import QueueName

__all__ = [
    "BounceEntry",
    "SuspendEntry",
    "ReadyQSuspendEntry",
    "Criteria",
    "matches_queue",
    "is_live",
    "Entry",
]


# -- records -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Criteria:
    """Which scheduled queues an action applies to; all None and no names: every queue."""

    domain: str | None = None
    routing_domain: str | None = None
    tenant: str | None = None
    campaign: str | None = None
    queue_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BounceEntry:
    """Bounce matching messages now, and matching new mail until ``expires`` (unix s)."""

    id: str
    reason: str
    expires: float
    created: float
    domain: str | None = None
    routing_domain: str | None = None
    tenant: str | None = None
    campaign: str | None = None
    queue_names: tuple[str, ...] = ()
    suppress_logging: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SuspendEntry:
    """Hold matching scheduled queues (no delivery attempts) until ``expires``."""

    id: str
    reason: str
    expires: float
    created: float = 0.0
    domain: str | None = None
    tenant: str | None = None
    campaign: str | None = None
    queue_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadyQSuspendEntry:
    """Open no new connections for ready queue ``name`` until ``expires``."""

    id: str
    name: str
    reason: str
    expires: float
    created: float = 0.0


Entry = TypeVar("Entry", BounceEntry, SuspendEntry, ReadyQSuspendEntry)


# -- pure decisions ----------------------------------------------------------------


def matches_queue(entry: Criteria | BounceEntry | SuspendEntry, queue_name: str) -> bool:
    """Whether ``entry``'s criteria select scheduled queue ``queue_name``.

    ``queue_names``, when given, is an exact list and wins over the other criteria.
    Otherwise each given criterion must equal that part of the name (domains
    compare case-insensitively); none given selects every queue, as KumoMTA.
    A name that doesn't parse (a policy's ``queue`` meta) matches only by name
    or through an everything entry.
    """
    if entry.queue_names:
        return queue_name in entry.queue_names
    domain = entry.domain
    routing = getattr(entry, "routing_domain", None)
    if domain is None and routing is None and entry.tenant is None and entry.campaign is None:
        return True
    try:
        q = QueueName.parse(queue_name)
    except ValueError:
        return False
    return (
        (domain is None or domain.lower() == q.domain.lower())
        and (routing is None or routing.lower() == (q.routing_domain or "").lower())
        and (entry.tenant is None or entry.tenant == q.tenant)
        and (entry.campaign is None or entry.campaign == q.campaign)
    )


def is_live(entry: BounceEntry | SuspendEntry | ReadyQSuspendEntry, now: float) -> bool:
    """Whether ``entry`` has not expired at ``now``."""
    return entry.expires > now
