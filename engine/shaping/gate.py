"""The delivery gate: may a ready queue open a connection, or send a message, right now?

Exports:
    Ticket                    the connection leases held by one open connection
    connection_limits(...)    pure: which lease sets bound a path's connections
    message_rates(...)        pure: which GCRA buckets a path's messages draw from
    Gate                      open / keep / close a connection; message_wait;
                              ``warmup`` (WarmupCounters, engine/shaping/warmup.py)

Limits come from the egress path config (shaping.toml via get_egress_path_config, plus
TSA overrides): ``connection_limit`` and every ``additional_connection_limits`` entry
(provider limits arrive as ``shaping-provider-<name>-<source>-limit``) are lease sets;
``max_connection_rate`` is checked per connection, ``max_message_rate`` and every
``additional_message_rate_throttles`` entry per message; ``source_selection_rate`` and
``additional_source_selection_rates`` when routing picks a source. Keys are shared through the
throttle store (Redis when configured), so limits hold cluster-wide; a ``local:`` spec or
``connection_limit_local`` keeps that limit on this node. Callers wait for the returned
number of seconds (or delay the message) — nothing here sleeps or spins.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from engine.config.throttle_spec import ThrottleSpec
from engine.policy.egress import EgressPathConfig
from engine.shaping.throttle.embedded import EmbeddedStore
from engine.shaping.throttle.gcra import (
    connection_limit_key,
    connection_rate_key,
    message_rate_key,
    named_limit_key,
)
from engine.shaping.throttle.store import ThrottleStore
from engine.shaping.warmup import WarmupCounters

__all__ = ["Ticket", "Gate", "connection_limits", "message_rates", "selection_rates", "LEASE_TTL"]

LEASE_TTL = 60.0
"""Connection leases live this long unless extended (each message extends them), so a
killed node's connections stop counting within a minute (KumoMTA's linger ~28 min)."""


@dataclass(frozen=True, slots=True)
class LimitKey:
    key: str
    limit: int
    local: bool


@dataclass(frozen=True, slots=True)
class RateKey:
    key: str
    spec: ThrottleSpec


def connection_limits(path: EgressPathConfig, ready_queue: str, prefix: str) -> list[LimitKey]:
    """The lease sets a new connection of ``ready_queue`` must fit in (pure)."""
    out = [
        LimitKey(
            connection_limit_key(prefix, ready_queue),
            path.connection_limit,
            path.connection_limit_local,
        )
    ]
    for name, spec in sorted(path.additional_connection_limits.items()):
        out.append(LimitKey(named_limit_key(prefix, name), spec.limit, spec.local))
    return out


def message_rates(path: EgressPathConfig, ready_queue: str, prefix: str) -> list[RateKey]:
    """The GCRA buckets each message of ``ready_queue`` draws one token from (pure);
    smallest rate first, so a throttled message usually spends no other token."""
    out = []
    if path.max_message_rate is not None:
        out.append(
            RateKey(
                message_rate_key(prefix, ready_queue, path.max_message_rate), path.max_message_rate
            )
        )
    for name, spec in sorted(path.additional_message_rate_throttles.items()):
        out.append(RateKey(named_limit_key(prefix, name, spec), spec))
    out.sort(key=lambda r: r.spec.rate_per_second)
    return out


def selection_rates(
    path: EgressPathConfig, pool: str, source: str, site: str, prefix: str
) -> list[RateKey]:
    """The buckets choosing ``source`` for this path draws from (pure): KumoMTA's
    ``source_selection_rate`` keyed per pool, source and site, and each named
    ``additional_source_selection_rates`` entry (provider rates arrive named)."""
    out = []
    spec = path.source_selection_rate
    if spec is not None:
        out.append(
            RateKey(
                named_limit_key(prefix, f"source_selection_rate:{pool}:{source}:{site}", spec), spec
            )
        )
    for name, named in sorted(path.additional_source_selection_rates.items()):
        out.append(RateKey(named_limit_key(prefix, name, named), named))
    return out


@dataclass
class Ticket:
    """Leases held by one connection: (store, key) pairs under one lease id."""

    lease_id: str
    held: list[tuple[ThrottleStore, str]] = field(default_factory=list)
    limits: list[int] = field(default_factory=list)  # the limit of each held lease set


class Gate:
    """shared: the node's throttle store (Redis or embedded). prefix: key prefix."""

    def __init__(self, shared: ThrottleStore, prefix: str) -> None:
        self._shared = shared
        self._local = EmbeddedStore()
        self._prefix = prefix
        self.warmup = WarmupCounters(shared, prefix)

    @property
    def store(self) -> ThrottleStore:
        return self._shared

    def _store(self, local: bool) -> ThrottleStore:
        return self._local if local else self._shared

    async def open(self, path: EgressPathConfig, ready_queue: str) -> Ticket | float:
        """Leases (and a connection-rate token) for a new connection, or seconds to wait."""
        ticket = Ticket(lease_id=uuid.uuid4().hex)
        for limit in connection_limits(path, ready_queue, self._prefix):
            store = self._store(limit.local)
            wait = await store.acquire_lease(limit.key, limit.limit, ticket.lease_id, LEASE_TTL)
            if wait is not None:
                await self.close(ticket)
                return max(wait, 0.05)
            ticket.held.append((store, limit.key))
            ticket.limits.append(limit.limit)
        spec = path.max_connection_rate
        if spec is not None:
            result = await self._store(spec.local).throttle(
                connection_rate_key(self._prefix, ready_queue, spec), spec
            )
            if not result.allowed:
                await self.close(ticket)
                return max(result.retry_after, 0.05)
        return ticket

    async def keep(self, ticket: Ticket) -> bool:
        """Extend the leases before the next message; False when one was lost (close)."""
        ok = True
        for store, key in ticket.held:
            ok &= await store.extend_lease(key, ticket.lease_id, LEASE_TTL)
        return ok

    async def close(self, ticket: Ticket) -> None:
        for store, key in ticket.held:
            await store.release_lease(key, ticket.lease_id)
        ticket.held.clear()
        ticket.limits.clear()

    async def contended(self, ticket: Ticket) -> bool:
        """Is a lease set this connection holds full? Then an idle connection should give
        its lease back: another ready queue (a provider limit), another worker of the node
        or another node may be waiting for it, and nothing here needs it now."""
        for (store, key), limit in zip(ticket.held, ticket.limits, strict=True):
            if await store.count_leases(key) >= limit:
                return True
        return False

    async def message_wait(self, path: EgressPathConfig, ready_queue: str) -> float | None:
        """None when the next message may go now, else seconds until it may."""
        for rate in message_rates(path, ready_queue, self._prefix):
            result = await self._store(rate.spec.local).throttle(rate.key, rate.spec)
            if not result.allowed:
                return max(result.retry_after, 0.001)
        return None

    async def selection_wait(
        self, path: EgressPathConfig, pool: str, source: str, site: str
    ) -> float | None:
        """``source_selection_rate`` (and additional/provider selection rates): None when
        ``source`` may be chosen for this path now, else seconds until it may."""
        for rate in selection_rates(path, pool, source, site, self._prefix):
            result = await self._store(rate.spec.local).throttle(rate.key, rate.spec)
            if not result.allowed:
                return max(result.retry_after, 0.001)
        return None

    async def aclose(self) -> None:
        await self._shared.close()
        await self._local.close()
