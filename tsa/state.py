"""TSA state in Redis, shared by every TSA replica and surviving restarts.

Exports:
    TsaState        seen-record marks, Threshold windows, overlay entries (+ pub/sub)
    keys(prefix)    the key names below, for the MTA side and tests
    TsaKeys

Key layout (``{p}`` = ``[redis] key_prefix``)::

    {p}:tsa:actions             HASH   entry id -> entry JSON (engine.shaping.overlay form)
    {p}:tsa:expiry              ZSET   entry id -> expires (Unix s); drives pruning and the
                                       "only extend, never shorten" rule
    {p}:tsa:actions (channel)   PUBLISH of each new or extended entry's JSON, and of
                                ``{"kind": "Removed", "id": ...}`` on removal
    {p}:tsa:window:<rule fingerprint>:<ready queue>
                                ZSET   record key -> record timestamp (Threshold counts)
    {p}:tsa:seen:<id>:<type>:<timestamp>
                                STRING "1", EX 86400: this record was processed
    {p}:tsa:stats               HASH   matched (records) / entries (written) counters

KumoMTA keeps all of this in each replica's memory (saved to a local file), so
replicas share nothing and every MTA must publish to every replica. Here a record
published to several replicas counts once (the seen mark, and the window member is
the record key so even a race cannot count it twice), and a restarted or new replica
serves the same overlay at once.

Every call may raise ``redis.exceptions.RedisError`` (or TimeoutError); callers decide.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from engine.shaping.overlay import OverlayEntry, entry_from_json

__all__ = ["TsaState", "TsaKeys", "keys", "SEEN_TTL"]

SEEN_TTL = 86400

# KEYS[1] window; ARGV: member, ts, prune-below (exclusive), count-from (exclusive), ttl
_WINDOW = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[4], ARGV[2])
"""

# KEYS[1] actions hash, KEYS[2] expiry zset; ARGV[1] channel, ARGV[2] force (0/1),
# then (id, expires, json) triples. Writes and publishes an entry only when it is new or
# lasts longer than the stored one (a late, older record never shortens an entry, and
# replicas writing the same entry publish it once).
_UPSERT = """
local changed = 0
for i = 3, #ARGV, 3 do
  local id, exp, doc = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local cur = redis.call('ZSCORE', KEYS[2], id)
  if ARGV[2] == '1' or not cur or tonumber(cur) < exp then
    redis.call('HSET', KEYS[1], id, doc)
    redis.call('ZADD', KEYS[2], exp, id)
    redis.call('PUBLISH', ARGV[1], doc)
    changed = changed + 1
  end
end
return changed
"""

# KEYS[1] actions hash, KEYS[2] expiry zset; ARGV[1] now
_PRUNE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for i = 1, #ids, 500 do
  redis.call('HDEL', KEYS[1], unpack(ids, i, math.min(i + 499, #ids)))
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
return #ids
"""


@dataclass(frozen=True, slots=True)
class TsaKeys:
    prefix: str

    @property
    def actions(self) -> str:
        return f"{self.prefix}:tsa:actions"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:tsa:actions"

    @property
    def expiry(self) -> str:
        return f"{self.prefix}:tsa:expiry"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:tsa:stats"

    def window(self, name: str) -> str:
        return f"{self.prefix}:tsa:window:{name}"

    def seen(self, record_key: str) -> str:
        return f"{self.prefix}:tsa:seen:{record_key}"


def keys(prefix: str) -> TsaKeys:
    """The TSA key names under ``prefix``."""
    return TsaKeys(prefix)


class TsaState:
    """The TSA's shared state.

    redis: a ``redis.asyncio.Redis`` (decode_responses not required). prefix: the
    ``[redis] key_prefix``.
    """

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = keys(prefix)
        self._window = redis.register_script(_WINDOW)
        self._upsert = redis.register_script(_UPSERT)
        self._prune = redis.register_script(_PRUNE)

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def mark_seen(self, record_key: str) -> bool:
        """True the first time any replica sees this record (within a day)."""
        return bool(await self.redis.set(self.keys.seen(record_key), 1, nx=True, ex=SEEN_TTL))

    async def unmark_seen(self, record_key: str) -> None:
        """Forget a mark, so a record whose processing failed is taken on its retry."""
        await self.redis.delete(self.keys.seen(record_key))

    async def count(
        self, window: str, *, member: str, ts: float, period: float, hold: float, now: float
    ) -> int:
        """Add one sample and count the samples in ``(ts - period, ts]``, atomically.

        window: the window name (rule fingerprint + ready queue). member: the record
        key (a duplicate adds nothing). hold: seconds to keep samples before ``now``.
        """
        ttl = max(1, int(hold) + 60)
        return int(
            await self._window(
                keys=[self.keys.window(window)],
                args=[member, repr(ts), repr(now - hold), repr(ts - period), ttl],
            )
        )

    async def upsert(self, entries: Iterable[OverlayEntry], *, force: bool = False) -> int:
        """Write entries that are new or last longer than what is stored (all of them
        with ``force``), publishing each written one; returns how many were written."""
        args: list[Any] = [self.keys.channel, "1" if force else "0"]
        for e in entries:
            args += [e.id, repr(e.expires), json.dumps(e.to_json(), separators=(",", ":"))]
        if len(args) == 2:
            return 0
        return int(await self._upsert(keys=[self.keys.actions, self.keys.expiry], args=args))

    async def remove(self, ident: str) -> bool:
        """Delete one entry and announce it; False when it did not exist."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.actions, ident)
            pipe.zrem(self.keys.expiry, ident)
            pipe.publish(self.keys.channel, json.dumps({"kind": "Removed", "id": ident}))
            removed, _, _ = await pipe.execute()
        return bool(removed)

    async def entries(self, now: float) -> list[OverlayEntry]:
        """Every stored entry in force at ``now`` (unreadable ones are skipped)."""
        raw = await self.redis.hgetall(self.keys.actions)
        out = []
        for value in raw.values():
            try:
                entry = entry_from_json(json.loads(value))
            except ValueError:
                continue
            if entry.expires > now:
                out.append(entry)
        return sorted(out, key=lambda e: (e.expires, e.id))

    async def prune(self, now: float) -> int:
        """Delete entries expired at ``now``; returns how many."""
        return int(await self._prune(keys=[self.keys.actions, self.keys.expiry], args=[repr(now)]))

    async def add_stats(self, **counts: int) -> None:
        """Add to the cluster-wide counters (matched, entries)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, n in counts.items():
                if n:
                    pipe.hincrby(self.keys.stats, name, n)
            await pipe.execute()

    async def stats(self) -> dict[str, int]:
        raw = await self.redis.hgetall(self.keys.stats)
        return {_text(k): int(v) for k, v in raw.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
