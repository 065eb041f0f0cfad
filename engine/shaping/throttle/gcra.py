"""Throttle arithmetic, pure: GCRA rates, connection-lease maps, local shares, key names.

Exports:
    ThrottleResult                      one GCRA verdict
    gcra(tat, now, spec, quantity)      pure GCRA step -> (verdict, new TAT)
    acquire / extend / release / expire pure lease-map steps (lease_id -> expiry)
    local_share(spec, nodes), lease_share(limit, nodes)
                                        this node's part of a shared limit while Redis is down
    message_rate_key, connection_rate_key, connection_limit_key, named_limit_key
                                        Redis key names (pure)

GCRA (generic cell rate algorithm, as KumoMTA ``crates/throttle`` and redis-cell): each
key keeps one number, the theoretical arrival time (TAT). With ``T = period / limit``
and ``burst`` events allowed back to back, a request for ``quantity`` events at ``now``
is allowed when ``max(TAT, now) + quantity*T - now <= burst*T``; the TAT then advances
by ``quantity*T``. A denied request leaves the TAT unchanged. ``RedisStore`` runs the
same arithmetic in Lua with Redis ``TIME`` (``engine/shaping/throttle/redis.py``).

Leases: a map of lease_id -> expiry per key. A connection acquires a lease with a short
ttl and extends it while it lives; a lease nobody extends frees its slot at expiry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from engine.config.throttle_spec import ThrottleSpec

__all__ = [
    "ThrottleResult",
    "gcra",
    "acquire",
    "extend",
    "release",
    "expire",
    "local_share",
    "lease_share",
    "message_rate_key",
    "connection_rate_key",
    "connection_limit_key",
    "named_limit_key",
]

# Float slack (in units of the emission interval) so accumulated TATs such as
# 0.1 + 0.1 + ... do not deny the last event of a burst by 1e-16 s.
_SLACK = 1e-6


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleResult:
    """One GCRA verdict.

    allowed: True when the events may happen now.
    retry_after: seconds until the same request would be allowed (0 when allowed;
        ``math.inf`` when ``quantity`` exceeds the burst and can never be allowed).
    remaining: events that could still be allowed back to back right now.
    reset_after: seconds until the bucket is full (idle) again.
    """

    allowed: bool
    retry_after: float
    remaining: int
    reset_after: float


def gcra(
    tat: float, now: float, spec: ThrottleSpec, quantity: int = 1
) -> tuple[ThrottleResult, float]:
    """One GCRA step.

    tat: the key's theoretical arrival time (0 or any past time for a fresh key).
    now: the current time, on the same clock as ``tat``.
    spec: the rate; ``spec.burst`` events may happen back to back.
    quantity: events requested at once (>= 1).
    Returns the verdict and the TAT to store (unchanged when denied). A clock that
    went backwards only makes the verdict stricter; values stay non-negative.
    Raises ValueError for quantity < 1.
    """
    if quantity < 1:
        raise ValueError(f"quantity must be at least 1, got {quantity}")
    interval = spec.emission_interval
    tolerance = spec.burst * interval
    base = max(tat, now)
    new_tat = base + quantity * interval
    if quantity > spec.burst:
        return _denied(base, now, interval, spec.burst, math.inf), tat
    allow_at = new_tat - tolerance
    if (allow_at - now) / interval > _SLACK:
        return _denied(base, now, interval, spec.burst, allow_at - now), tat
    remaining = math.floor((tolerance - (new_tat - now)) / interval + _SLACK)
    return ThrottleResult(
        allowed=True, retry_after=0.0, remaining=max(0, remaining), reset_after=new_tat - now
    ), new_tat


def _denied(
    base: float, now: float, interval: float, burst: int, retry_after: float
) -> ThrottleResult:
    remaining = math.floor((burst * interval - (base - now)) / interval + _SLACK)
    return ThrottleResult(
        allowed=False,
        retry_after=retry_after,
        remaining=max(0, remaining),
        reset_after=max(0.0, base - now),
    )


# --- leases (pure steps over a dict lease_id -> expiry) -----------------------------------


def expire(leases: dict[str, float], now: float) -> None:
    """Drop leases whose expiry is at or before ``now``."""
    for lease_id in [i for i, exp in leases.items() if exp <= now]:
        del leases[lease_id]


def acquire(
    leases: dict[str, float], now: float, limit: int, lease_id: str, ttl: float
) -> float | None:
    """Take a slot for ``lease_id`` until ``now + ttl`` if fewer than ``limit`` are held.

    leases: the key's lease map, updated in place (expired leases are dropped).
    limit: slots for this key. ttl: seconds the lease lives unless extended.
    Returns None when acquired (or already held: then its expiry moves to now + ttl),
    else the seconds until the earliest lease expires.
    """
    expire(leases, now)
    if lease_id in leases or len(leases) < limit:
        leases[lease_id] = now + ttl
        return None
    return min(leases.values()) - now if leases else 0.0


def extend(leases: dict[str, float], now: float, lease_id: str, ttl: float) -> bool:
    """Move a live lease's expiry to ``now + ttl``. Returns False if it expired or is unknown."""
    expire(leases, now)
    if lease_id not in leases:
        return False
    leases[lease_id] = now + ttl
    return True


def release(leases: dict[str, float], lease_id: str) -> None:
    """Free ``lease_id``'s slot (no-op when not held)."""
    leases.pop(lease_id, None)


# --- outage shares --------------------------------------------------------------------------


def local_share(spec: ThrottleSpec, nodes: int) -> ThrottleSpec:
    """This node's part of a shared rate while Redis is down: limit (and burst) // nodes, >= 1."""
    if nodes <= 1:
        return spec
    burst = None if spec.max_burst is None else max(1, spec.max_burst // nodes)
    return replace(spec, limit=max(1, spec.limit // nodes), max_burst=burst)


def lease_share(limit: int, nodes: int) -> int:
    """This node's part of a shared connection limit while Redis is down: ceil(limit / nodes)."""
    return limit if nodes <= 1 else max(1, -(-limit // nodes))


# --- key names ------------------------------------------------------------------------------


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _spec_suffix(spec: ThrottleSpec) -> str:
    return f"{spec.limit}:{spec.burst}:{_number(spec.period)}"


def message_rate_key(prefix: str, ready_queue: str, spec: ThrottleSpec) -> str:
    """``{prefix}:max_message_rate:{readyq}:{limit}:{burst}:{period}``.

    The spec suffix gives a changed spec a fresh bucket (as KumoMTA).
    """
    return f"{prefix}:max_message_rate:{ready_queue}:{_spec_suffix(spec)}"


def connection_rate_key(prefix: str, ready_queue: str, spec: ThrottleSpec) -> str:
    """``{prefix}:connection_rate:{readyq}:{limit}:{burst}:{period}``."""
    return f"{prefix}:connection_rate:{ready_queue}:{_spec_suffix(spec)}"


def connection_limit_key(prefix: str, name: str) -> str:
    """``{prefix}:connection_limit:{name}``: the lease set of a ready queue's connections."""
    return f"{prefix}:connection_limit:{name}"


def named_limit_key(prefix: str, name: str, spec: ThrottleSpec | None = None) -> str:
    """``{prefix}:limit:{name}`` for additional_* / provider limits, shared by every queue
    that names them; with a throttle ``spec`` the spec suffix is appended."""
    key = f"{prefix}:limit:{name}"
    return f"{key}:{_spec_suffix(spec)}" if spec is not None else key
