"""Reading the running node for its status page: the node's parts in, ``Readings`` out.

Exports:
    StatusSources   ``await read()`` -> ``engine.admin.status.Readings``

The one impure step before ``build_status`` (pure): it walks the scheduled and ready
queues once for counts and the oldest message, reads the admin entries, the TSA overlay,
Redis and TSA health, the record rates and the spool filesystem. Parts above this layer
(transfers, ``engine/xfer``) and the node's own flags come in as callables, as for
``AdminApi``. A walk of many messages yields to the loop every ``_YIELD_EVERY`` messages,
and one reading serves every request within ``min_interval`` seconds, so a page left
open on a node with a million queued messages costs a walk per second, not per viewer.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from engine.admin.state import AdminState
from engine.admin.status import QueueReading, Readings, ReadyReading, Worker
from engine.logs.rates import RecordRates
from engine.queues.ready import ReadyQueue
from engine.queues.scheduled import Scheduler
from engine.reception.shedding import Shedding
from engine.records import Json, Message
from engine.shaping.overlay import Overlay
from engine.shaping.tsa_client import TsaSubscriber
from engine.storage.spool import Spool

__all__ = ["StatusSources"]

_YIELD_EVERY = 5_000


def _disk(path: Path) -> tuple[int | None, int | None]:
    try:
        st = os.statvfs(path)
    except OSError:
        return None, None
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


class StatusSources:
    """Where the status page's readings come from.

    node_id: shown in the header. scheduler / ready: the scheduled queues and the
    router's ready queues (name -> ReadyQueue). not_ready: the acceptor's reason, or
    None. draining: whether a shutdown began. shedding: the current load-shedding
    state. admin: this node's admin entries. overlay: the TSA overlay. tsa: its
    subscriber (None: no TSA configured). redis_configured / redis_degraded: the shared
    throttle store. spool: counts and size; its directory's filesystem is measured.
    rates: the record-rate ring fed by the LogWriter. transfers: ``Transfers.jobs``.
    workers: the node's worker pools. clock: wall clock; monotonic: for uptime and
    the reading cache. min_interval: seconds one reading is reused.
    """

    def __init__(
        self,
        *,
        node_id: str,
        scheduler: Scheduler,
        ready: Mapping[str, ReadyQueue],
        not_ready: Callable[[], str | None],
        draining: Callable[[], bool],
        shedding: Callable[[], Shedding | None],
        admin: AdminState,
        overlay: Overlay,
        tsa: TsaSubscriber | None,
        redis_configured: bool,
        redis_degraded: Callable[[], bool],
        spool: Spool,
        rates: RecordRates,
        transfers: Callable[[], Sequence[Mapping[str, Json]]] = lambda: (),
        warmup: Callable[[], Sequence[Mapping[str, Json]]] = lambda: (),
        workers: Callable[[], Sequence[Worker]] = lambda: (),
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        min_interval: float = 1.0,
    ) -> None:
        self._node_id = node_id
        self._scheduler = scheduler
        self._ready = ready
        self._not_ready = not_ready
        self._draining = draining
        self._shedding = shedding
        self._admin = admin
        self._overlay = overlay
        self._tsa = tsa
        self._redis_configured = redis_configured
        self._redis_degraded = redis_degraded
        self._spool = spool
        self._rates = rates
        self._transfers = transfers
        self._warmup = warmup
        self._workers = workers
        self._clock = clock
        self._monotonic = monotonic
        self._started = monotonic()
        self._min_interval = min_interval
        self._cached: tuple[float, Readings] | None = None
        self._lock = asyncio.Lock()

    async def read(self) -> Readings:
        """The node now (or as of less than ``min_interval`` ago)."""
        async with self._lock:  # concurrent viewers share one walk
            cached = self._cached
            if cached is not None and self._monotonic() - cached[0] < self._min_interval:
                return cached[1]
            readings = await self._read()
            self._cached = (self._monotonic(), readings)
            return readings

    async def _scheduled(self) -> list[QueueReading]:
        oldest: dict[str, float] = {}
        for i, msg in enumerate(self._scheduler.messages(), 1):
            if msg.created < oldest.get(msg.queue, float("inf")):
                oldest[msg.queue] = msg.created
            if i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let SMTP and deliveries run during a long walk
        counts = dict(self._scheduler.counts)
        return [QueueReading(name=n, count=c, oldest=oldest.get(n)) for n, c in counts.items()]

    @staticmethod
    def _ready_reading(ready: ReadyQueue, messages: list[Message]) -> ReadyReading:
        return ReadyReading(
            name=ready.name,
            site=ready.site,
            source=ready.source.name,
            count=len(messages),
            connections=ready.connections,
            connection_limit=ready.path.connection_limit,
            oldest=min((m.created for m in messages), default=None),
            states={state: dict(info) for state, info in ready.states.items()},
            by_queue=dict(Counter(m.queue for m in messages)),
        )

    async def _read(self) -> Readings:
        now = self._clock()
        scheduled = await self._scheduled()
        ready = [self._ready_reading(q, list(q.queue)) for q in list(self._ready.values())]
        total, free = await asyncio.to_thread(_disk, self._spool.dir)
        tsa = self._tsa
        return Readings(
            now=now,
            node_id=self._node_id,
            uptime=self._monotonic() - self._started,
            not_ready=self._not_ready(),
            draining=self._draining(),
            shedding=self._shedding(),
            scheduled=scheduled,
            ready=ready,
            rates_1m=self._rates.counts(60),
            rates_5m=self._rates.counts(300),
            bounces_5m=self._rates.bounces(300),
            bounce_totals=self._rates.bounce_totals(),
            admin_bounces=self._admin.bounces(now),
            admin_suspensions=self._admin.suspensions(now),
            admin_ready_suspensions=self._admin.ready_suspensions(now),
            overlay=self._overlay.entries(now),
            redis_configured=self._redis_configured,
            redis_degraded=self._redis_degraded(),
            tsa_configured=tsa is not None,
            tsa_healthy=tsa is not None and tsa.healthy,
            tsa_synced=tsa is not None and tsa.synced.is_set(),
            spool_messages=self._spool.count,
            spool_bytes=self._spool.size_bytes(),
            disk_total=total,
            disk_free=free,
            transfers=list(self._transfers()),
            warmup=list(self._warmup()),
            workers=list(self._workers()),
        )
