"""Choosing the node's throttle store from its settings.

Exports:
    make_store(redis, cluster, *, state_dir=None, workers=1, node_socket=None)
        EmbeddedStore, SocketStore (a worker of a node without Redis), or RedisStore
    COUNTS_FILE                  the embedded store's window-counter file in ``state_dir``
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from engine.config.settings import ClusterSettings, RedisSettings
from engine.shaping.throttle.embedded import EmbeddedStore
from engine.shaping.throttle.node_socket import SocketStore
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
    workers: int = 1,
    node_socket: Path | None = None,
) -> ThrottleStore:
    """The node's store: RedisStore when ``redis.url`` is set; else, in a worker of a node
    with several (``node_socket``), the supervisor's store; else an EmbeddedStore.

    on_state_change: called with ``degraded`` when the Redis store falls back to local
        shares or resumes shared limits (ignored for the other stores).
    state_dir: where the embedded store keeps its window counters (``COUNTS_FILE``, the
        node's spool directory) so warm-up counts survive a restart; None: memory only.
        A worker of a node without Redis asks the supervisor's store, which keeps them.
    workers: the node's engine processes: while Redis is down each enforces
        ``limit / (cluster.nodes * workers)``; ``local:`` specs go to ``node_socket``.
    """
    if redis.url:
        processes = dataclasses.replace(cluster, nodes=max(1, cluster.nodes) * max(1, workers))
        local = SocketStore(node_socket, workers) if node_socket is not None else None
        return RedisStore(redis, processes, on_state_change=on_state_change, local=local)
    if node_socket is not None:
        return SocketStore(node_socket, workers)
    return EmbeddedStore(counts_file=None if state_dir is None else state_dir / COUNTS_FILE)
