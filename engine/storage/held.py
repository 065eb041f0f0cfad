"""The messages a spool holds, by id and creation time: how many, and when the oldest was made.

Exports:
    HeldMessages   add / discard / oldest / len: the spool's count and its oldest message

The oldest is the head of a heap of ``(created, id)``. A discarded id is not searched
for in the heap: ``discard`` only forgets it in ``_created``, and ``oldest`` pops heap
heads whose id is gone (lazy deletion, as the scheduler's due-time heap). One message
that stays for days while millions pass would pin every later heap entry, so when stale
entries outnumber live ones (plus a margin) the heap is rebuilt from the live ids: O(n)
once per n/2 discards, O(1) amortized. So ``add`` and ``discard`` cost O(log n) and
O(1), ``oldest`` O(1) amortized, and a scrape never walks the messages.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

__all__ = ["HeldMessages"]

# Stale heap entries tolerated beyond the live count before a rebuild: small heaps are
# never rebuilt for a handful of discards.
_SLACK = 1024


class HeldMessages:
    """Ids held (accepted and not yet disposed of) with their creation times (unix seconds).

    items: (id, created) pairs to start with (recovery), heapified at once.
    """

    def __init__(self, items: Iterable[tuple[str, float]] = ()) -> None:
        self._created: dict[str, float] = dict(items)
        self._heap: list[tuple[float, str]] = [(c, i) for i, c in self._created.items()]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._created)

    def add(self, id: str, created: float) -> None:
        """Hold ``id``, made at ``created``; adding a held id again changes nothing."""
        if id in self._created:
            return
        self._created[id] = created
        heapq.heappush(self._heap, (created, id))

    def discard(self, ids: Iterable[str]) -> None:
        """Forget ``ids`` (disposed of); ids not held are ignored."""
        for id in ids:
            self._created.pop(id, None)
        if len(self._heap) > 2 * len(self._created) + _SLACK:
            self._heap = [(c, i) for i, c in self._created.items()]
            heapq.heapify(self._heap)

    def oldest(self) -> float | None:
        """The creation time of the oldest held message; None when none is held."""
        heap, created = self._heap, self._created
        while heap and created.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # discarded since it was pushed
        return heap[0][0] if heap else None
