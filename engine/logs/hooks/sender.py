"""Log hook delivery: one hook's sender, POSTing its persisted rows in batches.

Exports:
    HookState    a hook's counters and what its sender waits on (event-loop only)
    HookSender   ``await run()``: wait for a batch, POST it, delete its rows after a 2xx;
                 the same batch is retried with backoff otherwise (never dropped)
    post         the aiohttp transport: POST a body for a hook, return the status
    Transport    the transport type (tests pass their own)

Used only by ``engine.logs.hooks.publisher`` (``LogHookPublisher`` runs one HookSender per hook).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import aiohttp

from engine.config.backoff import backoff_delay
from engine.logs.hooks.store import STORE_ERRORS, Store, delete_rows, read_rows
from engine.policy.log_hook import LogHook
from engine.storage.writer import WriterClosed

__all__ = ["HookState", "HookSender", "post", "Transport"]

log = logging.getLogger("nimbus.log_hooks")

Transport = Callable[[LogHook, bytes], Awaitable[int]]
"""POSTs a body for a hook and returns the HTTP status; raises on network errors."""


@dataclass(slots=True)
class HookState:
    """A hook's counters and what its sender waits on (event-loop only)."""

    pending: int = 0
    sent: int = 0
    batches: int = 0
    failed_attempts: int = 0
    dropped: int = 0
    skipped_by_policy: int = 0
    failing: bool = False  # the last POST failed; a 2xx clears it (nimbus_log_hook_failing)
    inflight_upto: int = 0  # highest seq being POSTed (the cap never drops those)
    busy: bool = False  # a POST and its bookkeeping are under way: close() lets it end
    dropping: bool = False
    arrivals: deque[list[float]] = field(default_factory=deque)  # [count, loop time]
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def added(self, count: int, now: float) -> None:
        self.pending += count
        self.arrivals.append([count, now])
        self.wake.set()

    def removed(self, count: int) -> None:
        """Forget ``count`` of the oldest pending rows (sent or dropped)."""
        self.pending = max(0, self.pending - count)
        while count > 0 and self.arrivals:
            head = self.arrivals[0]
            taken = min(count, int(head[0]))
            head[0] -= taken
            count -= taken
            if head[0] <= 0:
                self.arrivals.popleft()


class HookSender:
    """Sends one hook's pending rows until ``closing()`` is true.

    state: the hook's HookState (the publisher adds to ``pending`` as rows commit).
    rand: jitter source in [0, 1) for the backoff.
    """

    def __init__(
        self,
        hook: LogHook,
        state: HookState,
        store: Store,
        transport: Transport,
        *,
        rand: Callable[[], float],
        closing: Callable[[], bool],
    ) -> None:
        self.hook = hook
        self.state = state
        self._store = store
        self._transport = transport
        self._rand = rand
        self._closing = closing

    async def run(self) -> None:
        hook, st = self.hook, self.state
        db_failures = 0
        while not self._closing():
            await self._wait_for_batch(hook, st)
            try:
                if not await self._send_batch(hook, st):
                    return
                db_failures = 0
            except WriterClosed:  # the store closed under us (shutdown): nothing to send from
                if not self._closing():
                    log.error("log_hook_store_closed", extra={"hook": hook.name})
                return
            except STORE_ERRORS as exc:  # disk trouble, a stuck writer: a re-sent batch, no loss
                db_failures += 1
                log.error(
                    "log_hook_database_read_failed",
                    extra={"hook": hook.name, "error": str(exc), "failures": db_failures},
                )
                await asyncio.sleep(
                    backoff_delay(
                        db_failures, base=hook.backoff_base, cap=hook.backoff_max, rand=self._rand()
                    )
                )

    async def _send_batch(self, hook: LogHook, st: HookState) -> bool:
        """Read, POST and delete one batch; False when close() interrupted it."""
        rows = (await self._store.run(partial(read_rows, hook.name, hook.batch_size)))[0]
        if not rows:  # the cap dropped them meanwhile
            st.removed(st.pending)
            return True
        st.inflight_upto = rows[-1][0]
        body = ("[" + ",".join(text for _, text in rows) + "]").encode()
        try:
            st.busy = True
            if not await self._deliver(hook, st, body):
                return False
            deleted = (await self._store.run(partial(delete_rows, hook.name, rows[-1][0])))[0]
        finally:
            st.busy = False
            st.inflight_upto = 0
        st.removed(deleted)
        st.sent += len(rows)
        st.batches += 1
        st.dropping = False
        return True

    async def _wait_for_batch(self, hook: LogHook, st: HookState) -> None:
        """Until ``batch_size`` rows wait, or the oldest has waited ``max_latency``."""
        loop = asyncio.get_running_loop()
        while True:
            st.wake.clear()
            if st.pending >= hook.batch_size:
                return
            if st.pending > 0:
                oldest = st.arrivals[0][1] if st.arrivals else float("-inf")
                remaining = oldest + hook.max_latency - loop.time()
                if remaining <= 0:
                    return
                try:
                    async with asyncio.timeout(remaining):
                        await st.wake.wait()
                except TimeoutError:
                    return
            else:
                await st.wake.wait()

    async def _deliver(self, hook: LogHook, st: HookState, body: bytes) -> bool:
        """POST ``body`` until a 2xx (True) or a failure during close (False).

        Logs the first failure of a streak and the recovery.
        """
        failures = 0
        while True:
            try:
                status = await self._transport(hook, body)
                reason = f"HTTP {status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                status, reason = 0, f"{type(exc).__name__}: {exc}"
            if 200 <= status < 300:
                st.failing = False
                if failures:
                    log.info(
                        "log_hook_delivery_recovered",
                        extra={"hook": hook.name, "failed_attempts": failures},
                    )
                return True
            failures += 1
            st.failed_attempts += 1
            st.failing = True
            if failures == 1:
                log.warning(
                    "log_hook_delivery_failed",
                    extra={
                        "hook": hook.name,
                        "url": hook.display_url,
                        "reason": reason,
                        "pending": st.pending,
                    },
                )
            if self._closing():
                return False
            st.busy = False  # close() may cancel the backoff
            await asyncio.sleep(
                backoff_delay(
                    failures, base=hook.backoff_base, cap=hook.backoff_max, rand=self._rand()
                )
            )
            st.busy = True


async def post(session: aiohttp.ClientSession, hook: LogHook, body: bytes) -> int:
    headers = {"Content-Type": "application/json", **hook.headers}
    async with asyncio.timeout(hook.timeout):
        async with session.post(hook.url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status
