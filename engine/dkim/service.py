"""The DKIM signing service: signs messages off the event loop, in worker processes.

Exports:
    DkimService     ``await sign(data, signers)`` -> signed bytes; ``await close()``

Signing runs in a ``concurrent.futures.ProcessPoolExecutor`` (``workers`` > 0, the
default: the node's own core stays free for SMTP) or in a thread (``workers=0``).
The pool is started on first use; when a worker dies the pool is broken for every
signing in flight (each fails with DkimError, the acceptor answers 4xx) and a new
pool is started for the next one. Workers are started with ``spawn`` (never ``fork``:
the node has threads, e.g. the spool writer) and ignore SIGINT/SIGTERM, so a signal
sent to the node's process group cannot fail the signings still in flight; they exit
when the service closes. A signing that takes longer than ``timeout`` fails with
DkimError; the worker finishes it in the background and its result is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from engine.dkim.signer import DkimError, Signer, checked_signature_headers

__all__ = ["DkimService"]

log = logging.getLogger("nimbus.dkim")


def _ignore_signals() -> None:
    """Worker initializer: the parent decides when workers stop (see the module doc)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class DkimService:
    """Signs messages without blocking the event loop.

    workers: signing processes; 0 signs in a thread of this process instead.
    timeout: longest one signing may take before DkimError.
    """

    def __init__(self, *, workers: int = 1, timeout: float = 30.0) -> None:
        if workers < 0:
            raise ValueError("workers must be >= 0")
        self.workers = workers
        self.timeout = timeout
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    @property
    def started(self) -> bool:
        """Whether the worker pool is running (started by the first signing)."""
        return self._pool is not None

    async def sign(self, data: bytes, signers: Sequence[Signer]) -> bytes:
        """``data`` with a DKIM-Signature for each signer prepended.

        Raises DkimError when it cannot be signed (bad key, unparsable header block,
        worker failure or timeout).
        """
        if self._closed:
            raise DkimError("DKIM signing service is closed")
        signers = tuple(signers)
        if not signers:
            return data
        try:
            async with asyncio.timeout(self.timeout):
                return await self._headers(data, signers) + data
        except TimeoutError:
            error = DkimError(f"DKIM signing took longer than {self.timeout:g}s")
        except DkimError as exc:
            error = exc
        log.error(
            "dkim_signing_failed",
            extra={
                "error": str(error),
                "signers": [f"{s.selector}._domainkey.{s.domain}" for s in signers],
            },
        )
        raise error

    async def _headers(self, data: bytes, signers: tuple[Signer, ...]) -> bytes:
        now = time.time()
        if self.workers == 0:
            return await asyncio.to_thread(checked_signature_headers, data, signers, now)
        pool = self._running_pool()
        try:
            future = pool.submit(checked_signature_headers, data, signers, now)
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            if self._pool is pool:  # the first to notice starts a new pool for the next
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
                log.error("dkim_worker_died", extra={"workers": self.workers})
            raise DkimError("a DKIM signing worker exited") from None

    def _running_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_signals,
            )
            log.info("dkim_workers_started", extra={"workers": self.workers})
        return self._pool

    async def close(self) -> None:
        """Stop the workers once they have answered what they were sent."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True)
