"""Which worker of a node this process is.

Exports:
    WorkerRole   index, count, runtime directory; the paths the workers share
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WorkerRole"]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRole:
    """One worker of a node run by ``nimbus mta --workers N`` (N > 1).

    index: this worker, 0 .. count-1 (its spool shard, log suffix and admin socket).
    count: the node's workers.
    runtime: the supervisor's private directory (mode 0700): admin sockets, the shared
        throttle store's socket, prometheus-client's multiprocess files.
    ready_fd: the pipe this worker writes its ports to once ready (-1: none).
    """

    index: int
    count: int
    runtime: Path
    ready_fd: int = -1

    def tell_ready(self, ports: dict[str, int]) -> None:
        """Tell the supervisor this worker serves (one JSON line of its ports)."""
        if self.ready_fd < 0:
            return
        with contextlib.suppress(OSError):  # the supervisor is gone: so are we, soon
            os.write(self.ready_fd, json.dumps(ports).encode() + b"\n")
            os.close(self.ready_fd)

    def admin_socket(self, index: int) -> Path:
        """The private HTTP socket worker ``index`` serves the node's app on."""
        return self.runtime / f"worker-{index}.sock"

    @property
    def throttle_socket(self) -> Path:
        """The supervisor's throttle store (limits that hold for the node)."""
        return self.runtime / "throttle.sock"

    @property
    def metrics_dir(self) -> Path:
        """PROMETHEUS_MULTIPROC_DIR of every worker."""
        return self.runtime / "metrics"

    @property
    def log_suffix(self) -> str:
        """Appended to this worker's log segment names."""
        return f".w{self.index}"
