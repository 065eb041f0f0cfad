"""``nimbus logs``: read (and follow) a node's log directory, one readable line per record.

Exports:
    logs(args) -> exit code     the verb
    RecordFilter                ``--type``, ``--domain``, ``--queue``, ``--id`` (pure)
    record_line(record) -> str  one record as one line (pure)
    Follower                    every segment of a directory, in name order, and the new
                                lines and new segments that appear (``engine/logs/writer.py``
                                names segments by their UTC open time, so name order is
                                time order, across restarts too)

Without ``--follow`` it prints what is there and exits; with it, it keeps reading the
newest segment and picks up each new one (a restarted node opens a new segment) until
interrupted. A half-written last line is kept until its newline arrives.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["logs", "RecordFilter", "record_line", "Follower"]

# How often --follow looks for new lines and segments (a file has no change event we
# can wait on portably; inotify is Linux-only).
POLL_INTERVAL = 0.2


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordFilter:
    """types: record types to keep (empty: all). domain: recipient domain or the queue's
    domain. queue: exact scheduled queue. id: the message (spool) id."""

    types: frozenset[str] = frozenset()
    domain: str | None = None
    queue: str | None = None
    id: str | None = None

    def keeps(self, record: dict[str, Any]) -> bool:
        if self.types and record.get("type", "").lower() not in self.types:
            return False
        if self.id and record.get("id") != self.id:
            return False
        if self.queue and record.get("queue") != self.queue:
            return False
        if self.domain:
            want = self.domain.lower()
            recipients = record.get("recipient")
            rcpts = recipients if isinstance(recipients, list) else [recipients or ""]
            domains = {str(r).rpartition("@")[2].lower() for r in rcpts}
            queue_domain = str(record.get("queue", "")).rpartition("@")[2].partition("!")[0]
            if want not in domains and want != queue_domain.lower():
                return False
        return True


def record_line(record: dict[str, Any]) -> str:
    """``<event_time> <type> <id> <sender> -> <recipient> queue=<q> site=<s> <code> <text>``."""
    response = record.get("response") or {}
    recipient = record.get("recipient")
    if isinstance(recipient, list):
        recipient = ",".join(recipient)
    parts = [
        str(record.get("event_time") or record.get("timestamp", "")),
        f"{record.get('type', '?'):<16}",
        str(record.get("id", "")),
        f"{record.get('sender') or '<>'} -> {recipient or ''}",
    ]
    if record.get("queue"):
        parts.append(f"queue={record['queue']}")
    if record.get("site"):
        parts.append(f"site={record['site']}")
    if record.get("num_attempts"):
        parts.append(f"attempts={record['num_attempts']}")
    code = response.get("code")
    if code is not None:
        enhanced = response.get("enhanced_code")
        text = str(response.get("content", ""))
        if enhanced:
            text = f"{enhanced['class']}.{enhanced['subject']}.{enhanced['detail']} {text}"
        parts.append(f"{code} {text}".rstrip())
    return " ".join(parts)


class Follower:
    """Reads every segment of ``directory`` in name order, remembering where it is."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._offsets: dict[str, int] = {}
        self._partial: dict[str, bytes] = {}

    def _segments(self) -> list[Path]:
        try:
            names = sorted(
                e.name for e in os.scandir(self._dir) if e.is_file() and not e.name.startswith(".")
            )
        except FileNotFoundError:
            return []
        return [self._dir / n for n in names]

    def read_new(self) -> list[dict[str, Any]]:
        """Records appended since the last call, across old and new segments, in order."""
        out: list[dict[str, Any]] = []
        for path in self._segments():
            start = self._offsets.get(path.name, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    chunk = f.read()
            except FileNotFoundError:
                continue
            if not chunk:
                continue
            self._offsets[path.name] = start + len(chunk)
            data = self._partial.pop(path.name, b"") + chunk
            lines = data.split(b"\n")
            if lines[-1]:
                self._partial[path.name] = lines[-1]
            for line in lines[:-1]:
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        continue  # not a record (a foreign file in the directory)
        return out


def _print(records: list[dict[str, Any]], keep: RecordFilter, raw: bool) -> None:
    for record in records:
        if keep.keeps(record):
            print(json.dumps(record, separators=(",", ":")) if raw else record_line(record))
    sys.stdout.flush()


def logs(args: argparse.Namespace) -> int:
    """Print the records of ``--dir`` (default ``$NIMBUS_LOG_DIR`` or nimbus-data/logs)."""
    directory = Path(args.dir or os.environ.get("NIMBUS_LOG_DIR") or "nimbus-data/logs")
    if not directory.is_dir() and not args.follow:
        print(f"nimbus logs: {directory} is not a directory", file=sys.stderr)
        return 1
    keep = RecordFilter(
        types=frozenset(t.lower() for t in args.type or ()),
        domain=args.domain,
        queue=args.queue,
        id=args.id,
    )
    follower = Follower(directory)
    _print(follower.read_new(), keep, args.json)
    if not args.follow:
        return 0
    try:
        while True:
            time.sleep(POLL_INTERVAL)
            _print(follower.read_new(), keep, args.json)
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
