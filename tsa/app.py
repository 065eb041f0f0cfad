"""The TSA service: an aiohttp app over shared Redis state (``nimbus tsa``).

Exports:
    run(settings)                 serve on ``[tsa] listen`` until SIGTERM/SIGINT
    build_app(settings, *, redis=None, clock=time.time) -> web.Application

Routes (KumoMTA tsa-daemon compatible where KumoMTA has them):
    POST /publish_log_v1                  one log record or an array; 200 with counts
                                          (invalid records in an array are listed);
                                          400 bad JSON or a single invalid record;
                                          503 when Redis fails (the publisher retries)
    GET  /get_config_v1/shaping.toml      SetConfig overrides as a shaping.toml overlay
    GET  /get_suspension_v1/suspended.json  {"ready_q": [...], "sched_q": [...]}
    GET  /get_bounce_v1/bounced.json      [bounce rules]
    GET  /tsa/status                      version, redis, entry counts, records, rules
    GET  /metrics                         nimbus_tsa_* counters
    GET  /api/check-liveness/v1           200 "OK" when Redis answers, else 503 + reason

Background (one task owning a TaskGroup, for the app's lifetime): reload shaping.toml
when it changes (every ``[policy] reload_interval``) and prune expired entries every
minute. State lives in Redis (tsa.state), so any number of replicas serve the same
overlay and a restart loses nothing. When Redis is unreachable the GET views answer
503 rather than an empty overlay, so a subscriber keeps what it has (KumoMTA's
``remote_load=Ignore`` turned an unreachable TSA into "no overrides").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from engine import __version__
from engine.config.settings import ConfigError, Settings
from engine.config.units import parse_hostport
from engine.reception.http_listener import HttpListener
from engine.reception.listen import binding
from engine.shaping.overlay import OverlayEntry

from .exports import bounces_json, render_shaping_toml, suspensions_json
from .ingest import Ingestor
from .metrics import TsaMetrics
from .shaping_file import ShapingFile
from .state import TsaState

__all__ = ["run", "build_app"]

log = logging.getLogger("nimbus.tsa")

_PRUNE_INTERVAL = 60.0
_MAX_BODY = 64 * 1024 * 1024


class _Tsa:
    """Everything the handlers share."""

    def __init__(self, settings: Settings, redis: Redis, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.redis = redis
        self.clock = clock
        self.metrics = TsaMetrics()
        self.state = TsaState(redis, settings.redis.key_prefix)
        self.shaping = ShapingFile(Path(settings.policy.dir) / "shaping.toml", self.metrics)
        self.ingestor = Ingestor(
            self.state, self.shaping, self.metrics, clock=clock, timeout=settings.redis.timeout
        )
        self.redis_error: str | None = None

    def redis_failed(self, exc: BaseException) -> str:
        """Count and log (once per outage) a Redis failure; returns the reason."""
        reason = f"redis unavailable: {type(exc).__name__}: {exc}".rstrip(": ")
        self.metrics.redis_errors.inc()
        if self.redis_error is None:
            log.error("tsa_redis_unavailable", extra={"error": reason})
        self.redis_error = reason
        return reason

    def redis_ok(self) -> None:
        if self.redis_error is not None:
            log.info("tsa_redis_recovered")
        self.redis_error = None

    async def entries(self) -> list[OverlayEntry]:
        async with asyncio.timeout(self.settings.redis.timeout):
            entries = await self.state.entries(self.clock())
        self.redis_ok()
        return entries


_TSA = web.AppKey("tsa", _Tsa)


def _tsa(request: web.Request) -> _Tsa:
    return request.app[_TSA]


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


async def publish_log_v1(request: web.Request) -> web.Response:
    """POST /publish_log_v1: apply the automation rules to one record or an array."""
    tsa = _tsa(request)
    try:
        body = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        tsa.metrics.records.labels("invalid").inc()
        return _error(400, f"malformed JSON: {exc}")
    if not isinstance(body, (dict, list)):
        return _error(400, "expected a log record object or an array of them")
    records = body if isinstance(body, list) else [body]
    try:
        counts = await tsa.ingestor.ingest(records)
    except (RedisError, TimeoutError, OSError) as exc:
        return _error(503, tsa.redis_failed(exc))
    tsa.redis_ok()
    if isinstance(body, dict) and counts.invalid:
        return _error(400, str(counts.errors[0]["error"]))
    return web.json_response(counts.to_json())


async def _view(
    request: web.Request, render: Callable[[list[OverlayEntry], float], Any], *, text: bool = False
) -> web.Response:
    tsa = _tsa(request)
    try:
        entries = await tsa.entries()
    except (RedisError, TimeoutError, OSError) as exc:
        return _error(503, tsa.redis_failed(exc))
    result = render(entries, tsa.clock())
    if text:
        return web.Response(text=result, content_type="text/plain")
    return web.json_response(result)


async def get_config_v1(request: web.Request) -> web.Response:
    """GET /get_config_v1/shaping.toml: the SetConfig overlay (KumoMTA's format)."""
    return await _view(request, render_shaping_toml, text=True)


async def get_suspension_v1(request: web.Request) -> web.Response:
    """GET /get_suspension_v1/suspended.json: ready- and scheduled-queue suspensions."""
    return await _view(request, suspensions_json)


async def get_bounce_v1(request: web.Request) -> web.Response:
    """GET /get_bounce_v1/bounced.json: scheduled-queue bounce rules."""
    return await _view(request, bounces_json)


async def tsa_status(request: web.Request) -> web.Response:
    """GET /tsa/status: always 200; ``redis.ok`` says whether the state is reachable."""
    tsa = _tsa(request)
    status: dict[str, Any] = {
        "version": __version__,
        "redis": {"ok": True, "error": None},
        "actions": {},
        "records": dict(tsa.ingestor.totals),
        "cluster": {},
        "shaping": {
            "path": str(tsa.shaping.path),
            "rules": tsa.shaping.rule_count,
            "loaded_at": tsa.shaping.loaded_at,
            "error": tsa.shaping.error,
        },
    }
    try:
        entries = await tsa.entries()
        async with asyncio.timeout(tsa.settings.redis.timeout):
            status["cluster"] = await tsa.state.stats()
        status["actions"] = dict(Tally(e.kind for e in entries))
    except (RedisError, TimeoutError, OSError) as exc:
        status["redis"] = {"ok": False, "error": tsa.redis_failed(exc)}
    return web.json_response(status)


async def check_liveness_v1(request: web.Request) -> web.Response:
    """GET /api/check-liveness/v1: 200 when Redis answers a PING, else 503."""
    tsa = _tsa(request)
    try:
        async with asyncio.timeout(tsa.settings.redis.timeout):
            await tsa.state.ping()
    except (RedisError, TimeoutError, OSError) as exc:
        return web.Response(status=503, text=tsa.redis_failed(exc))
    tsa.redis_ok()
    return web.Response(text="OK")


async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(_tsa(request).metrics.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _reload_loop(tsa: _Tsa) -> None:
    interval = tsa.settings.policy.reload_interval or 2.0
    while True:
        await asyncio.sleep(interval)
        await tsa.shaping.check()


async def _prune_loop(tsa: _Tsa) -> None:
    while True:
        try:
            async with asyncio.timeout(tsa.settings.redis.timeout):
                pruned = await tsa.state.prune(tsa.clock())
        except (RedisError, TimeoutError, OSError) as exc:
            tsa.redis_failed(exc)
        else:
            tsa.redis_ok()
            if pruned:
                log.info("tsa_pruned", extra={"entries": pruned})
        await asyncio.sleep(_PRUNE_INTERVAL)


async def _background(tsa: _Tsa) -> None:
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_reload_loop(tsa))
        tg.create_task(_prune_loop(tsa))


def _lifetime(tsa: _Tsa, owns_redis: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_background(tsa), name="tsa-background")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if owns_redis:
                await tsa.redis.aclose()

    return lifetime


def build_app(
    settings: Settings, *, redis: Redis | None = None, clock: Callable[[], float] = time.time
) -> web.Application:
    """The TSA application.

    settings: ``[redis]`` url/key_prefix/timeout, ``[policy]`` dir (its shaping.toml) and
    reload_interval. redis: a client to use instead of one made from ``[redis] url`` (the
    app then leaves closing it to the caller). clock: wall-clock seconds.
    Raises ConfigError when ``[redis] url`` is empty and no client is given, or when
    shaping.toml exists but does not load.
    """
    owns = redis is None
    if redis is None:
        if not settings.redis.url:
            raise ConfigError(
                "[redis] url: the TSA keeps its state in Redis; set it (NIMBUS_REDIS_URL)"
            )
        timeout = settings.redis.timeout
        redis = Redis.from_url(
            settings.redis.url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
    tsa = _Tsa(settings, redis, clock)
    app = web.Application(client_max_size=_MAX_BODY)
    app[_TSA] = tsa
    app.cleanup_ctx.append(_lifetime(tsa, owns))
    app.router.add_post("/publish_log_v1", publish_log_v1)
    app.router.add_get("/get_config_v1/shaping.toml", get_config_v1)
    app.router.add_get("/get_suspension_v1/suspended.json", get_suspension_v1)
    app.router.add_get("/get_bounce_v1/bounced.json", get_bounce_v1)
    app.router.add_get("/tsa/status", tsa_status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/check-liveness/v1", check_liveness_v1)
    return app


async def run(settings: Settings) -> None:
    """Serve the TSA on ``[tsa] listen`` until SIGTERM or SIGINT (``nimbus tsa``).

    Raises ConfigError (see build_app) and OSError when the port cannot be bound.
    """
    app = build_app(settings)
    host, port = parse_hostport(settings.tsa.listen)
    listener = HttpListener(app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        with binding("the TSA's HTTP", settings.tsa.listen, "tsa.listen"):
            bound = await listener.start(host, port)
        log.info(
            "listening",
            extra={
                "service": "tsa",
                "host": bound[0],
                "port": bound[1],
                "redis_prefix": settings.redis.key_prefix,
            },
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping", extra={"service": "tsa"})
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await listener.close()
    log.info("stopped", extra={"service": "tsa"})
