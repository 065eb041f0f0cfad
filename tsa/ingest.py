"""Taking in log records: rules (tsa.rules) applied against the shared state (tsa.state).

Exports:
    Ingestor       ingest(records) -> Counts
    Counts         per-request totals, returned to the publisher as JSON

Per record (pseudocode)::

    view = parse_record(obj)                  # invalid -> counted, skipped
    matches = evaluate(shaping, view, now)    # ignored type / no rule -> counted, done
    if not mark_seen(view.key): duplicate     # another replica (or a retry) took it
    for m in matches:
        fired = m.window is None or count(m.window, view) >= m.window.limit
        if fired: write m.entries             # only if new or longer-lasting; PUBLISH
    on a Redis error: unmark_seen(view.key) and raise, so the publisher's retry counts

Records are handled one after another, so Threshold counts follow the request order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from engine.records import Json, JsonObject
from engine.shaping.overlay import OverlayEntry

from .metrics import TsaMetrics
from .rules import IGNORED_TYPES, Match, RecordInvalid, RecordView, evaluate, parse_record
from .shaping_file import ShapingFile
from .state import TsaState

__all__ = ["Ingestor", "Counts"]

log = logging.getLogger("nimbus.tsa")


@dataclass(slots=True)
class Counts:
    """What one publish request did. errors: ``{"index", "error"}`` per invalid record."""

    received: int = 0
    matched: int = 0
    unmatched: int = 0
    ignored: int = 0
    duplicates: int = 0
    invalid: int = 0
    entries_written: int = 0
    errors: list[JsonObject] = field(default_factory=list)

    def to_json(self) -> JsonObject:
        return asdict(self)


class Ingestor:
    """state: the Redis state. shaping: the rules file. metrics: counters.
    clock: wall-clock seconds (tests pass a fixed one). timeout: per-record Redis budget."""

    def __init__(
        self,
        state: TsaState,
        shaping: ShapingFile,
        metrics: TsaMetrics,
        *,
        clock: Callable[[], float],
        timeout: float,
    ) -> None:
        self.state = state
        self.shaping = shaping
        self.metrics = metrics
        self.clock = clock
        self.timeout = timeout
        self.totals: dict[str, int] = {
            "received": 0,
            "matched": 0,
            "duplicates": 0,
            "entries_written": 0,
        }

    async def ingest(self, records: Sequence[Json]) -> Counts:
        """Apply the rules to each record. Raises RedisError/TimeoutError (the records
        from the failing one on are not taken; the publisher should retry)."""
        counts = Counts(received=len(records))
        for index, obj in enumerate(records):
            try:
                view = parse_record(obj)
            except RecordInvalid as exc:
                counts.invalid += 1
                counts.errors.append({"index": index, "error": str(exc)})
                self.metrics.records.labels("invalid").inc()
                continue
            await self._one(view, counts)
        self.totals["received"] += counts.received
        self.totals["matched"] += counts.matched
        self.totals["duplicates"] += counts.duplicates
        self.totals["entries_written"] += counts.entries_written
        return counts

    async def _one(self, view: RecordView, counts: Counts) -> None:
        matches = evaluate(self.shaping.shaping, view, now=self.clock())
        if not matches:
            outcome = "ignored" if view.type in IGNORED_TYPES else "unmatched"
            setattr(counts, outcome, getattr(counts, outcome) + 1)
            self.metrics.records.labels(outcome).inc()
            return
        async with asyncio.timeout(self.timeout):
            if not await self.state.mark_seen(view.key):
                counts.duplicates += 1
                self.metrics.records.labels("duplicate").inc()
                return
        try:
            async with asyncio.timeout(self.timeout):
                written = await self._apply(view, matches)
        except BaseException:
            try:
                async with asyncio.timeout(self.timeout):
                    await self.state.unmark_seen(view.key)
            except Exception:  # Redis is what failed; its retry must still count
                log.warning("tsa_unmark_failed", extra={"record": view.key})
            raise
        counts.matched += 1
        counts.entries_written += written
        self.metrics.records.labels("matched").inc()

    async def _apply(self, view: RecordView, matches: list[Match]) -> int:
        now = self.clock()
        fired: dict[str, OverlayEntry] = {}
        for m in matches:
            self.metrics.rule_matches.labels("threshold" if m.window else "immediate").inc()
            if m.window is not None:
                n = await self.state.count(
                    m.window.key,
                    member=view.key,
                    ts=view.timestamp,
                    period=m.window.period,
                    hold=m.window.hold,
                    now=now,
                )
                if n < m.window.limit:
                    continue
            for entry in m.entries:
                fired[entry.id] = entry
        written = await self.state.upsert(fired.values())
        for entry in fired.values():
            self.metrics.actions.labels(entry.kind).inc()
        if fired:
            log.info(
                "tsa_actions",
                extra={
                    "record": view.key,
                    "site": view.ready_queue,
                    "entries": len(fired),
                    "written": written,
                },
            )
        await self.state.add_stats(matched=1, entries=written)
        return written
