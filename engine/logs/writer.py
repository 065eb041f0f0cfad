"""Log records: one JSON line per disposition, to rotating files and to subscribers.

Exports:
    LogWriter     ``emit(record)`` from anywhere on the loop; a task writes segments
    segment_name(ts) -> str   KumoMTA's file naming, ``%Y%m%d-%H%M%S.%f`` in UTC

Files are plain NDJSON (KumoMTA compresses segments with zstd; ours stay readable
with ``tail -f``/``jq`` and are rotated by size and age). A segment is named by its
UTC open time. Records are written by one task in batches, flushed after each
batch, so ``emit`` never blocks on disk. Subscribers (later: TSA and webhook
publishers) receive each record through their own bounded queue.

A write that fails (ENOSPC on a full disk, EIO) never stops the node: the segment is
cut back to its last whole line, the batch is counted in ``dropped``
(``nimbus_log_records_dropped_total``) and logged once per episode
(``log_records_dropped`` when it starts, ``log_records_writing_again`` when a write
succeeds again); subscribers and metrics got the records already.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from engine.config.settings import LogSettings
from engine.records import LogRecord

__all__ = ["LogWriter", "segment_name"]

log = logging.getLogger("nimbus.logs")


def segment_name(ts: float) -> str:
    """The file name of a segment opened at ``ts`` (unix seconds)."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y%m%d-%H%M%S.%f")


class LogWriter:
    """Writes log records to ``settings.dir`` and fans them out to subscribers.

    settings: the ``[log]`` settings (dir, max_file_size, max_segment_duration).
    clock: wall-clock function (tests inject one to force rotation).
    suffix: appended to segment names (``.w<i>``: each worker of a node writes its own
        segments into the one directory).
    """

    def __init__(
        self,
        settings: LogSettings,
        *,
        clock: Callable[[], float] = time.time,
        suffix: str = "",
    ) -> None:
        self.settings = settings
        self._suffix = suffix
        self.dir = Path(settings.dir)
        self._clock = clock
        self._pending: list[LogRecord] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._file: IO[bytes] | None = None
        self._opened_at = 0.0
        self._written = 0
        self._subscribers: list[asyncio.Queue[LogRecord]] = []
        self.dropped = 0  # records that could not be written (all episodes)
        self._episode_dropped = 0  # in the current failure episode (0: writing works)
        self._callbacks: list[Callable[[LogRecord], None]] = []

    def emit(self, record: LogRecord) -> None:
        """Queue a record for writing and hand it to subscribers. Never blocks."""
        self._pending.append(record)
        self._wake.set()
        for cb in self._callbacks:
            cb(record)
        for q in self._subscribers:
            if q.full():
                log.warning(
                    "log_subscriber_record_dropped",
                    extra={"record_id": record.id},
                )
            else:
                q.put_nowait(record)

    def subscribe(self, maxsize: int = 100_000) -> asyncio.Queue[LogRecord]:
        """A queue that receives every record emitted from now on."""
        q: asyncio.Queue[LogRecord] = asyncio.Queue(maxsize)
        self._subscribers.append(q)
        return q

    def on_record(self, callback: Callable[[LogRecord], None]) -> None:
        """Call ``callback(record)`` synchronously for every record (metrics, tests)."""
        self._callbacks.append(callback)

    async def run(self) -> None:
        """Write pending records until ``close()``; then flush what is left."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                batch, self._pending = self._pending, []
                if batch:
                    await asyncio.to_thread(self._write, batch)
                if self._closed and not self._pending:
                    return
        finally:
            if self._pending:
                self._write(self._pending)
                self._pending = []
            if self._file is not None:
                with contextlib.suppress(OSError):  # written and flushed batch by batch
                    self._file.close()
                self._file = None

    def close(self) -> None:
        """Ask ``run`` to finish after writing what is queued."""
        self._closed = True
        self._wake.set()

    def _write(self, batch: list[LogRecord]) -> None:
        """Append the batch to the current segment (rotating first when due); a failed
        write is cut back to the last whole line and counted, never raised."""
        data = b"".join(
            json.dumps(r.to_json(), separators=(",", ":")).encode() + b"\n" for r in batch
        )
        now = self._clock()
        try:
            if self._file is None or self._should_rotate(now):
                self._rotate(now)
            assert self._file is not None
            start = self._file.tell()
            try:
                view = memoryview(data)
                while view:  # unbuffered: a short write returns what it wrote
                    view = view[self._file.write(view) or 0 :]
            except OSError:
                with contextlib.suppress(OSError):  # keep the segment whole lines only
                    self._file.truncate(start)
                    self._file.seek(start)
                raise
        except OSError as exc:
            self._dropped(len(batch), exc)
            return
        self._written += len(data)
        if self._episode_dropped:
            log.warning(
                "log_records_writing_again",
                extra={"dir": str(self.dir), "dropped": self._episode_dropped},
            )
            self._episode_dropped = 0

    def _dropped(self, n: int, exc: OSError) -> None:
        if not self._episode_dropped:
            log.error(
                "log_records_dropped",
                extra={"dir": str(self.dir), "error": f"{exc.strerror or exc}", "records": n},
            )
        self._episode_dropped += n
        self.dropped += n

    def _should_rotate(self, now: float) -> bool:
        return (
            self._written >= self.settings.max_file_size
            or now - self._opened_at >= self.settings.max_segment_duration
        )

    def _rotate(self, now: float) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # every batch was flushed already
                self._file.close()
            self._file = None
        path = self.dir / (segment_name(now) + self._suffix)
        while path.exists():  # two segments in one microsecond: keep names unique
            now += 1e-6
            path = self.dir / (segment_name(now) + self._suffix)
        # Unbuffered: each batch is one write() reaching the file, or an error we see.
        self._file = open(path, "ab", buffering=0)
        self._opened_at = now
        self._written = 0
