"""DKIM signing worker: the signing process and the pipe protocol the service talks to it in.

Exports:
    Worker        one signing process, seen from the service: ``await Worker.start()``,
                  ``await sign(data, signers)`` -> the DKIM-Signature header fields,
                  ``pending``, ``alive``, ``await close()``
    worker_main   the process's entry point (``python -c "from engine.dkim_worker
                  import worker_main; worker_main()"``): sign requests until EOF

Protocol: 4-byte big-endian length + pickle, both ways. The service sends
``("signer", id, Signer)`` once per signer per worker and ``("sign", req, ids, now,
data)`` per message; the worker answers ``(req, True, headers)`` or ``(req, False,
error text)``. Used only by ``engine.dkim`` (``DkimService``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import sys
import time
from typing import Any

from .dkim import DkimError, Signer, _headers_or_error

__all__ = ["Worker", "worker_main"]

log = logging.getLogger("nimbus.dkim")


class Worker(asyncio.SubprocessProtocol):
    """One signing process, fed length-prefixed pickles on stdin, answering on stdout."""

    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.alive = True
        self._next_id = 0
        self._known: dict[Signer, int] = {}
        self._buffer = bytearray()
        self._transport: asyncio.SubprocessTransport | None = None
        self._exited = asyncio.get_running_loop().create_future()

    @classmethod
    async def start(cls) -> Worker:
        loop = asyncio.get_running_loop()
        code = "from engine.dkim_worker import worker_main; worker_main()"
        transport, worker = await loop.subprocess_exec(
            cls, sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=None)
        worker._transport = transport
        log.info("dkim worker started", extra={"pid": transport.get_pid()})
        return worker

    async def sign(self, data: bytes, signers: tuple[Signer, ...]) -> bytes:
        """The signature header fields for ``data`` (see ``signature_headers``)."""
        if not self.alive or self._transport is None:
            raise DkimError("DKIM signing worker is gone")
        stdin = self._transport.get_pipe_transport(0)
        ids = []
        for signer in signers:
            if signer not in self._known:
                self._known[signer] = len(self._known)
                stdin.write(_frame(("signer", self._known[signer], signer)))
            ids.append(self._known[signer])
        self._next_id += 1
        req = self._next_id
        future = asyncio.get_running_loop().create_future()
        self.pending[req] = future
        stdin.write(_frame(("sign", req, tuple(ids), time.time(), data)))
        try:
            return await future
        finally:
            self.pending.pop(req, None)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 4:
            size = int.from_bytes(self._buffer[:4], "big")
            if len(self._buffer) < 4 + size:
                return
            req, ok, payload = pickle.loads(self._buffer[4:4 + size])
            del self._buffer[:4 + size]
            future = self.pending.get(req)
            if future is not None and not future.done():
                if ok:
                    future.set_result(payload)
                else:
                    future.set_exception(DkimError(payload))

    def process_exited(self) -> None:
        assert self._transport is not None
        code = self._transport.get_returncode()
        self.alive = False
        if self.pending:
            log.error("dkim worker exited", extra={"returncode": code,
                                                   "pending": len(self.pending)})
        for future in self.pending.values():
            if not future.done():
                future.set_exception(DkimError(f"DKIM signing worker exited ({code})"))
        if not self._exited.done():
            self._exited.set_result(code)

    async def close(self) -> None:
        if self._transport is None:
            return
        self._transport.get_pipe_transport(0).close()  # EOF: the worker exits
        try:
            await asyncio.wait_for(asyncio.shield(self._exited), 5)
        except TimeoutError:
            log.warning("dkim worker did not exit on EOF; killing it")
        self._transport.close()  # kills it if still running


def _frame(obj: Any) -> bytes:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return len(body).to_bytes(4, "big") + body


def worker_main() -> None:
    """The worker process: sign requests from stdin until EOF. Our stdout is private."""
    # The parent decides when we stop (EOF on stdin, also when it dies), so a signal sent
    # to the whole process group cannot fail the signings it still has in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed by accident goes to stderr, not into the frames
    inp = sys.stdin.buffer
    signers: dict[int, Signer] = {}
    while True:
        head = inp.read(4)
        if len(head) < 4:
            return
        msg = pickle.loads(inp.read(int.from_bytes(head, "big")))
        if msg[0] == "signer":
            signers[msg[1]] = msg[2]
            continue
        _, req, ids, now, data = msg
        try:
            reply = (req, True, _headers_or_error(data, [signers[i] for i in ids], now))
        except DkimError as exc:
            reply = (req, False, str(exc))
        out.write(_frame(reply))
        out.flush()
