"""The node: builds every part, owns every task, and shuts down in order.

Exports:
    Node        run() until stop(); ``ports`` once listening
    run_mta(settings)   ``nimbus mta``: run a Node with signal handling

Start order: HTTP listener (readiness, ``/api/check-liveness/v1``, answers 503 "waiting
for spool startup"; liveness, ``/api/check-alive/v1``, 200 from now until it closes)
-> policy -> spool recovery into the scheduled queues -> SMTP listener -> ready.

Shutdown order (SIGTERM/SIGINT), as STYLE.md §6:
    1. readiness and injection answer 503 "shutting down"; new SMTP sessions and
       the next MAIL of open sessions get 421 4.3.2
    2. the scheduler stops handing out messages; ready queues finish the message
       in hand on each connection until ``delivery.shutdown_deadline``
    3. what is left is cancelled; it stays in the spool for the next start
    4. transfer jobs stop; with ``cluster.xfer_on_shutdown`` (default) and peers, the
       whole spool goes to the peers within ``cluster.xfer_deadline`` (scale-in,
       engine/xfer/sender.py); what no peer takes stays spooled
    5. listeners close (open sessions are hung up), spool commits still running
       finish, DNS lookups are cancelled, log records are flushed, the spool closes
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from engine.admin.http import add_admin_routes
from engine.admin.node_routes import NodeFacts
from engine.admin.ops import AdminOps
from engine.admin.persist import STATE_FILE
from engine.admin.state import AdminApi, AdminState
from engine.admin.status import Worker
from engine.admin.status_page import add_status_routes
from engine.admin.status_readings import StatusSources
from engine.config.settings import ConfigError, Settings
from engine.config.units import parse_hostport
from engine.delivery.connector import SmtpClientConnector
from engine.delivery.mx import MxResolver
from engine.delivery.tls_policy import TlsPolicies, tls_context_factory
from engine.dkim.service import DkimService
from engine.logs.hooks.publisher import LogHookPublisher
from engine.logs.metrics import GaugeReading, Metrics, oldest_age, per_site
from engine.logs.rates import RecordRates
from engine.logs.writer import LogWriter
from engine.policy.events import (
    HTTP_SERVER_VALIDATE_AUTH_BASIC,
    INIT,
    PolicyFailure,
    PolicyLoadError,
    Registry,
    Rejected,
)
from engine.policy.loader import load_policy
from engine.policy.log_hook import tsa_hooks
from engine.queues.controls import Controls
from engine.queues.outcomes import Attempt, Outcomes
from engine.queues.routing import Router
from engine.queues.scheduled import Scheduler
from engine.reception.accept import Acceptor
from engine.reception.auth import Credentials, FailureLimiter
from engine.reception.http import build_app
from engine.reception.http_listener import HttpListener
from engine.reception.listen import binding
from engine.reception.shedding import Reason, Shedder, Shedding
from engine.reception.smtp import SmtpListener
from engine.shaping.gate import Gate
from engine.shaping.overlay import Overlay
from engine.shaping.throttle.factory import make_store
from engine.shaping.tsa_client import TsaSubscriber
from engine.storage.shards import adopt_into, adopted_dirs, own_dir
from engine.storage.spool import Spool, SpoolError
from engine.suppression.redis_store import RedisSuppressionStore
from engine.suppression.service import Suppressions
from engine.suppression.store import LocalStore
from engine.workers.fanout import copy_entries, install_fanout
from engine.workers.role import WorkerRole
from engine.xfer.receiver import add_xfer_routes
from engine.xfer.secret import load_secret
from engine.xfer.sender import Transfers

__all__ = ["Node", "run_mta"]


def _fingerprint(directory: str) -> tuple:
    """(path, mtime, size) of every policy file; follows symlinks (a ConfigMap update
    swaps a ``..data`` symlink, which changes what each file resolves to)."""
    out = []
    for path in sorted(Path(directory).rglob("*")):
        if (
            any(part == "__pycache__" or part.startswith("..") for part in path.parts)
            or not path.is_file()
        ):
            continue
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(out)


log = logging.getLogger("nimbus.node")

# Recovered messages re-inserted between two yields to the loop. With the queue config
# cached each costs a few microseconds and awaits nothing: 300,000 in one go held the
# loop 1.1 s, past a 1 s liveness probe (GET /api/check-alive/v1) and every scrape;
# yielding every 1024 the longest stall of such a start was 0.15 s (a GC pass).
_RECOVER_YIELD_EVERY = 1024


class Node:
    """One MTA node.

    settings: the node's settings (see engine.config.settings).
    role: which worker of a node with several this process is (``nimbus mta --workers N``,
        engine/workers/); None: the node's one process.
    """

    def __init__(self, settings: Settings, role: WorkerRole | None = None) -> None:
        self.settings = settings
        self.role = role
        index, count = (role.index, role.count) if role is not None else (0, 1)
        self.metrics = Metrics()
        self.logs = LogWriter(settings.log, suffix=role.log_suffix if role is not None else "")
        self.logs.on_record(self.metrics.count_record)
        self.rates = RecordRates()  # the status page's 1- and 5-minute record rates
        self.logs.on_record(self.rates.count)
        self.redis_degraded = False
        own = own_dir(settings.spool.dir, index, count)
        self._adopt = adopted_dirs(settings.spool.dir, index, count)
        self.spool = Spool(
            dataclasses.replace(settings.spool, dir=str(own)), on_commit=self.metrics.on_commit
        )
        # Plain policy handlers run here, so policy.event_timeout bounds them (events.py);
        # one pool for every loaded policy, bounded so stuck handlers cannot pile up threads.
        self._policy_threads = ThreadPoolExecutor(
            max_workers=settings.policy.handler_threads, thread_name_prefix="nimbus-policy"
        )
        self._registry = Registry(executor=self._policy_threads)
        self.scheduler = Scheduler(self._on_due)
        self.resolver = MxResolver(settings.dns)
        tls_contexts = tls_context_factory(settings.delivery.tls_ca_file)
        self.tls_policies = TlsPolicies(
            dns=settings.dns,
            delivery=settings.delivery,
            resolve_addresses=self.resolver.resolve_addresses,
            contexts=tls_contexts,
        )
        self.outcomes = Outcomes(
            spool=self.spool,
            scheduler=self.scheduler,
            logs=self.logs,
            queue_config=self._queue_config,
            node_id=settings.effective_node_id,
            policy=self.policy,
        )
        # Suspensions and admin bounces survive a restart (README "Admin state").
        self.admin_state = AdminState(Path(settings.spool.dir) / STATE_FILE)
        self.overlay = Overlay()
        self.tsa_subscriber = (
            TsaSubscriber(
                settings.redis, self.overlay, resync_interval=settings.tsa.resync_interval
            )
            if settings.redis.url
            else None
        )
        self.controls = Controls(self.admin_state, self.overlay)
        self.throttles = make_store(
            settings.redis,
            settings.cluster,
            on_state_change=self._redis_state,
            state_dir=Path(settings.spool.dir),
            workers=count,
            node_socket=role.throttle_socket if role is not None else None,
        )
        self.gate = Gate(self.throttles, settings.redis.key_prefix)
        self.router = Router(
            settings=settings,
            policy=self.policy,
            resolver=self.resolver,
            connector=SmtpClientConnector(
                hostname=settings.effective_hostname,
                tls_context_factory=tls_contexts,
            ),
            spool=self.spool,
            outcomes=self.outcomes,
            controls=self.controls,
            gate=self.gate,
            tls_policy=self.tls_policies,
        )
        self.log_hooks: LogHookPublisher | None = None
        self._background: list[asyncio.Task] = []  # run until shutdown cancels them
        ops = AdminOps(
            scheduler=self.scheduler, router=self.router, spool=self.spool, outcomes=self.outcomes
        )
        cluster_secret = load_secret(settings.cluster)
        self.transfers = Transfers(
            spool=self.spool,
            ops=ops,
            outcomes=self.outcomes,
            logs=self.logs,
            cluster=settings.cluster,
            secret=cluster_secret,
            node_id=settings.effective_node_id,
            on_result=self._count_xfer,
        )
        self.admin = AdminApi(
            bounce_now=ops.bounce_now,
            rebind=ops.rebind,
            inspect_message=ops.inspect_message,
            inspect_sched_q=ops.inspect_sched_q,
            ready_q_states=ops.ready_q_states,
            queue_summary=ops.queue_summary,
            xfer=lambda req: self.transfers.start(req.criteria, req.target, req.reason),
            xfer_cancel=self.transfers.cancel,
            xfer_jobs=self.transfers.jobs,
            warmup_status=lambda: self.gate.warmup.status(self._registry.warmup),
            spool_compact=self.spool.compact,
            inspect_ready_q=ops.inspect_ready_q,
            abort_ready_q_conn=ops.abort_ready_q_conn,
            retry_now=ops.retry_now,
            provider_summary=ops.provider_summary,
            resolve_egress_path=ops.resolve_egress_path,
            state=self.admin_state,
        )
        # Signing processes start on the first dkim_sign (none for policies that never sign).
        self.dkim = DkimService(workers=settings.dkim.workers, timeout=settings.dkim.timeout)
        self.suppressions = Suppressions(
            settings.suppression,
            RedisSuppressionStore(settings.redis)
            if settings.redis.url
            else LocalStore(Path(settings.spool.dir) / "suppression.db"),
        )
        self.logs.on_record(self.suppressions.observe)
        self.acceptor = Acceptor(
            spool=self.spool,
            scheduler=self.scheduler,
            logs=self.logs,
            policy=self.policy,
            node_id=settings.effective_node_id,
            dkim=self.dkim,
            suppressions=self.suppressions,
        )
        self.shedder = Shedder(
            settings.shedding,
            spool_dir=Path(settings.spool.dir),
            spool_health=self._spool_health,
            on_change=self._shedding_changed,
        )
        self.credentials = Credentials(settings.http.auth_dir or None)
        sessions = self.metrics.connections.labels("esmtp_listener")
        # One brute-force brake for SMTP AUTH and both HTTP APIs: a guesser gets no extra
        # tries on another door.
        auth_limiter = FailureLimiter.from_settings(settings.http)
        self.smtp = SmtpListener(
            settings=settings,
            acceptor=self.acceptor,
            policy=self.policy,
            credentials=self.credentials,
            on_connection=sessions.inc,
            shedding=self._shedding,
            auth_limiter=auth_limiter,
        )
        http_app = build_app(
            settings=settings,
            acceptor=self.acceptor,
            credentials=self.credentials,
            metrics_=self.metrics,
            policy=self.policy,
            shedding=self._shedding,
            auth_limiter=auth_limiter,
        )
        add_admin_routes(
            http_app,
            admin=self.admin,
            suppressions=self.suppressions,
            settings=settings,
            audit=self.logs.emit,
            auth_limiter=auth_limiter,
            node=NodeFacts(
                node_id=settings.effective_node_id,
                started=time.time(),
                metrics_json=self.metrics.to_json,
            ),
        )
        add_status_routes(http_app, read=self._status_sources().read)
        add_xfer_routes(
            http_app,
            acceptor=self.acceptor,
            secret=cluster_secret,
            node_id=settings.effective_node_id,
            # The message (DKIM-signed, with our Received: header) plus its envelope line.
            max_size=2 * max(settings.smtp.max_message_size, settings.http.max_request_size)
            + (1 << 20),
            shedding=self._shedding,
            queued=self._queued,
            on_result=self._count_xfer,
        )
        if role is not None:
            install_fanout(http_app, role, self.metrics)
        self.http = HttpListener(http_app)
        self.metrics.attach_gauges(self._gauges)
        self.ports: dict[str, int] = {}
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()

    def policy(self) -> Registry:
        return self._registry

    def _shedding(self) -> Shedding | None:
        return self.shedder.current

    async def _spool_health(self) -> str | None:
        # Generous: under load a probe queues behind real commits (milliseconds each).
        return await self.spool.check_health(timeout=max(5.0, 2 * self.settings.shedding.interval))

    def _shedding_changed(self, state: Shedding | None) -> None:
        for reason in Reason:
            self.metrics.shedding.labels(reason.value).set(
                1 if state is not None and state.reason == reason else 0
            )

    def _count_xfer(self, result: str) -> None:
        self.metrics.xfer.labels(result).inc()

    def _queued(self) -> int:
        """Messages this node holds and has not disposed of (scheduled, ready, being
        transferred); what a peer's scale-in weighs to spread by load."""
        return self.spool.count

    def _status_sources(self) -> StatusSources:
        """What the status page (``GET /``, ``/api/admin/status/v1``) reads."""
        return StatusSources(
            node_id=self.settings.effective_node_id,
            scheduler=self.scheduler,
            ready=self.router.ready,
            not_ready=lambda: self.acceptor.not_ready,
            draining=lambda: self._stop.is_set(),
            shedding=self._shedding,
            admin=self.admin_state,
            overlay=self.overlay,
            tsa=self.tsa_subscriber,
            redis_configured=bool(self.settings.redis.url),
            redis_degraded=lambda: self.redis_degraded,
            spool=self.spool,
            rates=self.rates,
            transfers=self.transfers.jobs,
            warmup=lambda: self.gate.warmup.readings(self._registry.warmup),
            workers=self._workers,
        )

    def _workers(self) -> list[Worker]:
        dkim = self.dkim
        return [
            Worker(
                name="DKIM signing processes",
                count=dkim.workers,
                detail="running" if dkim.started else "start at the first signing",
            ),
            Worker(name="policy handler threads", count=self.settings.policy.handler_threads),
        ]

    def _redis_state(self, degraded: bool) -> None:
        self.redis_degraded = degraded
        self.metrics.redis_degraded.set(1 if degraded else 0)
        if degraded:
            self.metrics.redis_outages.inc()

    async def _queue_config(self, queue: str) -> Any:
        return await self.router.queue_config(queue)

    def _on_due(self, msg: Any) -> None:
        self.router.route(msg)

    def _gauges(self) -> GaugeReading:
        reading: GaugeReading = {
            "scheduled": dict(self.scheduler.counts),
            "ready": {name: len(q.queue) for name, q in self.router.ready.items()},
            "connections_in": {"esmtp_listener": self.smtp.open_sessions},
            "connections_out": {name: q.connections for name, q in self.router.ready.items()},
            "spool_bytes": self.spool.size_bytes(),
            "spool_messages": self.spool.count,
            "log_hooks": self.log_hooks.stats() if self.log_hooks is not None else {},
            "log_records_dropped": self.logs.dropped,
            "queued": self.spool.count,
            "oldest_message_age": oldest_age(self.spool.oldest_created(), time.time()),
            "site_backlog": per_site((q.site, len(q.queue)) for q in self.router.ready.values()),
            "xfer_pending": self.transfers.held(),
            "suppression_refused": dict(self.suppressions.refused),
            "suppression_recorded": dict(self.suppressions.recorded_by),
            "warmup": self.gate.warmup.readings(self._registry.warmup),
            "warmup_deferred": self.gate.warmup.deferred,
        }
        if (disk := self.shedder.disk) is not None:
            reading["spool_disk_free_bytes"] = disk.free
            reading["spool_disk_size_bytes"] = disk.size
        return reading

    def request_reload(self) -> None:
        """Reload the policy soon (SIGHUP)."""
        self._reload.set()

    def _load(self) -> Registry:
        s = self.settings
        return load_policy(
            s.policy.dir,
            timeout=s.policy.event_timeout,
            on_dispatch=self.metrics.on_policy_dispatch,
            services=self,
            executor=self._policy_threads,
        )

    async def reload_policy(self, reason: str) -> bool:
        """Load the policy again; on success swap it in, else keep the running one.

        Returns True when the new policy is running.
        """
        try:
            registry = await asyncio.to_thread(self._load)
            await registry.dispatch(INIT)
        except (PolicyLoadError, ConfigError, PolicyFailure, Rejected) as exc:
            self.metrics.policy_reloads.labels("error").inc()
            log.error(
                "policy_reload_failed",
                extra={"reason": reason, "error": str(exc)},
            )
            return False
        self._registry = registry
        self.router.forget_policy_answers()
        self.metrics.policy_reloads.labels("ok").inc()
        log.info("policy_reloaded", extra={"reason": reason})
        return True

    async def _watch_policy(self, seen: tuple) -> None:
        """Reload on SIGHUP, or when a file in the policy directory changes.

        seen: the fingerprint of the policy that is running (taken before the node is
        ready, so an edit made right after readiness is never mistaken for the baseline).
        """
        interval = self.settings.policy.reload_interval
        while True:
            try:
                async with asyncio.timeout(interval or None):
                    await self._reload.wait()
                reason = "SIGHUP"
            except TimeoutError:
                reason = "files changed"
            self._reload.clear()
            now = await asyncio.to_thread(_fingerprint, self.settings.policy.dir)
            if reason == "SIGHUP" or now != seen:
                seen = now
                await self.reload_policy(reason)

    def stop(self) -> None:
        """Begin an orderly shutdown (idempotent; safe from a signal handler)."""
        self._stop.set()

    async def run(self) -> None:
        """Start everything, serve until ``stop()``, then shut down in order."""
        s = self.settings
        loaded = await asyncio.to_thread(_fingerprint, s.policy.dir)
        self._registry = self._load()
        self._warn_if_injection_disabled()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.logs.run(), name="log-writer")
            shared = self.role is not None  # the node's workers share the ports
            with binding("HTTP", s.http.listen, "http.listen"):
                host, port = parse_hostport(s.http.listen)
                self.ports["http"] = (await self.http.start(host, port, reuse_port=shared))[1]
            if self.role is not None:
                private = self.role.admin_socket(self.role.index)
                with contextlib.suppress(FileNotFoundError):
                    private.unlink()  # left by this worker's previous life
                await self.http.start_private(str(private))
            await self._init_policy()
            if self.role is not None:
                await copy_entries(self.role, self.admin)  # before recovered mail meets them
            await self._start_log_hooks(tg)
            if self.tsa_subscriber is not None:
                self._background.append(
                    tg.create_task(self.tsa_subscriber.run(), name="tsa-subscriber")
                )
            await self.suppressions.store.open()
            self._background.append(tg.create_task(self.suppressions.run(), name="suppression"))
            await self._recover()
            # One sample before SMTP listens, so a node that starts short of disk or memory
            # never takes a session it should have shed; then the sampler owns the state.
            await self._sample_load()
            self._background.append(tg.create_task(self.shedder.run(), name="load-shedding"))
            scheduler = tg.create_task(self.scheduler.run(), name="scheduler")
            watcher = tg.create_task(self._watch_policy(loaded), name="policy-watcher")
            with binding("SMTP", s.smtp.listen, "smtp.listen"):
                host, port = parse_hostport(s.smtp.listen)
                self.ports["smtp"] = (await self.smtp.start(host, port, reuse_port=shared))[1]
            self.acceptor.set_ready()
            log.info(
                "ready" if self.role is None else "worker_ready",
                extra={
                    "smtp_port": self.ports["smtp"],
                    "http_port": self.ports["http"],
                    "node_id": s.effective_node_id,
                    "spooled": self.spool.count,
                    "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
                    **({"worker": self.role.index} if self.role is not None else {}),
                },
            )
            self.ready.set()
            await self._stop.wait()
            watcher.cancel()
            await self._shutdown(scheduler)

    def _warn_if_injection_disabled(self) -> None:
        """One warning at start when no HTTP inject request can authenticate: no users
        directory and no ``http_server_validate_auth_basic`` handler (every inject is 401)."""
        if self.settings.http.auth_dir or self._registry.has(HTTP_SERVER_VALIDATE_AUTH_BASIC):
            return
        log.warning(
            "http_injection_disabled",
            extra={
                "reason": "NIMBUS_HTTP_AUTH_DIR is not set and the policy does not handle "
                "http_server_validate_auth_basic: every inject request is refused with 401",
                "fix": "set NIMBUS_HTTP_AUTH_DIR (http.auth_dir) to a directory of users",
            },
        )

    async def _sample_load(self) -> None:
        self._shedding_changed(None)  # every reason's gauge exists (0) from the start
        try:
            await self.shedder.sample()
        except (OSError, ValueError) as exc:
            log.error("load_shedding_sample_failed", extra={"error": str(exc)})

    async def _init_policy(self) -> None:
        try:
            await self._registry.dispatch(INIT)
        except PolicyFailure as exc:
            log.error("policy_init_failed", extra={"error": str(exc)})

    async def _start_log_hooks(self, tg: asyncio.TaskGroup) -> None:
        """Publish log records to the TSA (NIMBUS_TSA_URLS) and the policy's webhooks."""
        hooks = tsa_hooks(self.settings.tsa.urls) + list(self._registry.log_hooks)
        if not hooks:
            return
        self.log_hooks = LogHookPublisher(
            hooks, db_path=self.spool.dir / "loghooks.db", policy=self.policy
        )
        await self.log_hooks.open()
        self.log_hooks.attach(self.logs)
        self._background.append(tg.create_task(self.log_hooks.run(), name="log-hooks"))

    async def _recover(self) -> None:
        started = time.monotonic()
        messages, quarantined = await self.spool.recover()
        for q in quarantined:
            log.error("spool_entry_quarantined", extra={"id": q.id, "reason": q.reason})
        messages.extend(await self._adopt_shards({m.id for m in messages}))
        now = time.time()
        expired = 0
        for index, msg in enumerate(messages):
            if index % _RECOVER_YIELD_EVERY == _RECOVER_YIELD_EVERY - 1:
                await asyncio.sleep(0)  # a big spool must not hold liveness and metrics
            cfg = await self.router.queue_config(msg.queue)
            if now - msg.created > cfg.max_age:
                self.outcomes.expire(msg, Attempt())
                expired += 1
            else:
                self.scheduler.insert(msg)
        log.info(
            "spool_recovered",
            extra={
                "messages": len(messages) - expired,
                "expired": expired,
                "quarantined": len(quarantined),
                "seconds": round(time.monotonic() - started, 3),
            },
        )

    async def _adopt_shards(self, own_ids: set[str]) -> list[Any]:
        """Move the messages of spools no worker owns into this one (engine/storage/
        shards.py); a spool that cannot be emptied now (locked, full) stays for the next
        start, logged."""
        moved: list[Any] = []
        for other in self._adopt:
            try:
                moved.extend(await adopt_into(self.spool, other, self.settings.spool, own_ids))
            except SpoolError as exc:
                log.error(
                    "spool_shard_not_adopted",
                    extra={"from": str(other), "error": f"{type(exc).__name__}: {exc}"},
                )
        return moved

    async def _shutdown(self, scheduler: asyncio.Task) -> None:
        s = self.settings
        log.info("shutting_down", extra={"deadline_seconds": s.delivery.shutdown_deadline})
        deadline = time.monotonic() + s.delivery.shutdown_deadline
        self.acceptor.set_draining()
        self.smtp.stop_accepting()
        self.scheduler.pause()
        await self.router.drain(deadline)
        scheduler.cancel()
        await self.transfers.close()
        if s.cluster.xfer_on_shutdown and "http" in self.ports:
            await self.transfers.scale_in(self.ports["http"])
        if self.log_hooks is not None:
            await self.log_hooks.close()  # commits queued records before its task stops
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.tsa_subscriber is not None:
            await self.tsa_subscriber.close()
        await self.gate.aclose()
        await self.smtp.close()
        await self.http.close()
        # A commit takes milliseconds: one second lets one land even if draining used the
        # whole deadline, so a message is never half-stored when the spool closes.
        await self.acceptor.close(max(deadline - time.monotonic(), 1.0))
        await self.resolver.close()
        await self.tls_policies.close()
        await self.dkim.close()
        await self.suppressions.close()
        await self.spool.close()
        self.logs.close()
        # A handler still running (timed out) cannot be stopped; don't wait for it here.
        self._policy_threads.shutdown(wait=False, cancel_futures=True)
        log.info("stopped", extra={"spooled": self.spool.count})


def _settle_gc() -> None:
    """Once the node is up: move what startup built (modules, policy tables, recovered
    queue records) out of the cyclic collector's sight, and collect young objects in
    larger batches. A relayed message allocates thousands of short-lived objects (parsed
    commands, records, futures); with the default threshold (700) the collector ran
    several generation-0 passes per message, each also walking the survivors of startup.
    Measured in the relay benchmark (A/B, same run): about 7 % less CPU per message.
    Reference counting still frees nearly everything at once; only cycles wait longer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


async def run_mta(settings: Settings, role: WorkerRole | None = None) -> None:
    """Run a node (or one worker of it: ``role``) until SIGTERM or SIGINT."""
    node = Node(settings, role)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.stop)
    loop.add_signal_handler(signal.SIGHUP, node.request_reload)
    settle = asyncio.create_task(_settle_gc_when_ready(node), name="settle-gc")
    try:
        await node.run()
    finally:
        settle.cancel()


async def _settle_gc_when_ready(node: Node) -> None:
    # The node process only: in a test process that runs many nodes, freezing would keep
    # each earlier node's cycles alive.
    await node.ready.wait()
    if node.role is not None:
        node.role.tell_ready(node.ports)
    _settle_gc()
