"""The node: builds every part, owns every task, and shuts down in order.

Exports:
    Node        run() until stop(); ``ports`` once listening
    run_mta(settings)   ``nimbus mta``: run a Node with signal handling

Start order: HTTP listener (liveness answers 503 "waiting for spool startup")
-> policy -> spool recovery into the scheduled queues -> SMTP listener -> ready.

Shutdown order (SIGTERM/SIGINT), as STYLE.md §6:
    1. liveness and injection answer 503 "shutting down"; new SMTP sessions and
       the next MAIL of open sessions get 421 4.3.2
    2. the scheduler stops handing out messages; ready queues finish the message
       in hand on each connection until ``delivery.shutdown_deadline``
    3. what is left is cancelled; it stays in the spool for the next start
    4. listeners close, log records are flushed, the spool is closed
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from .config import Settings
from .delivery.mx import MxResolver
from .events import PolicyFailure, Registry
from .logs import LogWriter
from .metrics import Metrics
from .outcomes import Attempt, Outcomes
from .policy_loader import load_policy
from .reception.accept import Acceptor
from .reception.auth import Credentials
from .reception.http import HttpListener, build_app
from .reception.smtp import SmtpListener
from .routing import Router
from .scheduled import Scheduler
from .spool import Spool
from .units import parse_hostport

__all__ = ["Node", "run_mta"]

log = logging.getLogger("nimbus.node")


class Node:
    """One MTA node.

    settings: the node's settings (see config.py).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.logs = LogWriter(settings.log)
        self.logs.on_record(self.metrics.count_record)
        self.spool = Spool(settings.spool, on_commit=self.metrics.on_commit)
        self._registry = Registry()
        self.scheduler = Scheduler(self._on_due)
        self.resolver = MxResolver(settings.dns)
        self.outcomes = Outcomes(spool=self.spool, scheduler=self.scheduler, logs=self.logs,
                                 queue_config=self._queue_config,
                                 node_id=settings.effective_node_id)
        self.router = Router(settings=settings, policy=self.policy, resolver=self.resolver,
                             spool=self.spool, outcomes=self.outcomes)
        self.acceptor = Acceptor(spool=self.spool, scheduler=self.scheduler, logs=self.logs,
                                 policy=self.policy, node_id=settings.effective_node_id)
        self.credentials = Credentials(settings.http.auth_dir or None)
        sessions = self.metrics.connections.labels("esmtp_listener")
        self.smtp = SmtpListener(settings=settings, acceptor=self.acceptor, policy=self.policy,
                                 credentials=self.credentials, on_connection=sessions.inc)
        self.http = HttpListener(build_app(settings=settings, acceptor=self.acceptor,
                                           credentials=self.credentials, metrics_=self.metrics))
        self.metrics.attach_gauges(self._gauges)
        self.ports: dict[str, int] = {}
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()

    def policy(self) -> Registry:
        return self._registry

    async def _queue_config(self, queue: str) -> Any:
        return await self.router.queue_config(queue)

    def _on_due(self, msg: Any) -> None:
        self.router.route(msg)

    def _gauges(self) -> dict[str, object]:
        return {
            "scheduled": dict(self.scheduler.counts),
            "ready": {name: len(q.queue) for name, q in self.router.ready.items()},
            "connections_in": {"esmtp_listener": self.smtp.open_sessions},
            "connections_out": {name: q.connections for name, q in self.router.ready.items()},
            "spool_bytes": self.spool.size_bytes(),
            "spool_messages": self.spool.count,
        }

    def stop(self) -> None:
        """Begin an orderly shutdown (idempotent; safe from a signal handler)."""
        self._stop.set()

    async def run(self) -> None:
        """Start everything, serve until ``stop()``, then shut down in order."""
        s = self.settings
        self._registry = load_policy(s.policy.dir, timeout=s.policy.event_timeout,
                                     on_dispatch=self.metrics.on_policy_dispatch)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.logs.run(), name="log-writer")
            self.ports["http"] = (await self.http.start(*parse_hostport(s.http.listen)))[1]
            await self._init_policy()
            await self._recover()
            scheduler = tg.create_task(self.scheduler.run(), name="scheduler")
            self.ports["smtp"] = (await self.smtp.start(*parse_hostport(s.smtp.listen)))[1]
            self.acceptor.set_ready()
            log.info("ready", extra={"smtp_port": self.ports["smtp"],
                                     "http_port": self.ports["http"],
                                     "node_id": s.effective_node_id,
                                     "spooled": self.spool.count})
            self.ready.set()
            await self._stop.wait()
            await self._shutdown(scheduler)

    async def _init_policy(self) -> None:
        try:
            await self._registry.dispatch("init")
        except PolicyFailure as exc:
            log.error("policy init failed; continuing with defaults", extra={"error": str(exc)})

    async def _recover(self) -> None:
        started = time.monotonic()
        messages, quarantined = await self.spool.recover()
        for q in quarantined:
            log.error("corrupt spool entry quarantined", extra={"id": q.id, "reason": q.reason})
        now = time.time()
        expired = 0
        for msg in messages:
            cfg = await self.router.queue_config(msg.queue)
            if now - msg.created > cfg.max_age:
                self.outcomes.expire(msg, Attempt())
                expired += 1
            else:
                self.scheduler.insert(msg)
        log.info("spool recovered", extra={"messages": len(messages) - expired,
                                           "expired": expired, "quarantined": len(quarantined),
                                           "seconds": round(time.monotonic() - started, 3)})

    async def _shutdown(self, scheduler: asyncio.Task) -> None:
        s = self.settings
        log.info("shutting down", extra={"deadline_seconds": s.delivery.shutdown_deadline})
        deadline = time.monotonic() + s.delivery.shutdown_deadline
        self.acceptor.set_draining()
        self.smtp.stop_accepting()
        self.scheduler.pause()
        await self.router.drain(deadline)
        scheduler.cancel()
        await self.smtp.close()
        await self.http.close()
        await self.spool.close()
        self.logs.close()
        log.info("stopped", extra={"spooled": self.spool.count})


async def run_mta(settings: Settings) -> None:
    """Run a node until SIGTERM or SIGINT."""
    node = Node(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.stop)
    await node.run()
