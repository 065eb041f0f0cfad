"""Choosing the node's throttle store from its settings.

Exports:
    make_store(redis, cluster, *, state_dir=None)   EmbeddedStore, or RedisStore when a url
                                 is configured
    COUNTS_FILE                  the embedded store's window-counter file in ``state_dir``
"""

from __future__ import annotations

from pathlib import Path

from engine.config.settings import ClusterSettings, RedisSettings
from engine.shaping.throttle.embedded import EmbeddedStore
from engine.shaping.throttle.redis import RedisStore
from engine.shaping.throttle.store import StateCallback, ThrottleStore

__all__ = ["make_store", "COUNTS_FILE"]

COUNTS_FILE = "warmup.db"


def make_store(
    redis: RedisSettings,
    cluster: ClusterSettings,
    *,
    on_state_change: StateCallback | None = None,
    state_dir: Path | None = None,
) -> ThrottleStore:
    """The node's store: EmbeddedStore when ``redis.url`` is empty, else RedisStore.

    on_state_change: called with ``degraded`` when the Redis store falls back to local
        shares or resumes shared limits (ignored for the embedded store).
    state_dir: where the embedded store keeps its window counters (``COUNTS_FILE``, the
        node's spool directory) so warm-up counts survive a restart; None: memory only.
    """
    if not redis.url:
        return EmbeddedStore(counts_file=None if state_dir is None else state_dir / COUNTS_FILE)
    return RedisStore(redis, cluster, on_state_change=on_state_change)
