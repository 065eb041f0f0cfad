"""Routing: from a due message to its ready queue (egress source -> MX site).

Exports:
    Destination          a site name and the hosts to try
    destination_for(...) pure choice of sink / mx_list / MX lookup
    SourcePicker         smooth weighted round-robin over a pool (weight 0 excluded)
    Router               resolves config, source and site; feeds ReadyQueues;
                         ``resolve_path`` answers ``resolve-egress-path``
    ResolvedEgressPath   what a message for a domain through a source would get

For each scheduled queue with due messages, one routing task resolves the queue
config and destination once for the whole batch (MX answers are cached by the
resolver), then inserts each message into its ready queue. DNS failures become
TransientFailure (retry) or Bounce (NXDOMAIN, null MX), as RFC 5321 §5 and
RFC 7505 require.

MTA-STS (RFC 8461) is judged per recipient domain, here, where the domain is known:
with ``enable_mta_sts`` an MX-routed domain's policy is looked up (cached); ``enforce``
sends the domain's mail through its own ready queue on the shared site
(``<source>-><site>@smtp_client;mta-sts=<domain>``) whose route carries the policy and
whose path requires verified TLS, so one domain's broken policy defers only its own
mail (KumoMTA issue #484); ``testing`` delivers as usual and logs
``mta_sts_testing_failure`` once per policy id for MX hosts no pattern matches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import LRUCache, TLRUCache, TTLCache

from engine.config.settings import ConfigError, Settings
from engine.config.units import parse_hostport
from engine.delivery.mta_sts import MtaStsPolicy, StsMode, mx_matches
from engine.delivery.mx import MailExchanger, MxError
from engine.delivery.ports import Resolver, SmtpConnector, TlsPolicySource
from engine.policy.egress import (
    DEFAULT_POOL,
    EgressPathConfig,
    EgressPool,
    EgressSource,
    TlsMode,
)
from engine.policy.egress_options import apply_egress_options, check_egress_path
from engine.policy.events import (
    EXPLAIN_EGRESS_PATH_CONFIG,
    GET_EGRESS_PATH_CONFIG,
    GET_EGRESS_POOL,
    GET_EGRESS_SOURCE,
    GET_QUEUE_CONFIG,
    PolicyFailure,
    Registry,
)
from engine.policy.queue_config import QueueConfig, check_queue_config
from engine.queues.connect import ReadyRoute, Target
from engine.queues.controls import Controls
from engine.queues.naming import QueueName, ready_queue_name
from engine.queues.outcomes import Attempt, Outcomes
from engine.queues.ready import DeliveryParts, ReadyQueue
from engine.records import Message, Response
from engine.shaping.gate import Gate
from engine.storage.spool import Spool

__all__ = ["ResolvedEgressPath", "Destination", "destination_for", "SourcePicker", "Router"]

log = logging.getLogger("nimbus.routing")

CONFIG_TTL = 60.0
# Bound on each policy-answer cache (queues, paths, pools, sources): one entry per live
# queue or path; beyond it the least recently used answer is asked again.
POLICY_CACHE_SIZE = 10_000
READY_FULL_DELAY = 5.0
# Messages routed between two yields to the loop: one injection can make thousands due
# at once, and routing each (~100 us) must not hold every SMTP session and delivery.
_YIELD_EVERY = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    """site: the ready-queue site name. targets: hosts in the order to try them.
    explicit: targets came from configuration (sink, mx_list), not DNS, so they
    may be loopback addresses."""

    site: str
    targets: tuple[Target, ...]
    explicit: bool


def _explicit_targets(entries: tuple[str, ...], default_port: int) -> tuple[Target, ...]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 literal -> Targets."""
    out = []
    for entry in entries:
        if entry.count(":") > 1 and not entry.startswith("["):
            host, port = entry, default_port  # a bare IPv6 literal has no port
        else:
            host, port = parse_hostport(entry, default_port=default_port)
        out.append(Target(host=host, port=port))
    return tuple(out)


def destination_for(
    *,
    sink_endpoint: str | None,
    mx_list: tuple[str, ...] | None,
    mx_hosts: tuple[str, ...] | None,
    mx_site: str | None,
    smtp_port: int,
) -> Destination:
    """Pure choice of where a queue's mail goes.

    sink_endpoint: when set, everything goes there (the sink toggle).
    mx_list: explicit smarthosts from the queue config.
    mx_hosts / mx_site: the MX lookup result, used otherwise.
    """
    if sink_endpoint:
        return Destination(
            site=f"mx_list:{sink_endpoint}",
            targets=_explicit_targets((sink_endpoint,), smtp_port),
            explicit=True,
        )
    if mx_list:
        return Destination(
            site="mx_list:" + ",".join(mx_list),
            targets=_explicit_targets(mx_list, smtp_port),
            explicit=True,
        )
    assert mx_hosts is not None and mx_site is not None
    return Destination(
        site=mx_site,
        targets=tuple(Target(host=h, port=smtp_port) for h in mx_hosts),
        explicit=False,
    )


def _refresh_at(_queue: str, cfg: QueueConfig, now: float) -> float:
    """TLRUCache expiry of a queue config: its own refresh_interval."""
    return now + cfg.refresh_interval


def _policy_cache(clock: Callable[[], float]) -> TTLCache:
    return TTLCache(maxsize=POLICY_CACHE_SIZE, ttl=CONFIG_TTL, timer=clock)


class SourcePicker:
    """Smooth weighted round-robin (as nginx): over ``n`` picks each source appears
    ``n * weight / total`` times, interleaved. Weight-0 entries are never picked."""

    def __init__(self, pool: EgressPool) -> None:
        self.pool = pool
        self._entries = [(name, w) for name, w in pool.entries if w > 0]
        self._current = [0] * len(self._entries)
        self._total = sum(w for _, w in self._entries)
        self.sources = frozenset(name for name, _ in self._entries)
        """The names ``pick`` can return."""

    @property
    def round(self) -> int:
        """Picks in which every source appears (weight times): the total weight."""
        return self._total

    def pick(self) -> str | None:
        if not self._entries:
            return None
        best = 0
        for i, (_, weight) in enumerate(self._entries):
            self._current[i] += weight
            if self._current[i] > self._current[best]:
                best = i
        self._current[best] -= self._total
        return self._entries[best][0]


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedEgressPath:
    """The egress path a message for ``domain`` through ``source`` would get now.

    site: the MX site (or ``mx_list:...``); mx_hosts: the MX hosts looked up (empty for
    sink and mx_list); ready_queue: the ready queue's name; config: the effective path
    (policy answer with the TSA's overrides on top); policy_config: the policy's answer
    alone; overrides: the TSA's values by option; origins: where the policy says each
    option came from (``explain_egress_path_config``; {} when it does not say).
    """

    domain: str
    source: str
    pool: str
    site: str
    mx_hosts: tuple[str, ...]
    ready_queue: str
    config: EgressPathConfig
    policy_config: EgressPathConfig
    overrides: dict[str, object]
    origins: dict[str, str]


class Router:
    """Moves due messages into ready queues.

    settings: node settings (sink mode, DNS, delivery).
    policy: returns the current policy Registry (it may be reloaded).
    clock: monotonic seconds for the policy-answer caches (tests inject one).
    tls_policy: MTA-STS policies and TLSA records (None: neither is applied).
    """

    def __init__(
        self,
        *,
        settings: Settings,
        policy: Callable[[], Registry],
        resolver: Resolver,
        connector: SmtpConnector,
        spool: Spool,
        outcomes: Outcomes,
        controls: Controls | None = None,
        gate: Gate | None = None,
        clock: Callable[[], float] = time.monotonic,
        tls_policy: TlsPolicySource | None = None,
    ) -> None:
        self._settings = settings
        self._policy = policy
        self._resolver = resolver
        self._spool = spool
        self._outcomes = outcomes
        self._controls = controls or Controls()
        self._gate = gate
        self._parts = DeliveryParts(
            connector=connector,
            resolver=resolver,
            spool=spool,
            outcomes=outcomes,
            policy=policy,
            controls=self._controls,
            gate=gate,
            allow_loopback_mx=settings.delivery.allow_loopback_mx,
            tls_policy=tls_policy,
            workers=max(1, settings.node.workers),
        )
        self._tls_policy = tls_policy
        # The enforcing variant of each path object (verified TLS), so an unchanged ready
        # queue keeps seeing the same object and skips comparing its fields per message.
        self._enforcing: LRUCache[int, tuple[EgressPathConfig, EgressPathConfig]] = LRUCache(
            POLICY_CACHE_SIZE
        )
        self._sts_reported: LRUCache[tuple[str, str, tuple[str, ...]], bool] = LRUCache(
            POLICY_CACHE_SIZE
        )
        self._pending: dict[str, list[Message]] = {}
        self._tasks: set[asyncio.Task] = set()
        # Policy answers kept CONFIG_TTL (60 s, as KumoMTA) so a lookup isn't paid per message;
        # a queue config for its own refresh_interval (make_queue_config).
        self._queue_configs: TLRUCache[str, QueueConfig] = TLRUCache(
            maxsize=POLICY_CACHE_SIZE, ttu=_refresh_at, timer=clock
        )
        # The last good config per queue, kept past its TTL: a failing policy must not stall mail.
        self._last_good_configs: LRUCache[str, QueueConfig] = LRUCache(POLICY_CACHE_SIZE)
        self._paths: TTLCache[tuple, EgressPathConfig] = _policy_cache(clock)
        self._pickers: TTLCache[str, SourcePicker] = _policy_cache(clock)
        self._sources: TTLCache[str, EgressSource] = _policy_cache(clock)
        self.ready: dict[str, ReadyQueue] = {}
        self.accepting = True

    # -- policy lookups, cached ----------------------------------------------------

    async def queue_config(self, queue: str) -> QueueConfig:
        hit = self._queue_configs.get(queue)
        if hit is not None:
            return hit
        q = QueueName.parse(queue)
        try:
            cfg = await self._policy().dispatch(
                GET_QUEUE_CONFIG,
                q.domain,
                q.tenant,
                q.campaign,
                q.routing_domain,
                default=QueueConfig(),
            )
            check_queue_config(cfg, where=f"get_queue_config({queue})")
        except (PolicyFailure, ConfigError) as exc:
            # Keep using the last good config (or the defaults) rather than stall mail.
            if isinstance(exc, ConfigError):
                log.error("policy_answer_refused", extra={"error": str(exc)})
            return self._last_good_configs.get(queue) or QueueConfig()
        self._queue_configs[queue] = self._last_good_configs[queue] = cfg
        return cfg

    async def _picker(self, pool_name: str | None) -> SourcePicker:
        name = pool_name or DEFAULT_POOL.name
        picker = self._pickers.get(name)
        if picker is None:
            pool = await self._policy().dispatch(GET_EGRESS_POOL, name, default=None)
            if pool is None:
                pool = DEFAULT_POOL if name == DEFAULT_POOL.name else EgressPool(name=name)
            picker = self._pickers[name] = SourcePicker(pool)
        return picker

    async def _source_named(self, source_name: str) -> EgressSource:
        cached = self._sources.get(source_name)
        if cached is not None:
            return cached
        source = await self._policy().dispatch(
            GET_EGRESS_SOURCE, source_name, default=EgressSource(name=source_name)
        )
        self._sources[source_name] = source
        return source

    async def _path(self, routing_domain: str, source: str, site: str) -> EgressPathConfig:
        key = (routing_domain, source, site)
        hit = self._paths.get(key)
        if hit is not None:
            return hit
        cfg = await self._policy().dispatch(
            GET_EGRESS_PATH_CONFIG, routing_domain, source, site, default=EgressPathConfig()
        )
        where = f"get_egress_path_config({routing_domain}, {source}, {site})"
        try:
            check_egress_path(cfg, where=where)
        except ConfigError as exc:  # an option Nimbus would silently ignore: never deliver
            log.error("policy_answer_refused", extra={"error": str(exc)})
            raise PolicyFailure("get_egress_path_config", str(exc)) from None
        self._paths[key] = cfg
        return cfg

    async def _mta_sts(
        self, domain: str, path: EgressPathConfig, mx: MailExchanger | None
    ) -> MtaStsPolicy | None:
        """The domain's policy when it must be enforced, else None (none, ``none``, testing:
        reported here). Only MX-routed mail: sink and mx_list targets are not the
        domain's MX hosts, so a policy about those cannot apply (RFC 8461 §4)."""
        if mx is None or self._tls_policy is None or not path.enable_mta_sts:
            return None
        policy = await self._tls_policy.mta_sts(domain)
        if policy is None or policy.mode is StsMode.NONE:
            return None
        if policy.mode is StsMode.ENFORCE:
            return policy
        failing = tuple(h for h in mx.hosts if not mx_matches(policy.mx, h))
        key = (domain, policy.id, failing)
        if failing and key not in self._sts_reported:
            self._sts_reported[key] = True
            log.warning(
                "mta_sts_testing_failure",
                extra={
                    "domain": domain,
                    "id": policy.id,
                    "hosts": list(failing),
                    "mx": list(policy.mx),
                    "detail": "MX hosts match no mx pattern; delivered anyway (mode testing)",
                },
            )
        return None

    def _enforcing_path(self, path: EgressPathConfig) -> EgressPathConfig:
        """``path`` requiring TLS verified against the MX name (RFC 8461 §4.2)."""
        hit = self._enforcing.get(id(path))
        if hit is not None and hit[0] is path:
            return hit[1]
        enforced = dataclasses.replace(path, enable_tls=TlsMode.REQUIRED)
        self._enforcing[id(path)] = (path, enforced)
        return enforced

    async def resolve_path(self, domain: str, source: str | None) -> ResolvedEgressPath:
        """What a message for ``domain`` through egress source ``source`` (default
        ``unspecified``, as kcli) would be delivered with.

        Raises MxError when the domain's MX lookup fails, PolicyFailure when the policy
        fails to answer.
        """
        domain = domain.strip().lower()
        cfg = await self.queue_config(domain)
        pool = cfg.egress_pool or DEFAULT_POOL.name
        sink = self._settings.sink.endpoint if self._settings.sink.enabled else None
        mx_hosts: tuple[str, ...] = ()
        if sink:
            site = f"mx_list:{sink}"
        elif cfg.mx_list:
            site = "mx_list:" + ",".join(cfg.mx_list)
        else:
            mx = await self._resolver.resolve_mx(domain)
            site, mx_hosts = mx.site_name, tuple(mx.hosts)
        source = source or "unspecified"
        base = await self._path(domain, source, site)
        overrides = self._controls.path_overrides(domain, site, source, time.time())
        origins = await self._policy().dispatch(
            EXPLAIN_EGRESS_PATH_CONFIG, domain, source, site, default=None
        )
        return ResolvedEgressPath(
            domain=domain,
            source=source,
            pool=pool,
            site=site,
            mx_hosts=mx_hosts,
            ready_queue=ready_queue_name(source, site),
            config=apply_egress_options(overrides, base) if overrides else base,
            policy_config=base,
            overrides=overrides,
            origins={str(k): str(v) for k, v in (origins or {}).items()},
        )

    def forget_policy_answers(self) -> None:
        """Drop cached policy answers (after a reload) so new config applies at once."""
        self._queue_configs.clear()
        self._last_good_configs.clear()
        self._paths.clear()
        self._pickers.clear()
        self._sources.clear()

    # -- routing ---------------------------------------------------------------

    def route(self, msg: Message) -> None:
        """Called by the scheduler for each due message."""
        batch = self._pending.get(msg.queue)
        if batch is not None:
            batch.append(msg)
            return
        self._pending[msg.queue] = [msg]
        task = asyncio.create_task(self._route_queue(msg.queue), name=f"route:{msg.queue}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _route_queue(self, queue: str) -> None:
        while self._pending.get(queue):
            batch = self._pending[queue]
            self._pending[queue] = []
            try:
                await self._route_batch(queue, batch)
            except PolicyFailure as exc:
                for msg in batch:
                    await self._outcomes.transient(msg, exc.response, Attempt())
            except Exception as exc:  # a bug must cost a retry, never strand the batch
                log.exception("routing_failed", extra={"queue": queue})
                response = Response.parse(
                    451, f"4.3.0 internal routing error: {type(exc).__name__}"
                )
                for msg in batch:
                    await self._outcomes.transient(msg, response, Attempt())
        self._pending.pop(queue, None)

    def _held(self, queue: str, batch: list[Message]) -> list[Message]:
        """Apply operator/TSA bounces and suspensions; returns the messages still to route."""
        now = time.time()
        bounce = self._controls.bounce(queue, now)
        if bounce is not None:
            reason, log_it = bounce
            for msg in batch:
                self._outcomes.admin_bounce(msg, reason, log=log_it)
            return []
        hold = self._controls.suspended(queue, now)
        if hold is not None:
            for msg in batch:
                self._outcomes.delay(msg, max(1.0, hold.expires - now))
            return []
        return batch

    async def _route_batch(self, queue: str, batch: list[Message]) -> None:
        batch = self._held(queue, batch)
        if not batch:
            return
        cfg = await self.queue_config(queue)
        q = QueueName.parse(queue)
        sink = self._settings.sink.endpoint if self._settings.sink.enabled else None
        try:
            mx = None
            if not sink and not cfg.mx_list:
                mx = await self._resolver.resolve_mx(q.destination)
        except MxError as exc:
            response = Response.parse(exc.code, f"{exc.enhanced} {exc}")
            for msg in batch:
                if response.is_transient:
                    await self._outcomes.transient(msg, response, Attempt())
                else:
                    self._outcomes.bounced(msg, response, Attempt())
            return
        for index, msg in enumerate(batch):
            if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)  # thousands due at once (one big injection)
            await self._insert_ready(msg, q, cfg, sink, mx)

    async def _effective_path(self, destination: str, source: str, site: str) -> EgressPathConfig:
        """The policy's egress path with the TSA's SetConfig overrides on top."""
        path = await self._path(destination, source, site)
        overrides = self._controls.path_overrides(destination, site, source, time.time())
        return apply_egress_options(overrides, path) if overrides else path

    async def _choose_source(
        self, msg: Message, q: QueueName, pool: str, site: str
    ) -> tuple[EgressSource, EgressPathConfig] | None:
        """Weighted round-robin over the pool, skipping sources whose source_selection_rate
        for this path is spent (KumoMTA) or whose warm-up window is used up; when every
        source is, the message waits for the soonest one. None when the message was given
        back (or failed)."""
        picker = await self._picker(pool)
        if not picker.sources:
            response = Response.parse(
                451,
                f"4.4.4 no non-zero-weighted sources available for {msg.queue} (pool {pool})",
            )
            await self._outcomes.transient(msg, response, Attempt(egress_pool=pool))
            return None
        tried: set[str] = set()
        soonest: float | None = None
        warming = False
        # One round of the picker (its total weight) names every source at least once.
        for _ in range(picker.round):
            name = picker.pick()
            if name is None or name in tried:
                continue
            tried.add(name)
            source = await self._source_named(name)
            path = await self._effective_path(q.destination, source.name, site)
            wait = await self._selection_wait(path, pool, source.name, site)
            if wait is None:
                wait = await self._warmup_wait(source.name, path)
                warming |= wait is not None
            if wait is None:
                return source, path
            soonest = wait if soonest is None else min(soonest, wait)
            if len(tried) == len(picker.sources):
                break
        if warming and self._gate is not None:
            self._gate.warmup.deferred += 1
        self._outcomes.delay(msg, soonest or 1.0)  # never a bounce: the next window opens
        return None

    async def _selection_wait(
        self, path: EgressPathConfig, pool: str, source: str, site: str
    ) -> float | None:
        if self._gate is None:
            return None
        return await self._gate.selection_wait(path, pool, source, site)

    async def _warmup_wait(self, source: str, path: EgressPathConfig) -> float | None:
        """None when ``source``'s warm-up schedule (if any) has room for one more message
        to this path's provider (and counts it), else seconds until its window ends."""
        schedule = self._policy().warmup.get(source)
        if schedule is None or self._gate is None:
            return None
        return await self._gate.warmup.take(schedule, path.provider_name)

    async def _insert_ready(
        self, msg: Message, q: QueueName, cfg: QueueConfig, sink: str | None, mx
    ) -> None:
        site = (
            f"mx_list:{sink}"
            if sink
            else ("mx_list:" + ",".join(cfg.mx_list) if cfg.mx_list else mx.site_name)
        )
        chosen = await self._choose_source(msg, q, cfg.egress_pool or DEFAULT_POOL.name, site)
        if chosen is None:
            return
        source, path = chosen
        name = ready_queue_name(source.name, site)
        sts = await self._mta_sts(q.destination, path, mx)
        if sts is not None:  # this domain's own queue on the shared site (KumoMTA #484)
            name, path = f"{name};mta-sts={sts.domain}", self._enforcing_path(path)
        ready = self.ready.get(name)
        # Usually the very same cached object: skip comparing its ~60 fields per message.
        if (
            ready is None
            or (ready.path is not path and ready.path != path)
            or (ready.route.mta_sts is not sts and ready.route.mta_sts != sts)
        ):
            dest = destination_for(
                sink_endpoint=sink,
                mx_list=cfg.mx_list,
                mx_hosts=mx.hosts if mx else None,
                mx_site=mx.site_name if mx else None,
                smtp_port=path.smtp_port,
            )
            if ready is None:
                route = ReadyRoute(
                    name=name,
                    site=dest.site,
                    source=source,
                    pool=cfg.egress_pool or DEFAULT_POOL.name,
                    path=path,
                    targets=dest.targets,
                    explicit=dest.explicit,
                    mta_sts=sts,
                )
                ready = ReadyQueue(route, self._parts, on_idle=self._forget)
                self.ready[name] = ready
            else:
                ready.reconfigure(path=path, targets=dest.targets, mta_sts=sts)
        hold = self._controls.ready_suspended(name, source.name, site, time.time())
        ready.set_state("suspended", hold.reason if hold else None)  # visible to operators
        if hold is not None:
            self._outcomes.delay(msg, max(1.0, hold.expires - time.time()))
            return
        if not self.accepting or not ready.enqueue(msg):
            self._outcomes.delay(msg, READY_FULL_DELAY)

    def _forget(self, ready: ReadyQueue) -> None:
        if self.ready.get(ready.name) is ready and ready.is_idle:
            del self.ready[ready.name]

    # -- shutdown ------------------------------------------------------------------

    async def drain(self, deadline: float) -> None:
        """Stop starting deliveries; let in-flight ones finish until ``deadline``."""
        self.accepting = False
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for ready in list(self.ready.values()):
            ready.stop_new_work()
        waits = [r.wait_idle() for r in self.ready.values()]
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await asyncio.gather(*waits)
        except TimeoutError:
            log.warning("shutdown_deadline_reached")
        for ready in list(self.ready.values()):
            await ready.cancel()
