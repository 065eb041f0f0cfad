"""The HTTP listening socket that serves an aiohttp application (MTA, TSA, sink), and the
request-body rules every route of it obeys.

Exports:
    HttpListener   ``await start(host, port)`` -> bound address; ``await close()``
    body_rules     the middleware HttpListener adds to the app it serves (below)
    private_request(request) -> bool   it came over the listener's private Unix socket

body_rules, so that no malformed request becomes a 500 (issue 9):
- a ``Content-Encoding`` other than identity, gzip or deflate (the codings aiohttp
  decodes) is 415 with ``Accept-Encoding`` (RFC 9110 §15.5.16, §12.5.3); aiohttp
  would otherwise pass such a body on still encoded;
- a body that does not decode as its ``Content-Encoding`` says (aiohttp's
  RequestPayloadError while the handler reads it) is 400;
- a client that goes away mid-body is one debug line (``http_client_disconnected``)
  instead of a traceback: there is nobody to answer;
- a request aiohttp cannot parse (bad request line, HTTP version, header, length) is
  answered 400 by aiohttp and is one debug line (``http_malformed_request``) instead
  of aiohttp's ERROR with a traceback: anyone can send one, so it is not our error,
  and a flood of them must not flood the log. A 500 is still logged at ERROR.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError
from aiohttp.web_request import Request
from aiohttp.web_response import StreamResponse

__all__ = ["HttpListener", "body_rules", "private_request"]

log = logging.getLogger("nimbus.http")

_CODINGS = frozenset({"", "identity", "gzip", "deflate"})


def private_request(request: Request) -> bool:
    """True when ``request`` arrived on the Unix socket of ``HttpListener.start_private``
    (a worker's, in a directory only the node's processes can enter), not a TCP port."""
    transport = request.transport
    return transport is not None and isinstance(transport.get_extra_info("sockname"), str)


@web.middleware
async def body_rules(request: Request, handler: Handler) -> StreamResponse:
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding not in _CODINGS:
        return web.json_response(
            {"error": f"unsupported Content-Encoding {coding!r}; use gzip, deflate or identity"},
            status=415,
            headers={"Accept-Encoding": "gzip, deflate"},
        )
    try:
        return await handler(request)
    except RequestPayloadError as exc:
        # The parser of this connection is broken: answer, then close it. Marking the
        # body read stops aiohttp from draining it again (a second, logged, exception).
        request.content.feed_eof()
        reason = str(exc.__cause__ or exc).replace("\n", " ")
        response = web.json_response(
            {"error": f"malformed request body ({coding or 'identity'}): {reason}"}, status=400
        )
        response.force_close()
        return response
    except ConnectionResetError:
        if request.transport is not None and not request.transport.is_closing():
            raise  # not our client: some other connection of the handler's
        log.debug(
            "http_client_disconnected",
            extra={"method": request.method, "path": request.path, "peer": request.remote},
        )
        return web.Response(status=400)  # never sent: the connection is gone


class _MalformedRequests(logging.Filter):
    """Turns aiohttp's "Error handling request" for an unparsable request into one debug
    line; every other record of the server logger passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or not 400 <= exc.code < 500:
            return True
        if log.isEnabledFor(logging.DEBUG):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
            log.debug(
                "http_malformed_request",
                extra={"peer": peer, "status": exc.code, "error": exc.message},
            )
        return False


# aiohttp's request handlers log through this logger (``AppRunner(logger=)``), so the
# filter touches no other aiohttp logging.
_server_log = logging.getLogger("nimbus.http.server")
_server_log.addFilter(_MalformedRequests())


class HttpListener:
    """The HTTP listening socket.

    app: served with ``body_rules`` as its innermost middleware (added here, before
    the app is frozen by the runner's setup).
    shutdown_timeout: seconds ``close()`` lets in-flight requests finish before their
    connections are dropped (aiohttp's own default, made explicit here).
    """

    def __init__(self, app: web.Application, *, shutdown_timeout: float = 60.0) -> None:
        app.middlewares.append(body_rules)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=shutdown_timeout,
            logger=_server_log,
        )
        self._site: web.TCPSite | None = None
        self._private: web.UnixSite | None = None

    @property
    def app(self) -> web.Application:
        """The application served (its router lists the mounted routes)."""
        return self._runner.app

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> tuple[str, int]:
        """Listen on host:port; reuse_port: with SO_REUSEPORT (a node's workers share it)."""
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner,
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        await self._site.start()
        sock = self._runner.addresses[0]
        return sock[0], sock[1]

    async def start_private(self, path: str) -> None:
        """Also serve the app on the Unix socket ``path`` (after ``start``)."""
        self._private = web.UnixSite(self._runner, path, backlog=128)
        await self._private.start()

    async def close(self) -> None:
        """Stop listening, wait for in-flight requests (up to shutdown_timeout), close."""
        await self._runner.cleanup()
