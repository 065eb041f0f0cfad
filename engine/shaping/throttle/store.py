"""The throttle store interface: where TATs and connection leases live.

Exports:
    ThrottleStore   the async interface the gate uses (EmbeddedStore, RedisStore)
    WindowCount     one verdict of a fixed-window counter (warm-up allowances)
    StateCallback   called with ``degraded`` when a shared store changes mode

``ThrottleSpec.local`` specs are always enforced in this process, never in Redis.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

from engine.config.throttle_spec import ThrottleSpec
from engine.shaping.throttle.gcra import ThrottleResult

__all__ = ["ThrottleStore", "StateCallback", "WindowCount"]

StateCallback = Callable[[bool], None]
"""Called with ``degraded`` each time a shared store enters or leaves its local fallback."""


@dataclass(frozen=True, slots=True)
class WindowCount:
    """allowed: the event was counted (the window had room). used: the window's count
    after this call (the cluster-wide count with a shared store)."""

    allowed: bool
    used: int


class ThrottleStore(abc.ABC):
    """Where throttle TATs and connection leases live (this node, or Redis for the cluster)."""

    @abc.abstractmethod
    async def throttle(self, key: str, spec: ThrottleSpec, quantity: int = 1) -> ThrottleResult:
        """Apply one GCRA step to ``key`` (see ``gcra``)."""

    @abc.abstractmethod
    async def acquire_lease(self, key: str, limit: int, lease_id: str, ttl: float) -> float | None:
        """Take a slot of ``key`` for ``ttl`` seconds. None = acquired, else seconds until
        a slot may free."""

    @abc.abstractmethod
    async def extend_lease(self, key: str, lease_id: str, ttl: float) -> bool:
        """Keep a lease for ``ttl`` more seconds. False: it was lost (close the connection)."""

    @abc.abstractmethod
    async def release_lease(self, key: str, lease_id: str) -> None:
        """Free a lease's slot."""

    @abc.abstractmethod
    async def count_leases(self, key: str) -> int:
        """Live leases of ``key``."""

    @abc.abstractmethod
    async def count_window(self, key: str, limit: int, expires_at: float) -> WindowCount:
        """Add one to the fixed-window counter ``key`` if it is below ``limit`` (atomic).

        expires_at: unix seconds after which the counter may be forgotten (the window's
        end plus a margin); counters survive a restart of the node (Redis, or the
        embedded store's file)."""

    @abc.abstractmethod
    async def window_count(self, key: str) -> int:
        """The current count of ``key`` (0 when unknown or expired)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    @property
    @abc.abstractmethod
    def shared(self) -> bool:
        """True when limits are enforced across the cluster (Redis healthy)."""

    @property
    @abc.abstractmethod
    def degraded(self) -> bool:
        """True while a shared store enforces local shares because Redis is down."""
