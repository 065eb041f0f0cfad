"""Record rates: how many log records of each type the node wrote in the last minutes.

Exports:
    RecordRates   ``count(record)`` (a ``LogWriter.on_record`` subscriber);
                  ``counts(seconds)`` / ``bounces(seconds)`` over a trailing window;
                  ``bounce_totals()`` since the node started
    BOUNCE_TYPES  the record types counted by bounce classification

Memory is bounded: a ring of ``window`` one-second slots (300: five minutes), each a
small counter keyed by record type, plus the bounce classifications seen, capped at
``max_classifications`` names (later names count as ``"(other)"``: classifications
come from the policy's bounce rules, a short list, but a policy could make up names).
The clock is monotonic, so a wall-clock step neither loses nor doubles a second.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from engine.records import LogRecord, RecordType

__all__ = ["RecordRates", "BOUNCE_TYPES"]

BOUNCE_TYPES = frozenset({RecordType.BOUNCE, RecordType.EXPIRATION, RecordType.OOB})
"""Permanent failures a sender hears about: counted by ``bounce_classification``."""

OTHER = "(other)"


class RecordRates:
    """Per-second counts of log records over a trailing window.

    window: seconds kept (the longest window ``counts`` can answer).
    max_classifications: distinct bounce classification names kept.
    clock: monotonic seconds.
    """

    def __init__(
        self,
        window: int = 300,
        *,
        max_classifications: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window < 1:
            raise ValueError("window: at least 1 second")
        self.window = window
        self._clock = clock
        self._max_classes = max_classifications
        self._seconds = [-1] * window  # which second each slot holds
        self._types: list[Counter[str]] = [Counter() for _ in range(window)]
        self._classes: list[Counter[str]] = [Counter() for _ in range(window)]
        self._class_totals: Counter[str] = Counter()

    def _slot(self, second: int) -> int:
        slot = second % self.window
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            self._types[slot].clear()
            self._classes[slot].clear()
        return slot

    def count(self, record: LogRecord) -> None:
        """Count one record (called for every record the node's LogWriter emits)."""
        slot = self._slot(int(self._clock()))
        self._types[slot][str(record.type)] += 1
        if record.type in BOUNCE_TYPES:
            name = record.bounce_classification
            if name not in self._class_totals and len(self._class_totals) >= self._max_classes:
                name = OTHER
            self._classes[slot][name] += 1
            self._class_totals[name] += 1

    def _sum(self, table: list[Counter[str]], seconds: int) -> Counter[str]:
        if not 1 <= seconds <= self.window:
            raise ValueError(f"seconds: between 1 and {self.window}, got {seconds}")
        now = int(self._clock())
        out: Counter[str] = Counter()
        for slot, second in enumerate(self._seconds):
            if now - seconds < second <= now:
                out.update(table[slot])
        return out

    def counts(self, seconds: int) -> dict[str, int]:
        """Records per type in the last ``seconds`` (this second included)."""
        return dict(self._sum(self._types, seconds))

    def bounces(self, seconds: int) -> dict[str, int]:
        """Bounce, Expiration and OOB records per classification in the last ``seconds``."""
        return dict(self._sum(self._classes, seconds))

    def bounce_totals(self) -> dict[str, int]:
        """The same since this node started."""
        return dict(self._class_totals)
