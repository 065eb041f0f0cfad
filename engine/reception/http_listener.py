"""The HTTP listening socket that serves an aiohttp application (MTA, TSA, sink).

Exports:
    HttpListener   ``await start(host, port)`` -> bound address; ``await close()``
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["HttpListener"]


class HttpListener:
    """The HTTP listening socket.

    shutdown_timeout: seconds ``close()`` lets in-flight requests finish before their
    connections are dropped (aiohttp's own default, made explicit here).
    """

    def __init__(self, app: web.Application, *, shutdown_timeout: float = 60.0) -> None:
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout
        )
        self._site: web.TCPSite | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port, reuse_address=True, backlog=1024)
        await self._site.start()
        sock = self._runner.addresses[0]
        return sock[0], sock[1]

    async def close(self) -> None:
        """Stop listening, wait for in-flight requests (up to shutdown_timeout), close."""
        await self._runner.cleanup()
