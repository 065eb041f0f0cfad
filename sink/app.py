"""The sink service: its SMTP listener, its HTTP listener, and reloading the responses file.

Exports:
    run(settings)     ``nimbus sink``: serve until SIGTERM/SIGINT (SIGHUP re-reads responses)
    build(settings)   a Sink for in-process use: ``await start()`` / ``await stop()``,
                      ``.smtp_port`` / ``.http_port``, ``.metrics``, ``.reload()``
    Sink

Settings used: ``[sink] listen``, ``http_listen``, ``responses`` (empty: accept all);
``[smtp] hostname``, ``max_message_size``, ``idle_timeout``; ``[policy] reload_interval``
(how often the responses file's mtime is checked; 0: only on SIGHUP).

HTTP routes: ``GET /api/check-liveness/v1`` (200 "OK"), ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engine.config.settings import ConfigError, Settings
from engine.config.units import parse_hostport
from engine.reception.http_listener import HttpListener
from engine.reception.listen import binding

from .responses import Responses, load_responses
from .server import SinkListener, SinkMetrics

__all__ = ["run", "build", "Sink"]

log = logging.getLogger("nimbus.sink")


async def check_liveness_v1(request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[_SINK].metrics.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _fingerprint(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class Sink:
    """The sink service in this loop.

    settings: node settings (see the module docstring for the keys used).
    reload_interval: seconds between checks of the responses file (default: the
        ``[policy] reload_interval`` setting; 0: only on ``request_reload()``).
    """

    def __init__(self, settings: Settings, *, reload_interval: float | None = None) -> None:
        self.settings = settings
        self.metrics = SinkMetrics()
        self.responses: Responses | None = None
        self.smtp_port = 0
        self.http_port = 0
        self.ready = asyncio.Event()
        self.reloaded = asyncio.Event()  # set after each reload attempt (tests wait on it)
        self._interval = (
            settings.policy.reload_interval if reload_interval is None else reload_interval
        )
        self._path = settings.sink.responses
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.smtp = SinkListener(
            hostname=settings.effective_hostname,
            responses=lambda: self.responses,
            metrics=self.metrics,
            max_message_size=settings.smtp.max_message_size,
            idle_timeout=settings.smtp.idle_timeout,
        )
        app = web.Application()
        app[_SINK] = self
        app.router.add_get("/api/check-liveness/v1", check_liveness_v1)
        app.router.add_get("/metrics", metrics)
        self.http = HttpListener(app)

    async def start(self) -> None:
        """Run in a task until ready; raises what stopped it from starting (ConfigError,
        OSError for a busy port)."""
        self._task = asyncio.create_task(self.run(), name="sink")  # owned: stop() awaits it
        ready = asyncio.create_task(self.ready.wait(), name="sink-ready")
        try:
            await asyncio.wait({self._task, ready}, return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                self._task.result()  # raise the start-up error
        finally:
            ready.cancel()

    async def stop(self) -> None:
        """Stop (idempotent) and wait for the shutdown to finish."""
        self.request_stop()
        if self._task is not None:
            await self._task

    def request_stop(self) -> None:
        """Begin stopping (safe from a signal handler)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Re-read the responses file now (SIGHUP)."""
        self._reload.set()

    async def run(self) -> None:
        """Load responses, listen, serve until ``request_stop()``, then close.

        Raises ConfigError (responses file) or OSError (a listener could not bind) before
        serving, unwrapped.
        """
        s = self.settings.sink
        seen = None
        if self._path:
            seen = await asyncio.to_thread(_fingerprint, self._path)
            self.responses = await asyncio.to_thread(load_responses, self._path)
        try:
            with binding("the sink's HTTP", s.http_listen, "sink.http_listen"):
                self.http_port = (await self.http.start(*parse_hostport(s.http_listen)))[1]
            with binding("the sink's SMTP", s.listen, "sink.listen"):
                self.smtp_port = (await self.smtp.start(*parse_hostport(s.listen)))[1]
            async with asyncio.TaskGroup() as tg:
                watcher = (
                    tg.create_task(self._watch(seen), name="sink-responses-watcher")
                    if self._path
                    else None
                )
                log.info(
                    "ready",
                    extra={
                        "smtp_port": self.smtp_port,
                        "http_port": self.http_port,
                        "responses": self._path or "accept-all",
                    },
                )
                self.ready.set()
                await self._stop.wait()
                if watcher is not None:
                    watcher.cancel()
        finally:
            await self.smtp.close()
            await self.http.close()
        log.info("stopped", extra=self.metrics.counts())

    async def reload(self, reason: str = "request") -> bool:
        """Re-read the responses file; on error keep the running one. Returns success."""
        try:
            fresh = await asyncio.to_thread(load_responses, self._path)
        except ConfigError as exc:
            self.metrics.reloads["error"] += 1
            log.error(
                "responses_reload_failed",
                extra={"reason": reason, "error": str(exc)},
            )
            return False
        finally:
            self.reloaded.set()
        self.responses = fresh
        self.metrics.reloads["ok"] += 1
        log.info("responses_reloaded", extra={"reason": reason, "file": self._path})
        return True

    async def _watch(self, seen: tuple[int, int, int] | None) -> None:
        """Reload on request, or when the file's mtime/size/inode changes (polled)."""
        while True:
            try:
                async with asyncio.timeout(self._interval or None):
                    await self._reload.wait()
                reason = "SIGHUP"
            except TimeoutError:
                reason = "file changed"
            self._reload.clear()
            now = await asyncio.to_thread(_fingerprint, self._path)
            if reason == "SIGHUP" or now != seen:
                seen = now
                await self.reload(reason)


_SINK = web.AppKey("sink", Sink)


def build(settings: Settings, *, reload_interval: float | None = None) -> Sink:
    """A Sink, not yet started (see Sink)."""
    return Sink(settings, reload_interval=reload_interval)


async def run(settings: Settings) -> None:
    """``nimbus sink``: serve in the foreground until SIGTERM or SIGINT; SIGHUP reloads."""
    sink = build(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sink.request_stop)
    loop.add_signal_handler(signal.SIGHUP, sink.request_reload)
    try:
        await sink.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
