"""Log hooks: durable webhook publishing of log records (TSA and ``new_json``-style hooks).

Exports:
    LogHookPublisher   takes records from a LogWriter, persists them, POSTs them in batches

A hook's configuration is ``engine.policy.log_hook``; the SQLite queue and its
thread are ``engine.logs.hooks.store``; one hook's sender (batching, POST, backoff)
is ``engine.logs.hooks.sender``. This module keeps the intake filter, the policy decision
and the publisher's lifecycle.

Flow (KumoMTA ``configure_log_hook`` + ``log_hooks:new_json``, reference §7):

    LogWriter.emit -> on_record callback: drop LogRecord-origin records (no loops),
        keep the hooks whose record_types match; append to an in-memory list
    persister task: should_enqueue_log_record(msg, hook_name) per (record, hook)
        (False -> skip; None or a policy error -> keep), then ONE SQLite
        transaction for everything gathered since the last one
    sender task per hook: up to batch_size rows in seq order -> one POST of a JSON
        array; rows are deleted only after a 2xx, otherwise the same batch is
        retried with capped, jittered exponential backoff (never dropped)

Durability: ``db_path`` is an SQLite database in WAL mode with ``synchronous=NORMAL``
(table ``pending(seq, hook, json)``). A committed record survives a crash or
``kill -9`` of the MTA (the WAL is in the OS page cache); the last transactions
may be lost on an OS crash or power cut. Records still in memory (emitted but not
yet committed: one event-loop batch) are lost on a crash; ``close()`` commits them.
Pending rows are resumed at start-up. Delivery is at-least-once: a batch POSTed
just before a crash is POSTed again. One thread owns the connection and runs every
read and write, so the event loop never blocks on disk. Rows of a hook that is no
longer configured are kept (and reported at start-up). Only one node may use a
database: the node keeps it inside its locked spool directory.

Bounded disk: when more than ``max_pending`` rows wait for a hook (its endpoint
has been down for long), the oldest are deleted, with a warning and the
``dropped`` counter. At the default 1,000,000 rows of ~1 KB that is ~1 GB.
A non-2xx answer is retried like a network error, so a poison batch blocks its
hook until the endpoint accepts it or the cap drops it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import aiohttp

from engine.config.backoff import backoff_delay
from engine.logs.hooks.sender import HookSender, HookState, Transport, post
from engine.logs.hooks.store import STORE_ERRORS, Op, Store, insert_rows, trim_rows
from engine.logs.writer import LogWriter
from engine.policy.events import SHOULD_ENQUEUE_LOG_RECORD, PolicyFailure, Registry, Rejected
from engine.policy.log_hook import LogHook
from engine.policy.message import PolicyMessage
from engine.records import LogRecord
from engine.storage.writer import WriterClosed

__all__ = ["LogHookPublisher"]

log = logging.getLogger("nimbus.log_hooks")


class LogHookPublisher:
    """Persists records for each hook and POSTs them in batches.

    hooks: the webhooks (unique names). db_path: the SQLite file (``<spool>/loghooks.db``).
    policy: returns the current policy Registry (for ``should_enqueue_log_record``), or None.
    transport: POSTs a body, returns the status (tests); None = aiohttp.
    rand: jitter source in [0, 1) for the backoff.
    """

    def __init__(
        self,
        hooks: Iterable[LogHook],
        *,
        db_path: str | Path,
        policy: Callable[[], Registry] | None = None,
        transport: Transport | None = None,
        rand: Callable[[], float] = random.random,
        store_timeout: float = 30.0,
    ) -> None:
        self._hook_list = tuple(hooks)
        self.hooks = {h.name: h for h in self._hook_list}
        if len(self.hooks) != len(self._hook_list):
            raise ValueError("log hook names must be unique")
        self._policy = policy
        self._transport = transport
        self._rand = rand
        self._store = Store(Path(db_path), timeout=store_timeout)
        self._state = {name: HookState() for name in self.hooks}
        self._incoming: list[tuple[LogRecord, tuple[LogHook, ...]]] = []
        self._wake = asyncio.Event()
        self._persist_lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()
        self._opened = False
        self._attached = False
        self._closing = False
        self._running = False
        self._stopped = asyncio.Event()
        self.refused_after_close = 0

    # -- intake (synchronous, on the loop) ------------------------------------------

    def attach(self, log_writer: LogWriter) -> None:
        """Receive every record ``log_writer`` emits from now on."""
        if not self._attached:
            self._attached = True
            log_writer.on_record(self.offer)

    def offer(self, record: LogRecord) -> None:
        """Take one record: cheap filtering only; persisting happens in ``run``."""
        if record.reception_protocol == "LogRecord":  # made by a log hook: never loop
            return
        hooks = tuple(h for h in self._hook_list if h.wants(record))
        if not hooks:
            return
        if self._closing:
            self.refused_after_close += 1
            return
        self._incoming.append((record, hooks))
        self._wake.set()

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Open the database and resume pending rows (``run`` calls it)."""
        async with self._open_lock:
            if self._opened:
                return
            counts = await asyncio.to_thread(self._store.open)
            self._opened = True
        for name, n in counts.items():
            if name in self._state:
                self._state[name].added(n, float("-inf"))  # overdue: send at once
            else:
                log.warning("log_hook_unconfigured_rows_kept", extra={"hook": name, "rows": n})

    async def run(self) -> None:
        """Persist records and run one sender per hook until ``close()``; cancellable."""
        if self._closing:
            return
        self._running = True
        self._stopped.clear()
        try:
            await self.open()
            session: aiohttp.ClientSession | None = None
            transport = self._transport
            if transport is None:
                session = aiohttp.ClientSession()
                transport = partial(post, session)
            try:
                async with asyncio.TaskGroup() as tg:
                    senders = [
                        tg.create_task(self._sender(h, transport).run(), name=f"log-hook:{h.name}")
                        for h in self._hook_list
                    ]
                    await self._persist_loop()
                    for h, task in zip(self._hook_list, senders, strict=False):
                        if not self._state[h.name].busy:  # busy ones stop after the POST
                            task.cancel()
            finally:
                if session is not None:
                    await session.close()
        finally:
            self._running = False
            self._stopped.set()

    async def close(self) -> None:
        """Stop accepting, commit what is queued, stop the senders, close the database.

        A POST under way may finish (at most its hook's ``timeout``) so an accepted
        batch is not sent again; rows not yet delivered stay for the next start.
        """
        self._closing = True
        self._wake.set()
        if self._running:
            await self._stopped.wait()
        if self._incoming:
            await self.flush()
        await self._store.close()

    async def flush(self) -> None:
        """Return once every record offered so far is committed (or skipped by policy)."""
        await self.open()
        async with self._persist_lock:
            failures = 0
            while self._incoming:
                batch, self._incoming = self._incoming, []
                rows = await self._decide(batch)
                while rows:
                    try:
                        await self._store_rows(rows)
                        break
                    except STORE_ERRORS as exc:  # disk trouble, a stuck writer: keep retrying
                        failures += 1
                        if self._closing:
                            log.error(
                                "log_hook_records_lost_at_close",
                                extra={"records": len(rows), "error": str(exc)},
                            )
                            break
                        if failures == 1:
                            log.error(
                                "log_hook_database_write_failed",
                                extra={"records": len(rows), "error": str(exc)},
                            )
                        await asyncio.sleep(
                            backoff_delay(failures, base=0.5, cap=5.0, rand=self._rand())
                        )
                    except WriterClosed as exc:  # the store is gone: nothing to retry on
                        log.error(
                            "log_hook_records_lost_store_closed",
                            extra={"records": len(rows), "error": str(exc)},
                        )
                        break
                    except (TypeError, ValueError):  # a record JSON cannot hold: a bug
                        log.exception(
                            "log_hook_records_unserialisable",
                            extra={"records": len(rows)},
                        )
                        break

    def stats(self) -> dict[str, dict[str, int]]:
        """Per hook: pending, sent (records), batches, failed_attempts, dropped,
        skipped_by_policy, failing (1 while the last POST failed, else 0)."""
        return {
            name: {
                "pending": s.pending,
                "sent": s.sent,
                "batches": s.batches,
                "failed_attempts": s.failed_attempts,
                "dropped": s.dropped,
                "skipped_by_policy": s.skipped_by_policy,
                "failing": int(s.failing),
            }
            for name, s in self._state.items()
        }

    # -- persisting -----------------------------------------------------------------

    async def _persist_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()
            if self._closing:
                return

    async def _decide(
        self, batch: list[tuple[LogRecord, tuple[LogHook, ...]]]
    ) -> list[tuple[str, LogRecord | str]]:
        """(hook name, payload) rows to store, in order, after the policy's say."""
        try:
            registry = self._policy() if self._policy is not None else None
        except Exception:  # no policy is better than losing records
            log.exception("log_hook_policy_unavailable")
            registry = None
        if registry is None or not registry.has(SHOULD_ENQUEUE_LOG_RECORD):
            return [(h.name, rec) for rec, hooks in batch for h in hooks]
        pairs = [
            (rec, json.dumps(rec.to_json(), separators=(",", ":")), h)
            for rec, hooks in batch
            for h in hooks
        ]
        keep = await asyncio.gather(
            *(self._should_enqueue(registry, rec, text, h) for rec, text, h in pairs)
        )
        return [(h.name, text) for (_, text, h), ok in zip(pairs, keep, strict=False) if ok]

    async def _should_enqueue(
        self, registry: Registry, record: LogRecord, text: str, hook: LogHook
    ) -> bool:
        rcpt = (
            record.recipient
            if isinstance(record.recipient, str)
            else (record.recipient[0] if record.recipient else "")
        )
        msg = PolicyMessage(
            record.id, record.sender, rcpt, text.encode(), {"log_record": record.to_json()}
        )
        try:
            verdict = await registry.dispatch(SHOULD_ENQUEUE_LOG_RECORD, msg, hook.name)
        except Rejected:
            verdict = False
        except PolicyFailure:  # already logged by dispatch; keep the record
            verdict = None
        if verdict is False:
            self._state[hook.name].skipped_by_policy += 1
            return False
        return True

    async def _store_rows(self, rows: list[tuple[str, LogRecord | str]]) -> None:
        counts = Counter(name for name, _ in rows)
        ops: list[Op] = [partial(insert_rows, rows)]
        trimmed: list[str] = []
        for name, n in counts.items():
            st = self._state[name]
            excess = st.pending + n - self.hooks[name].max_pending
            if excess > 0:
                ops.append(partial(trim_rows, name, excess, st.inflight_upto))
                trimmed.append(name)
        results = await self._store.run(*ops)
        now = asyncio.get_running_loop().time()
        for name, n in counts.items():
            self._state[name].added(n, now)
        for name, dropped in zip(trimmed, results[1:], strict=False):
            st = self._state[name]
            st.removed(dropped)
            st.dropped += dropped
            if dropped and not st.dropping:
                st.dropping = True
                log.warning(
                    "log_hook_backlog_dropped",
                    extra={
                        "hook": name,
                        "max_pending": self.hooks[name].max_pending,
                        "dropped": dropped,
                    },
                )

    # -- sending (engine.logs.hooks.sender) --------------------------------------------

    def _sender(self, hook: LogHook, transport: Transport) -> HookSender:
        return HookSender(
            hook,
            self._state[hook.name],
            self._store,
            transport,
            rand=self._rand,
            closing=lambda: self._closing,
        )
