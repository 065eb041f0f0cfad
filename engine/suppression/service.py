"""Suppressions: the node's suppression list as reception, the recorder and admin use it.

Exports:
    Suppressions(settings, store)    check(...), observe(record), run(), admin edits
    Suppressed                       the Rejected a suppressed recipient becomes
    SHOULD_SUPPRESS_RECIPIENT        re-exported from engine.policy.events

The check (both listeners, every recipient)::

    entries = local dict            (LocalStore: the whole list in memory)
            | cache[recipient]      (Redis: TTL cache of cache_size, cache_ttl)
            | HGETALL, then cache   (a Redis error: let the mail through, log once)
    entry = applicable(entries, tenant)            (entries.py, pure)
    if entry and the policy handles should_suppress_recipient:
        at SMTP RCPT (tenant unknown): no verdict yet, the accept path decides
        else the handler's False lets this message through
    entry -> Suppressed(550 5.7.1 ...)

The recorder: ``observe`` is a ``LogWriter.on_record`` callback (every record, on the
loop): the pure ``entry_from_record`` picks hard bounces and complaints, which go into a
bounded queue that ``run`` (a task of the node) writes to the store. A full queue drops
the entry with one warning per episode; the next bounce of that recipient makes it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

from cachetools import TTLCache

from engine.config.settings import SuppressionSettings
from engine.policy.events import SHOULD_SUPPRESS_RECIPIENT, Registry, Rejected
from engine.records import LogRecord
from engine.suppression.entries import (
    Filter,
    Suppression,
    applicable,
    entry_from_record,
    normalize,
    refusal,
)
from engine.suppression.store import MemoryStore, StoreUnavailable, SuppressionStore

__all__ = ["Suppressions", "Suppressed", "SHOULD_SUPPRESS_RECIPIENT"]

log = logging.getLogger("nimbus.suppression")

QUEUE_SIZE = 10_000
"""Entries from log records waiting to be written; beyond it they are dropped (logged)."""


class Suppressed(Rejected):
    """A recipient on the suppression list: its ``550 5.7.1`` and the entry."""

    def __init__(self, entry: Suppression) -> None:
        response = refusal(entry)
        super().__init__(response.code, response.single_line()[4:])
        self.entry = entry


class Suppressions:
    """The suppression list of a node.

    settings: ``[suppression]``. store: LocalStore or RedisSuppressionStore.
    clock: epoch seconds.
    """

    def __init__(
        self,
        settings: SuppressionSettings,
        store: SuppressionStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self._clock = clock
        self._local = store if isinstance(store, MemoryStore) else None
        self._cache: TTLCache[str, tuple[Suppression, ...]] | None = (
            TTLCache(settings.cache_size, settings.cache_ttl)
            if store.shared and settings.cache_size
            else None
        )
        self._pending: asyncio.Queue[Suppression] = asyncio.Queue(QUEUE_SIZE)
        self._store_down = False
        self._dropping = False
        self.recorded = 0
        """Entries written from log records."""
        self.refused: Counter[str] = Counter()
        """Messages refused because of an entry, by the entry's reason (metrics)."""
        self.recorded_by: Counter[str] = Counter()
        """Entries written from log records, by reason (metrics)."""

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    async def _entries(self, recipient: str) -> tuple[Suppression, ...]:
        if self._local is not None:
            return self._local.lookup(recipient)
        if self._cache is not None:
            found = self._cache.get(recipient)
            if found is not None:
                return found
        try:
            found = await self.store.get(recipient)
        except StoreUnavailable as exc:
            if not self._store_down:
                self._store_down = True
                log.error("suppression_store_unavailable", extra={"error": str(exc)})
            return ()  # an outage must not stop all mail: suppression is best effort
        if self._store_down:
            self._store_down = False
            log.info("suppression_store_available")
        if self._cache is not None:
            self._cache[recipient] = found
        return found

    async def check(
        self, recipient: str, tenant: str | None, registry: Registry, *, at_rcpt: bool = False
    ) -> None:
        """Raise Suppressed when mail for ``recipient`` (of ``tenant``) must be refused.

        at_rcpt: the SMTP RCPT check, before the message and its tenant header exist:
        only entries for every tenant count, and when the policy handles
        ``should_suppress_recipient`` the verdict waits for the accept path.
        Raises PolicyFailure when that handler fails (the caller's 451).
        """
        if not self.settings.enabled:
            return
        key = normalize(recipient)
        entry = applicable(
            await self._entries(key), tenant, self._clock(), every_tenant_only=at_rcpt
        )
        if entry is None:
            return
        if registry.has(SHOULD_SUPPRESS_RECIPIENT):
            if at_rcpt:
                return
            verdict = await registry.dispatch(
                SHOULD_SUPPRESS_RECIPIENT, key, tenant, entry.reason.value
            )
            if verdict is False:
                return
        self.refused[entry.reason.value] += 1
        raise Suppressed(entry)

    # -- the recorder ------------------------------------------------------------------

    def observe(self, record: LogRecord) -> None:
        """Queue the entry ``record`` makes, if any (a LogWriter callback: never blocks)."""
        if not self.settings.enabled:
            return
        entry = entry_from_record(record, self.settings, self._clock())
        if entry is None:
            return
        if self._pending.full():
            if not self._dropping:
                self._dropping = True
                log.warning(
                    "suppression_entries_dropped",
                    extra={"queue_size": QUEUE_SIZE, "recipient": entry.recipient},
                )
            return
        self._dropping = False
        self._pending.put_nowait(entry)

    async def run(self) -> None:
        """Write queued entries to the store until cancelled (a task of the node)."""
        while True:
            entry = await self._pending.get()
            batch = [entry]
            while not self._pending.empty() and len(batch) < 500:
                batch.append(self._pending.get_nowait())
            try:
                await self.add(batch)
            except StoreUnavailable as exc:
                log.error(
                    "suppression_entries_not_stored",
                    extra={"error": str(exc), "entries": len(batch)},
                )
                continue
            self.recorded += len(batch)
            for e in batch:
                self.recorded_by[e.reason.value] += 1
                log.info(
                    "recipient_suppressed",
                    extra={"recipient": e.recipient, "tenant": e.tenant, "reason": e.reason},
                )

    def pending(self) -> int:
        """Entries from log records not written yet."""
        return self._pending.qsize()

    # -- admin edits ---------------------------------------------------------------------

    def _forget(self, recipient: str) -> None:
        if self._cache is not None:
            self._cache.pop(recipient, None)

    async def add(self, entries: list[Suppression]) -> None:
        """Add or replace entries. Raises StoreUnavailable."""
        await self.store.add(entries)
        for e in entries:
            self._forget(e.recipient)

    async def remove(self, recipient: str, tenant: str) -> bool:
        """Remove one entry (False: none). Raises StoreUnavailable."""
        key = normalize(recipient)
        removed = await self.store.remove(key, tenant)
        self._forget(key)
        return removed

    async def list(self, criteria: Filter) -> list[Suppression]:
        """Entries matching ``criteria``, by recipient then tenant. Raises StoreUnavailable."""
        if criteria.recipient is not None:  # one key: no walk over the whole list
            now = self._clock()
            candidates = [
                e for e in await self.store.get(normalize(criteria.recipient)) if not e.expired(now)
            ]
        else:
            candidates = await self.store.entries()
        found = [e for e in candidates if criteria.matches(e)]
        return sorted(found, key=lambda e: (e.recipient, e.tenant))

    async def close(self) -> None:
        """Write what the recorder has not written yet (records of the drain), then close."""
        batch = []
        while not self._pending.empty():
            batch.append(self._pending.get_nowait())
        if batch:
            try:
                await self.add(batch)
                self.recorded += len(batch)
            except StoreUnavailable as exc:
                log.error(
                    "suppression_entries_not_stored",
                    extra={"error": str(exc), "entries": len(batch)},
                )
        await self.store.close()
