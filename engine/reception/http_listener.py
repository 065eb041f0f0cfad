"""The HTTP listening socket that serves an aiohttp application (MTA, TSA, sink).

Exports:
    HttpListener   ``await start(host, port)`` -> bound address; ``await close()``
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["HttpListener"]


class HttpListener:
    """The HTTP listening socket."""

    def __init__(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._site: web.TCPSite | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port, reuse_address=True, backlog=1024)
        await self._site.start()
        sock = self._runner.addresses[0]
        return sock[0], sock[1]

    async def close(self) -> None:
        await self._runner.cleanup()
