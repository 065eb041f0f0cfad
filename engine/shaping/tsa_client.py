"""The MTA's side of TSA: keep an Overlay in step with the TSA state in Redis.

Exports:
    TsaSubscriber(redis_settings, overlay, *, resync_interval)   run() / close()

How (pseudocode)::

    loop:
        SUBSCRIBE {prefix}:tsa:actions             # first, so nothing slips between
        overlay.replace_all(HGETALL {prefix}:tsa:actions, origin="tsa")   # per origin
        until the next resync_interval:
            message -> overlay.upsert(entry) | overlay.remove(id)
        on a Redis error: keep the overlay as it is, log once, retry with backoff
                          (engine.config.backoff: 0.5 s doubling to 30 s, equal
                          jitter), then SUBSCRIBE and resync again

Updates arrive within the pub/sub latency (milliseconds); the periodic resync repairs
anything missed (a message lost while reconnecting, an entry pruned). Entries expire
by their own ``expires``, so an unreachable Redis or TSA never clears the overlay
early and never leaves it on past its time (KumoMTA turns an unreachable TSA into an
empty overlay). Admin entries (origin "admin") in the same Overlay are untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from engine.config.backoff import backoff_delay
from engine.config.settings import RedisSettings
from engine.shaping.overlay import Overlay, entry_from_json

__all__ = ["TsaSubscriber"]

log = logging.getLogger("nimbus.tsa_client")

_MIN_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
_POLL = 1.0


class TsaSubscriber:
    """Follows the TSA entries in Redis into ``overlay``.

    redis_settings: ``[redis]`` url, key_prefix and timeout (per command).
    overlay: the Overlay the delivery path reads. resync_interval: seconds between full
    reloads. origins: the entry origins mirrored from Redis (others in the overlay,
    such as local admin entries, are left alone). clock: wall-clock seconds (pruning).
    ``synced`` is set after the first full load; ``healthy`` tells whether the last
    contact with Redis worked.
    """

    def __init__(
        self,
        redis_settings: RedisSettings,
        overlay: Overlay,
        *,
        resync_interval: float = 30.0,
        origins: tuple[str, ...] = ("tsa",),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not redis_settings.url:
            raise ValueError("TsaSubscriber needs [redis] url")
        self.overlay = overlay
        self.origins = origins
        self.resync_interval = max(resync_interval, _POLL)
        self.clock = clock
        self.timeout = redis_settings.timeout
        self.channel = f"{redis_settings.key_prefix}:tsa:actions"
        self.hash_key = self.channel
        # No hidden retries: a dropped connection must surface here so we resync after it.
        self.redis = Redis.from_url(
            redis_settings.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self.synced = asyncio.Event()
        self.healthy = False
        self._failing = False

    async def run(self) -> None:
        """Follow Redis until cancelled; never raises for Redis trouble."""
        failures = 0
        while True:
            try:
                await self._session()
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc)
            # A session that reached Redis starts the schedule again.
            failures = 1 if self.healthy else failures + 1
            self.healthy = False
            # Jittered so the nodes a Redis restart disconnected do not reconnect in step.
            await asyncio.sleep(
                backoff_delay(failures, base=_MIN_BACKOFF, cap=_MAX_BACKOFF, rand=random.random())
            )

    async def _session(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            async with asyncio.timeout(self.timeout):
                await pubsub.subscribe(self.channel)
            while True:
                await self._resync()
                deadline = time.monotonic() + self.resync_interval
                while (left := deadline - time.monotonic()) > 0:
                    message = await pubsub.get_message(timeout=min(left, _POLL))
                    if message is not None and message.get("type") == "message":
                        self._apply(message["data"])
        finally:
            try:
                await pubsub.aclose()
            except (RedisError, OSError):  # the connection is already gone
                pass

    async def _resync(self) -> None:
        async with asyncio.timeout(self.timeout):
            raw = await self.redis.hgetall(self.hash_key)
        entries = []
        for value in raw.values():
            try:
                entries.append(entry_from_json(json.loads(value)))
            except ValueError as exc:
                log.warning("tsa_entry_unreadable", extra={"error": str(exc)})
        for origin in self.origins:
            self.overlay.replace_all([e for e in entries if e.origin == origin], origin=origin)
        self.overlay.prune(self.clock())
        self.healthy = True
        if self._failing:
            log.info("tsa_subscriber_recovered", extra={"entries": len(entries)})
            self._failing = False
        self.synced.set()

    def _apply(self, data: Any) -> None:
        try:
            obj = json.loads(data)
            if isinstance(obj, dict) and obj.get("kind") == "Removed":
                self.overlay.remove(str(obj.get("id")))
                return
            entry = entry_from_json(obj)
        except ValueError as exc:
            log.warning("tsa_entry_unreadable", extra={"error": str(exc)})
            return
        if entry.origin in self.origins and entry.expires > self.clock():
            self.overlay.upsert(entry)

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:
            log.warning(
                "tsa_subscriber_unavailable",
                extra={"error": f"{type(exc).__name__}: {exc}", "keeping": len(self.overlay)},
            )
            self._failing = True

    async def close(self) -> None:
        """Release the Redis connections (cancel the ``run()`` task first)."""
        await self.redis.aclose()
