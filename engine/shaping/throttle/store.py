"""The throttle store interface: where TATs and connection leases live.

Exports:
    ThrottleStore   the async interface the gate uses (EmbeddedStore, RedisStore)
    StateCallback   called with ``degraded`` when a shared store changes mode

``ThrottleSpec.local`` specs are always enforced in this process, never in Redis.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

from engine.config.throttle_spec import ThrottleSpec
from engine.shaping.throttle.gcra import ThrottleResult

__all__ = ["ThrottleStore", "StateCallback"]

StateCallback = Callable[[bool], None]
"""Called with ``degraded`` each time a shared store enters or leaves its local fallback."""


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
