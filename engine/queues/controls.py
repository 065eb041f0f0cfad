"""Delivery controls: what operators and the TSA say about a queue right now.

Exports:
    Hold          a suspension's reason and end time
    Controls      bounce(queue) / suspended(queue) / ready_suspended(ready) / path_overrides

One place the delivery path asks "is this queue bounced, suspended, or re-configured?",
combining the admin API's entries (``engine/admin/state.py``: this node, set by operators) with
the TSA overlay (``engine/shaping/overlay.py``: cluster-wide, fed from Redis). Both expire by
themselves; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from engine.queues.naming import QueueName
from engine.shaping.overlay import Overlay

__all__ = ["Hold", "Controls", "AdminHolds"]


class HeldEntry(Protocol):
    """An admin suspension as Controls reads it."""

    @property
    def reason(self) -> str: ...
    @property
    def expires(self) -> float: ...


class HeldBounce(Protocol):
    """An admin bounce as Controls reads it."""

    @property
    def id(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def suppress_logging(self) -> bool: ...


class AdminHolds(Protocol):
    """This node's admin entries (``engine.admin.state.AdminState``)."""

    def bounce_for(self, queue_name: str, now: float) -> HeldBounce | None: ...
    def note_bounced(self, id: str, queue_name: str, count: int = 1) -> None: ...
    def suspension_for(self, queue_name: str, now: float) -> HeldEntry | None: ...
    def ready_suspension_for(self, ready_queue_name: str, now: float) -> HeldEntry | None: ...


@dataclass(frozen=True, slots=True)
class Hold:
    """A reason to hold mail back, and until when (unix seconds)."""

    reason: str
    expires: float
    origin: str  # "admin" or "tsa"


def _parts(queue: str) -> tuple[str, str | None, str | None]:
    try:
        q = QueueName.parse(queue)
    except ValueError:
        return queue, None, None
    return q.domain, q.tenant, q.campaign


class Controls:
    """admin: this node's admin entries (None: no admin API). overlay: the TSA overlay, or
    None without a TSA."""

    def __init__(self, admin: AdminHolds | None = None, overlay: Overlay | None = None) -> None:
        self.admin = admin
        self.overlay = overlay

    def bounce(self, queue: str, now: float) -> tuple[str, bool] | None:
        """(reason, log it?) when a live bounce covers this scheduled queue."""
        entry = self.admin.bounce_for(queue, now) if self.admin is not None else None
        if entry is not None and self.admin is not None:
            self.admin.note_bounced(entry.id, queue)
            return entry.reason, not entry.suppress_logging
        if self.overlay is not None:
            rule = self.overlay.bounce_rule(*_parts(queue), now)
            if rule is not None:
                return rule.reason, True
        return None

    def suspended(self, queue: str, now: float) -> Hold | None:
        """A live suspension of this scheduled queue (admin, or TSA tenant/campaign)."""
        entry = self.admin.suspension_for(queue, now) if self.admin is not None else None
        if entry is not None:
            return Hold(entry.reason, entry.expires, "admin")
        if self.overlay is not None:
            found = self.overlay.sched_suspension(*_parts(queue), now)
            if found is not None:
                return Hold(found.reason, found.expires, "tsa")
        return None

    def ready_suspended(self, ready_queue: str, source: str, site: str, now: float) -> Hold | None:
        """A live suspension of this ready queue (admin by name, TSA by source and site)."""
        entry = (
            self.admin.ready_suspension_for(ready_queue, now) if self.admin is not None else None
        )
        if entry is not None:
            return Hold(entry.reason, entry.expires, "admin")
        if self.overlay is not None:
            found = self.overlay.ready_suspension(source, site, now)
            if found is not None:
                return Hold(found.reason, found.expires, "tsa")
        return None

    def path_overrides(self, domain: str, site: str, source: str, now: float) -> dict[str, Any]:
        """TSA SetConfig values for this path (parsed egress options), or {}."""
        if self.overlay is None:
            return {}
        return dict(self.overlay.config_overrides(domain, site, source, now))
