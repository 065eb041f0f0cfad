"""The TSA's automation rules: ``<policy dir>/shaping.toml``, reloaded when it changes.

Exports:
    ShapingFile    current Shaping, with ``check()`` to reload after an edit

A file that fails to load keeps the last good rules (the error is logged and shown in
/tsa/status) until it is fixed. A missing file means no rules. Only the first load can
raise: a broken file at startup is a configuration error, not something to run with.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from engine.config.settings import ConfigError
from engine.policy.helpers.shaping import Block, Provider, Shaping
from engine.policy.helpers.shaping_load import load_shaping

from .metrics import TsaMetrics

__all__ = ["ShapingFile"]

log = logging.getLogger("nimbus.tsa")


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class ShapingFile:
    """path: the shaping.toml to follow. Raises ConfigError if it exists but is invalid."""

    def __init__(self, path: str | Path, metrics: TsaMetrics | None = None) -> None:
        self.path = Path(path)
        self.metrics = metrics
        self.error: str | None = None
        self.loaded_at: float | None = None
        self._stamp = _stamp(self.path)
        self.shaping = self._load_now() if self._stamp else Shaping()
        if self._stamp is None:
            log.warning("tsa_shaping_missing", extra={"path": str(self.path)})

    def _load_now(self) -> Shaping:
        shaping = load_shaping([self.path])
        self.loaded_at = time.time()
        if self.metrics:
            self.metrics.shaping_reloads.labels("ok").inc()
        return shaping

    @property
    def rule_count(self) -> int:
        s = self.shaping
        blocks: list[Block | Provider] = [*s.domains.values(), *s.rollups, *s.providers.values()]
        if s.default is not None:
            blocks.append(s.default)
        return sum(len(b.automation) for b in blocks)

    async def check(self) -> bool:
        """Reload if the file changed since the last look; True when new rules apply."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        if stamp is None:
            self.shaping, self.error = Shaping(), None
            log.warning("tsa_shaping_missing", extra={"path": str(self.path)})
            return True
        try:
            self.shaping = await asyncio.to_thread(self._load_now)
        except ConfigError as exc:
            self.error = str(exc)
            if self.metrics:
                self.metrics.shaping_reloads.labels("error").inc()
            log.error(
                "tsa_shaping_reload_failed", extra={"path": str(self.path), "error": self.error}
            )
            return False
        self.error = None
        log.info("tsa_shaping_reloaded", extra={"path": str(self.path), "rules": self.rule_count})
        return True
