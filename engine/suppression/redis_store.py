"""RedisSuppressionStore: the suppression list shared by every node of a cluster.

Exports:
    RedisSuppressionStore(settings)   a SuppressionStore (``shared``)

Layout: one hash per recipient, ``<prefix>:suppression:<recipient>``, field = tenant
(``""`` for every tenant), value = the entry's JSON (``entries.to_json``). A lookup is one
``HGETALL`` (every tenant's entry of the address in one round trip). Expiry is kept in
the entry and checked by the reader; the key also gets a Redis TTL when every entry in
it expires, so an expired list cleans itself (``ADD_LUA``: the key lives as long as its
longest-lived entry; an entry that never expires makes the key persistent).
Listing walks the keyspace with ``SCAN`` (admin use, not the hot path).

Every command runs under ``redis.timeout``; a Redis error or timeout raises
StoreUnavailable (the service decides: lookups let mail through, admin calls answer 503).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from engine.config.settings import RedisSettings
from engine.suppression.entries import Suppression, from_json, to_json
from engine.suppression.store import StoreUnavailable, SuppressionStore

__all__ = ["RedisSuppressionStore"]

T = TypeVar("T")

# KEYS[1] the recipient's hash; ARGV: field, json, ttl in ms (0: never expires).
ADD_LUA = """
local existed = redis.call('EXISTS', KEYS[1])
local before = redis.call('PTTL', KEYS[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl == 0 then
  redis.call('PERSIST', KEYS[1])
elseif existed == 0 or (before >= 0 and before < ttl) then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
"""


class RedisSuppressionStore(SuppressionStore):
    """The list in Redis (``redis.url``), keys under ``redis.key_prefix``.

    settings: url, key_prefix, timeout (seconds per command). clock: epoch seconds.
    """

    shared = True

    def __init__(self, settings: RedisSettings, *, clock: Callable[[], float] = time.time) -> None:
        self._timeout = settings.timeout
        self._prefix = f"{settings.key_prefix}:suppression:"
        self._clock = clock
        pool = BlockingConnectionPool.from_url(
            settings.url,
            max_connections=20,
            timeout=settings.timeout,
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._redis = Redis.from_pool(pool)
        self._add = self._redis.register_script(ADD_LUA)

    def _key(self, recipient: str) -> str:
        return self._prefix + recipient

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await call()
        except TimeoutError:
            raise StoreUnavailable(f"Redis did not answer within {self._timeout}s") from None
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from None

    async def get(self, recipient: str) -> tuple[Suppression, ...]:
        raw: dict[Any, Any] = await self._call(lambda: self._redis.hgetall(self._key(recipient)))
        return tuple(from_json(json.loads(v)) for v in raw.values())

    async def add(self, entries: list[Suppression]) -> None:
        now = self._clock()
        for entry in entries:
            if entry.expired(now):
                continue  # imported already expired: nothing to hold
            ttl = 0 if entry.expires is None else max(1, math.ceil((entry.expires - now) * 1000))
            args = [entry.tenant, json.dumps(to_json(entry)), ttl]
            key = self._key(entry.recipient)

            async def call(key: str = key, args: list[Any] = args) -> Any:
                return await self._add(keys=[key], args=args)

            await self._call(call)

    async def remove(self, recipient: str, tenant: str) -> bool:
        key = self._key(recipient)
        raw = await self._call(lambda: self._redis.hget(key, tenant))
        removed = await self._call(lambda: self._redis.hdel(key, tenant))
        if not removed or raw is None:
            return False
        return not from_json(json.loads(raw)).expired(self._clock())

    async def entries(self) -> list[Suppression]:
        now = self._clock()
        found: list[Suppression] = []

        async def scan() -> None:
            async for key in self._redis.scan_iter(match=self._prefix + "*", count=1000):
                for value in (await self._redis.hgetall(key)).values():
                    entry = from_json(json.loads(value))
                    if not entry.expired(now):
                        found.append(entry)

        try:
            await scan()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from None
        return found

    async def close(self) -> None:
        await self._redis.aclose()
