"""The one interface every MTA under test implements, and where a trial puts it.

Exports:
    Placement      where one trial's MTA lives: its temp dir, the sink's port, the results
    MtaHarness     start / ready / stop / cpu / rss, plus what a trial reads around them

Implementations: ``bench.postfix.PostfixHarness`` and ``bench.nimbus.NimbusHarness``
(``NimbusDkimHarness`` is a variant of it). The trial runner (``bench.trial``) uses only
this interface, so both MTAs are measured by the same code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.sampling import CpuSample

__all__ = ["Placement", "MtaHarness"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """workdir: a fresh directory of this trial only (removed afterwards); sink_port: where
    the MTA relays to; outdir: the run's results directory; tag: this trial's file prefix
    there (``r1-4096-nimbus``)."""

    workdir: Path
    sink_port: int
    outdir: Path
    tag: str


class MtaHarness(ABC):
    """One instance of an MTA relaying everything from ``port`` to the sink.

    Life cycle: ``start()`` (prepare and launch) → ``ready()`` (blocks until it answers
    SMTP) → load → ``stop()`` → ``post_stats()``. ``cpu()`` and ``rss_kb()`` may be read
    between ready and stop.
    """

    name: str
    port: int

    @abstractmethod
    def start(self) -> None:
        """Write its configuration under the placement's workdir and launch it."""

    @abstractmethod
    def ready(self) -> None:
        """Block until it accepts mail on 127.0.0.1:port; BenchError naming why not."""

    @abstractmethod
    def stop(self) -> None:
        """Stop it (only the processes it started); safe to call more than once."""

    @abstractmethod
    def cpu(self) -> CpuSample:
        """CPU used so far by all of its processes (live and reaped)."""

    @abstractmethod
    def rss_kb(self) -> int:
        """Resident memory of all of its live processes now."""

    def failure(self) -> str | None:
        """Why a running trial cannot finish (the MTA exited), checked while waiting."""
        return None

    def drained(self) -> bool:
        """True when it holds no more mail (checked after the sink has counted N)."""
        return True

    def extra_stats(self) -> dict[str, Any]:
        """MTA-specific figures read right after the measured window."""
        return {}

    @abstractmethod
    def post_stats(self) -> dict[str, Any]:
        """After stop: what its logs say (delivered count, warnings, exit code)."""

    @abstractmethod
    def commands(self) -> list[str]:
        """Shell lines equivalent to what start() does, for the report."""
