"""Receiving mail from another node: ``POST /api/xfer/inject/v1``.

Exports:
    add_xfer_routes(app, *, acceptor, secret, node_id, max_size, shedding, queued,
                    on_result)

Answers (JSON; ``error`` says why):
    200  ``{"id", "queue", "duplicate", "queued"}``: stored with fsync (or already
         here: ``duplicate`` true); ``queued`` is how many messages this node holds,
         which senders use to spread a scale-in by load
    401  no ``Authorization: Bearer <cluster secret>``
    403  wrong secret, this node has no secret, or the policy's
         ``xfer_message_received`` refused the message
    409  the message comes from this node itself (``from_node`` is our node id)
    413  larger than ``max_size``
    415  not ``application/vnd.nimbus.xfer.v1``
    422  not a well-formed transfer (``wire.decode``'s reason)
    503  starting, shutting down (``"stopping": true``), shedding load, the spool
         cannot take it, or the policy failed (the sender tries another node or later)
The sender deletes its copy only after a 200 (``sender.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from engine.policy.events import PolicyFailure, Rejected
from engine.reception.accept import Acceptor
from engine.reception.shedding import Shedding
from engine.records import PeerAddress
from engine.storage.spool import SpoolError, SpoolFull
from engine.xfer.secret import check
from engine.xfer.wire import MEDIA_TYPE, PATH, WireError, decode

__all__ = ["add_xfer_routes"]

RETRY_AFTER = "5"


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers or None)


class _Receiver:
    def __init__(
        self,
        *,
        acceptor: Acceptor,
        secret: str | None,
        node_id: str,
        max_size: int,
        shedding: Callable[[], Shedding | None],
        queued: Callable[[], int],
        on_result: Callable[[str], None],
    ) -> None:
        self._acceptor = acceptor
        self._secret = secret
        self._node_id = node_id
        self._max_size = max_size
        self._shedding = shedding
        self._queued = queued
        self._on_result = on_result

    def _stopping(self) -> bool:
        return self._acceptor.not_ready == "shutting down"

    async def _read(self, request: web.Request) -> bytes | web.Response:
        if request.content_length is not None and request.content_length > self._max_size:
            return _error(413, f"transfer larger than {self._max_size} bytes")
        chunks = []
        size = 0
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self._max_size:
                return _error(413, f"transfer larger than {self._max_size} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def handle(self, request: web.Request) -> web.Response:
        refused = check(request.headers.get("Authorization"), self._secret)
        if refused is not None:
            status, reason = refused
            headers = {"WWW-Authenticate": 'Bearer realm="nimbus-cluster"'} if status == 401 else {}
            return _error(status, reason, **headers)
        if request.content_type != MEDIA_TYPE:
            return _error(415, f"content type must be {MEDIA_TYPE}, got {request.content_type}")
        not_ready = self._acceptor.not_ready
        if not_ready:
            # "stopping": a sender leaves this node out of its scale-in for good (it will
            # not come back before the sender's deadline); starting nodes are tried again.
            return web.json_response(
                {"error": f"not taking transfers: {not_ready}", "stopping": self._stopping()},
                status=503,
                headers={"Retry-After": RETRY_AFTER},
            )
        shedding = self._shedding()
        if shedding is not None:
            return _error(
                503,
                f"not taking transfers: load shedding ({shedding.reason.value})",
                **{"Retry-After": RETRY_AFTER},
            )
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        try:
            transfer = decode(body)
        except WireError as exc:
            return _error(422, str(exc))
        if transfer.from_node == self._node_id:
            return _error(409, f"this is node {self._node_id}, the sender itself")
        peer = PeerAddress(name=transfer.from_node, addr=request.remote or "")
        try:
            done = await self._acceptor.accept_transfer(
                transfer.msg, transfer.data, from_node=transfer.from_node, peer=peer
            )
        except Rejected as exc:
            return _error(403, f"refused by policy: {exc}")
        except PolicyFailure as exc:
            return _error(503, f"policy failed: {exc}", **{"Retry-After": RETRY_AFTER})
        except SpoolFull as exc:
            return _error(503, f"spool is full: {exc}", **{"Retry-After": RETRY_AFTER})
        except SpoolError as exc:  # SpoolTimeout included: the sender keeps its copy
            return _error(503, f"spool: {exc}", **{"Retry-After": RETRY_AFTER})
        self._on_result("received_duplicate" if done.duplicate else "received")
        return web.json_response(
            {
                "id": done.id,
                "queue": done.queue,
                "duplicate": done.duplicate,
                "queued": self._queued(),
            }
        )


def add_xfer_routes(
    app: web.Application,
    *,
    acceptor: Acceptor,
    secret: str | None,
    node_id: str,
    max_size: int,
    shedding: Callable[[], Shedding | None] = lambda: None,
    queued: Callable[[], int] = lambda: 0,
    on_result: Callable[[str], None] = lambda result: None,
) -> None:
    """Mount ``POST /api/xfer/inject/v1`` on ``app``.

    secret: the cluster secret (None: every transfer is refused with 403).
    max_size: the largest transfer body taken (the message plus its envelope line).
    queued: this node's queued-message count, returned with each 200.
    on_result: counts each transfer taken (``received``, ``received_duplicate``).
    """
    receiver = _Receiver(
        acceptor=acceptor,
        secret=secret,
        node_id=node_id,
        max_size=max_size,
        shedding=shedding,
        queued=queued,
        on_result=on_result,
    )
    app.router.add_post(PATH, receiver.handle)
