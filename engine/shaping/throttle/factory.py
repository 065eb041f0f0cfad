"""Choosing the node's throttle store from its settings.

Exports:
    make_store(redis, cluster)   EmbeddedStore, or RedisStore when a url is configured
"""

from __future__ import annotations

from engine.config.settings import ClusterSettings, RedisSettings
from engine.shaping.throttle.embedded import EmbeddedStore
from engine.shaping.throttle.redis import RedisStore
from engine.shaping.throttle.store import StateCallback, ThrottleStore

__all__ = ["make_store"]


def make_store(
    redis: RedisSettings, cluster: ClusterSettings, *, on_state_change: StateCallback | None = None
) -> ThrottleStore:
    """The node's store: EmbeddedStore when ``redis.url`` is empty, else RedisStore.

    on_state_change: called with ``degraded`` when the Redis store falls back to local
        shares or resumes shared limits (ignored for the embedded store).
    """
    if not redis.url:
        return EmbeddedStore()
    return RedisStore(redis, cluster, on_state_change=on_state_change)
