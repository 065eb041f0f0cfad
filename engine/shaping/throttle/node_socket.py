"""The node's throttle store shared by its workers: an EmbeddedStore behind a Unix socket.

Exports:
    serve_store(path, store) -> asyncio.Server   the supervisor's side
    SocketStore                                  ThrottleStore client, one per worker

Without Redis, limits that hold per node (connection limits, rates, provider limits,
source selection rates) must hold for all the node's workers together, so the supervisor
keeps them in one EmbeddedStore and each worker asks over ``<runtime>/throttle.sock``.
One JSON line per request and per answer, pipelined: ``{"i": n, "op": ..., ...}`` ->
``{"i": n, "r": result}`` (or ``"e"``: the error). The supervisor's loop does nothing
else, so an answer costs one loopback round trip.

If the socket fails (it should not: the workers die with the supervisor), the worker
enforces ``limit / workers`` in its own EmbeddedStore until a reconnect succeeds (at most
once a second), as the Redis store does during an outage, and logs it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from engine.config.throttle_spec import ThrottleSpec
from engine.shaping.throttle.embedded import EmbeddedStore
from engine.shaping.throttle.gcra import ThrottleResult, lease_share, local_share
from engine.shaping.throttle.store import ThrottleStore, WindowCount

__all__ = ["serve_store", "SocketStore"]

log = logging.getLogger("nimbus.throttle")

_TIMEOUT = 2.0  # seconds per request before the local share is used
_RETRY = 1.0  # seconds between reconnects while falling back


def _spec(raw: dict[str, Any]) -> ThrottleSpec:
    return ThrottleSpec(
        limit=int(raw["limit"]),
        period=float(raw["period"]),
        max_burst=None if raw.get("max_burst") is None else int(raw["max_burst"]),
        local=bool(raw.get("local")),
    )


def _inf(value: float) -> float | str:
    return "inf" if math.isinf(value) else value


async def _answer(store: EmbeddedStore, req: dict[str, Any]) -> Any:
    op = req["op"]
    if op == "throttle":
        r = await store.throttle(req["key"], _spec(req["spec"]), int(req["q"]))
        return [r.allowed, _inf(r.retry_after), r.remaining, _inf(r.reset_after)]
    if op == "acquire":
        return await store.acquire_lease(req["key"], int(req["limit"]), req["id"], req["ttl"])
    if op == "extend":
        return await store.extend_lease(req["key"], req["id"], req["ttl"])
    if op == "release":
        await store.release_lease(req["key"], req["id"])
        return None
    if op == "count":
        return await store.count_leases(req["key"])
    if op == "window":
        w = await store.count_window(req["key"], int(req["limit"]), float(req["expires_at"]))
        return [w.allowed, w.used]
    if op == "window_count":
        return await store.window_count(req["key"])
    raise ValueError(f"unknown op {op!r}")


async def serve_store(path: Path, store: EmbeddedStore) -> asyncio.Server:
    """Serve ``store`` on the Unix socket ``path`` (created mode 0600) until closed."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async for line in reader:
                req = json.loads(line)
                try:
                    out = {"i": req["i"], "r": await _answer(store, req)}
                except (KeyError, ValueError, TypeError) as exc:
                    out = {"i": req.get("i"), "e": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(out, separators=(",", ":")).encode() + b"\n")
        except (ConnectionError, ValueError):
            pass  # a worker went away (or sent garbage): its leases expire by their TTL
        finally:
            writer.close()

    server = await asyncio.start_unix_server(client, path=str(path), limit=1 << 20)
    os.chmod(path, 0o600)  # a metadata call on a local directory, not disk I/O to wait for
    return server


class SocketStore(ThrottleStore):
    """A worker's view of the node's throttle store.

    path: the supervisor's socket. workers: the divisor of the local fallback.
    """

    def __init__(self, path: Path, workers: int) -> None:
        self._path = path
        self._workers = max(1, workers)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next = 0
        self._connecting = asyncio.Lock()
        self._reads: asyncio.Task | None = None
        self._fallback = EmbeddedStore()
        self._down_since: float | None = None
        self._closed = False

    async def _connect(self) -> None:
        async with self._connecting:
            if self._writer is not None:
                return
            reader, writer = await asyncio.open_unix_connection(str(self._path), limit=1 << 20)
            self._reader, self._writer = reader, writer
            self._reads = asyncio.create_task(self._read(reader), name="throttle-socket")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            async for line in reader:
                answer = json.loads(line)
                fut = self._pending.pop(answer.get("i"), None)
                if fut is not None and not fut.done():
                    if "e" in answer:
                        fut.set_exception(RuntimeError(answer["e"]))
                    else:
                        fut.set_result(answer.get("r"))
        except (ConnectionError, ValueError):
            pass
        finally:
            self._lost(ConnectionResetError("throttle store socket closed"))

    def _lost(self, exc: BaseException) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    async def _call(self, **req: Any) -> Any:
        """One request; raises OSError/TimeoutError/RuntimeError when the store is unusable."""
        if self._closed:
            raise RuntimeError("throttle store closed")
        if self._down_since is not None and time.monotonic() - self._down_since < _RETRY:
            raise ConnectionError("throttle store unreachable (retrying soon)")
        async with asyncio.timeout(_TIMEOUT):
            if self._writer is None:
                await self._connect()
            assert self._writer is not None
            self._next += 1
            req["i"] = self._next
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._pending[self._next] = fut
            self._writer.write(json.dumps(req, separators=(",", ":")).encode() + b"\n")
            result = await fut
        if self._down_since is not None:
            self._down_since = None
            log.warning("node_throttle_store_resumed", extra={"socket": str(self._path)})
        return result

    def _failed(self, exc: BaseException) -> None:
        if self._down_since is None:
            log.error(
                "node_throttle_store_unreachable",
                extra={"socket": str(self._path), "error": f"{type(exc).__name__}: {exc}"},
            )
        self._down_since = time.monotonic()
        self._lost(exc)

    async def throttle(self, key: str, spec: ThrottleSpec, quantity: int = 1) -> ThrottleResult:
        raw = {"limit": spec.limit, "period": spec.period, "max_burst": spec.max_burst}
        try:
            r = await self._call(op="throttle", key=key, spec=raw, q=quantity)
        except (OSError, TimeoutError, RuntimeError) as exc:
            self._failed(exc)
            return await self._fallback.throttle(key, local_share(spec, self._workers), quantity)
        return ThrottleResult(
            allowed=bool(r[0]),
            retry_after=float(r[1]),
            remaining=int(r[2]),
            reset_after=float(r[3]),
        )

    async def acquire_lease(self, key: str, limit: int, lease_id: str, ttl: float) -> float | None:
        try:
            r = await self._call(op="acquire", key=key, limit=limit, id=lease_id, ttl=ttl)
        except (OSError, TimeoutError, RuntimeError) as exc:
            self._failed(exc)
            share = lease_share(limit, self._workers)
            return await self._fallback.acquire_lease(key, share, lease_id, ttl)
        return None if r is None else float(r)

    async def extend_lease(self, key: str, lease_id: str, ttl: float) -> bool:
        if self._fallback.holds(key, lease_id):
            return await self._fallback.extend_lease(key, lease_id, ttl)
        try:
            return bool(await self._call(op="extend", key=key, id=lease_id, ttl=ttl))
        except (OSError, TimeoutError, RuntimeError) as exc:
            self._failed(exc)
            return False

    async def release_lease(self, key: str, lease_id: str) -> None:
        if self._fallback.holds(key, lease_id):
            await self._fallback.release_lease(key, lease_id)
            return
        with contextlib.suppress(OSError, TimeoutError, RuntimeError):
            await self._call(op="release", key=key, id=lease_id)

    async def count_leases(self, key: str) -> int:
        try:
            return int(await self._call(op="count", key=key))
        except (OSError, TimeoutError, RuntimeError) as exc:
            self._failed(exc)
            return await self._fallback.count_leases(key)

    async def count_window(self, key: str, limit: int, expires_at: float) -> WindowCount:
        try:
            r = await self._call(op="window", key=key, limit=limit, expires_at=expires_at)
        except (OSError, TimeoutError, RuntimeError) as exc:
            self._failed(exc)  # this worker's share, as the Redis store does in an outage
            return await self._fallback.count_window(key, limit // self._workers, expires_at)
        return WindowCount(bool(r[0]), int(r[1]))

    async def window_count(self, key: str) -> int:
        try:
            return int(await self._call(op="window_count", key=key))
        except (OSError, TimeoutError, RuntimeError) as exc:
            self._failed(exc)
            return await self._fallback.window_count(key)

    async def close(self) -> None:
        self._closed = True
        self._lost(ConnectionResetError("throttle store closed"))
        if self._reads is not None:
            self._reads.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reads
        await self._fallback.close()

    @property
    def shared(self) -> bool:
        return self._down_since is None

    @property
    def degraded(self) -> bool:
        return self._down_since is not None
