"""Fixed-window counters kept on disk, so the embedded store's counts survive a restart.

Exports:
    CountsFile(path)   load() -> {key: (used, expires_at)}; save(key, used, expires_at); close()

One small SQLite database (``warmup.db`` in the spool directory, WAL,
``synchronous=NORMAL``: a crash of the machine may lose the last commits, a restart of
the node loses nothing). Each row is ``key, used, expires_at`` (unix seconds); ``save``
keeps the larger count, so writes that arrive out of order never lower a counter; rows
past ``expires_at`` are deleted at ``load``. The methods block: callers run them in a
thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

__all__ = ["CountsFile"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS window_counts (
    key TEXT PRIMARY KEY,
    used INTEGER NOT NULL,
    expires_at REAL NOT NULL
)
"""


class CountsFile:
    """path: the database file (created with its directory on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            self._db = db
        return self._db

    def load(self, now: float | None = None) -> dict[str, tuple[int, float]]:
        """Every live counter; expired rows are deleted first."""
        with self._lock:
            db = self._open()
            db.execute("DELETE FROM window_counts WHERE expires_at <= ?", (now or time.time(),))
            rows = db.execute("SELECT key, used, expires_at FROM window_counts").fetchall()
        return {key: (int(used), float(expires)) for key, used, expires in rows}

    def save(self, key: str, used: int, expires_at: float) -> None:
        """Record ``used`` for ``key`` unless a larger count is already stored."""
        with self._lock:
            self._open().execute(
                "INSERT INTO window_counts (key, used, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET used = max(used, excluded.used), "
                "expires_at = max(expires_at, excluded.expires_at)",
                (key, used, expires_at),
            )

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
