"""Sending mail to other nodes: an operator's transfer jobs, and scale-in at shutdown.

Exports:
    Transfers     start / cancel / jobs (``/api/admin/xfer/v1`` and its cancel and list),
                  scale_in (the node's whole spool to its peers, at SIGTERM), close
    (raises ``engine.admin.state.XferNotAvailable``, HTTP 409, when this node cannot send:
    no cluster secret, or shutting down)

A **job** (``POST /api/admin/xfer/v1``) takes the waiting messages its criteria select
out of their scheduled and ready queues into the xfer queue ``<target>/.xfer.kumomta.
internal`` (KumoMTA's name; an ``AdminRebind`` record each) and sends them,
``cluster.xfer_concurrency`` at a time. Per message, by the answer (``wire.verdict``):
stored or duplicate -> an ``XferOut`` record and our copy deleted; busy, stopping or
unreachable -> tried again after a backoff (0.5 s doubling to 30 s) until the job is
cancelled; refused (secret, policy, size, the target is this node) -> back to its own
queue at its own due time, counted as failed with the reason. ``xfer-cancel`` returns
what has not been sent to its queues (an ``AdminRebind`` each). Jobs and their counts
are listed by ``GET /api/admin/xfer/v1`` and in ``queue-summary``.

**Scale-in** (``scale_in``, after the drain at SIGTERM): every message left in the
spool goes to the peers (``peers.py``), the least-loaded first (each 200 says how many
messages that peer holds), within ``cluster.xfer_deadline``. A peer answering 503 while
starting or shedding rests 5 s; one that is stopping itself (its 503 says
``stopping``), refuses the connection, is this node (409) or refuses our secret is left
out, so a whole cluster stopping at once exits without waiting out the deadline; a
message a peer refuses (413, 422) stays. What is not moved stays in the spool, on the
volume the StatefulSet keeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from engine.admin.entries import Criteria
from engine.admin.ops import AdminOps
from engine.admin.state import XferNotAvailable
from engine.config.settings import ClusterSettings
from engine.logs.writer import LogWriter
from engine.queues.outcomes import Attempt, Outcomes
from engine.records import Json, JsonObject, Message, PeerAddress, RecordType, Response, rfc3339
from engine.storage.spool import Spool
from engine.xfer.peers import PeerLoads, peer_urls
from engine.xfer.secret import authorization
from engine.xfer.wire import MEDIA_TYPE, PATH, Verdict, encode, verdict, xfer_queue_name

__all__ = ["Transfers", "Job"]

log = logging.getLogger("nimbus.xfer")

MAX_BACKOFF = 30.0
BUSY_REST = 5.0  # a peer that answered 503 (starting, shedding) is not asked again for this
SLOW_REST = 2.0  # a peer that timed out or answered another 5xx
ERRORS_KEPT = 10


@dataclass(frozen=True, slots=True)
class Sent:
    """One send: the verdict, a short description, the peer's load if it said."""

    verdict: Verdict | None  # None: the message was no longer spooled (nothing to send)
    detail: str
    status: int | None = None
    queued: int | None = None
    unreachable: bool = False  # the connection was refused: nothing listens there
    stopping: bool = False  # the peer is shutting down itself (its 503 says so)


@dataclass(eq=False)
class Job:
    """One operator transfer to one target."""

    queue_name: str
    target: str
    reason: str
    started: float
    pending: deque[Message] = field(default_factory=deque)
    total: int = 0
    moved: int = 0
    duplicates: int = 0
    failed: int = 0
    returned: int = 0
    in_flight: int = 0
    state: str = "running"  # running | done | cancelled | stopped
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=ERRORS_KEPT))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def to_json(self) -> JsonObject:
        return {
            "queue_name": self.queue_name,
            "target": self.target,
            "reason": self.reason,
            "state": self.state,
            "started": rfc3339(self.started),
            "total": self.total,
            "moved": self.moved,
            "duplicates": self.duplicates,
            "failed": self.failed,
            "returned": self.returned,
            "in_flight": self.in_flight,
            "left": len(self.pending) + self.in_flight,
            "errors": list(self.errors),
        }


class Transfers:
    """Transfers from this node to others.

    spool, ops, outcomes, logs: the node's parts (ops takes messages out of their queues
        and gives them back).
    cluster: ``[cluster]`` settings (peers, deadline, concurrency, timeout).
    secret: the cluster secret, or None (then this node sends nothing: XferNotAvailable).
    node_id: sent with each transfer, so a node can tell it was asked to take its own.
    on_result: counts each message's outcome (metrics): sent, duplicate, failed,
        returned.
    """

    def __init__(
        self,
        *,
        spool: Spool,
        ops: AdminOps,
        outcomes: Outcomes,
        logs: LogWriter,
        cluster: ClusterSettings,
        secret: str | None,
        node_id: str,
        on_result: Callable[[str], None] = lambda result: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._spool = spool
        self._ops = ops
        self._outcomes = outcomes
        self._logs = logs
        self._cluster = cluster
        self._secret = secret
        self._node_id = node_id
        self._on_result = on_result
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._closed = False

    # -- operator jobs -------------------------------------------------------------

    def start(self, criteria: Criteria, target: str, reason: str) -> JsonObject:
        """Move the waiting messages ``criteria`` select into the xfer queue for
        ``target`` and start sending them. Raises XferNotAvailable."""
        if self._secret is None:
            raise XferNotAvailable(
                "this node has no cluster secret (cluster.secret_file / "
                "NIMBUS_CLUSTER_SECRET_FILE), so no node would take its transfers"
            )
        if self._closed:
            raise XferNotAvailable("the node is shutting down")
        name = xfer_queue_name(target)
        job = self._jobs.get(name)
        if job is None or job.state != "running":
            job = Job(queue_name=name, target=target, reason=reason, started=self._clock())
            self._jobs[name] = job
        messages = self._ops.take(criteria)
        for msg in messages:
            self._log_rebind(msg, from_queue=msg.queue, to_queue=name, reason=reason)
        job.pending.extend(messages)
        job.total += len(messages)
        if job.task is None or job.task.done():
            job.task = asyncio.create_task(self._run_job(job), name=f"xfer:{name}")
        job.wake.set()
        log.info(
            "xfer_started",
            extra={"queue_name": name, "target": target, "messages": len(messages)},
        )
        return {"queue_name": name, "messages": len(messages)}

    def cancel(self, queue_name: str, reason: str) -> JsonObject | None:
        """Stop a job: its unsent messages go back to their queues. None: no such job."""
        job = self._jobs.get(queue_name)
        if job is None:
            return None
        returned = self._stop_job(job, "cancelled", reason=reason)
        log.info("xfer_cancelled", extra={"queue_name": queue_name, "returned": returned})
        return {"queue_name": queue_name, "returned": returned}

    def jobs(self) -> list[JsonObject]:
        return [job.to_json() for job in self._jobs.values()]

    def held(self) -> int:
        """Messages this node holds in xfer queues (not yet sent)."""
        return sum(len(j.pending) + j.in_flight for j in self._jobs.values())

    def _stop_job(self, job: Job, state: str, *, reason: str | None) -> int:
        if job.state == "running":
            job.state = state
        returned = 0
        while job.pending:
            msg = job.pending.popleft()
            self._give_back(job, msg, reason=reason)
            returned += 1
        job.wake.set()
        return returned

    def _give_back(self, job: Job, msg: Message, *, reason: str | None) -> None:
        if reason is not None:
            self._log_rebind(msg, from_queue=job.queue_name, to_queue=msg.queue, reason=reason)
        self._ops.give_back(msg)
        job.returned += 1
        self._on_result("returned")

    async def _run_job(self, job: Job) -> None:
        timeout = aiohttp.ClientTimeout(total=self._cluster.xfer_timeout)
        connector = aiohttp.TCPConnector(limit=self._cluster.xfer_concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while job.state == "running" and job.pending:
                workers = min(self._cluster.xfer_concurrency, len(job.pending))
                await asyncio.gather(*(self._job_worker(job, session) for _ in range(workers)))
        if job.state == "running":
            job.state = "done"
            log.info("xfer_done", extra=job.to_json())

    async def _job_worker(self, job: Job, session: aiohttp.ClientSession) -> None:
        backoff = 0.0
        while job.state == "running" and job.pending:
            msg = job.pending.popleft()
            job.in_flight += 1
            try:
                sent = await self._send(session, job.target, msg)
            finally:
                job.in_flight -= 1
            if sent.verdict in (Verdict.MOVED, Verdict.DUPLICATE, None):
                job.moved += 1
                job.duplicates += sent.verdict == Verdict.DUPLICATE
                backoff = 0.0
                continue
            job.errors.append(sent.detail)
            if sent.verdict == Verdict.TRY_LATER and job.state == "running":
                job.pending.append(msg)
                backoff = min(max(0.5, backoff * 2), MAX_BACKOFF)
                job.wake.clear()
                try:
                    async with asyncio.timeout(backoff):
                        await job.wake.wait()  # a cancel or new messages end the wait
                except TimeoutError:
                    pass
                continue
            if job.state == "running":
                job.failed += 1
                self._on_result("failed")
                log.warning(
                    "xfer_message_refused",
                    extra={"queue_name": job.queue_name, "id": msg.id, "detail": sent.detail},
                )
            self._give_back(job, msg, reason=None)

    # -- one message ---------------------------------------------------------------

    async def _send(self, session: aiohttp.ClientSession, url: str, msg: Message) -> Sent:
        data = await self._spool.load_data(msg.id)
        if data is None:
            return Sent(None, f"{msg.id}: no longer spooled")
        assert self._secret is not None
        body = encode(msg, data, from_node=self._node_id)
        headers = {"Authorization": authorization(self._secret), "Content-Type": MEDIA_TYPE}
        try:
            async with session.post(url + PATH, data=body, headers=headers) as resp:
                status = resp.status
                raw = await resp.read()
        except aiohttp.ClientConnectorError as exc:
            return Sent(Verdict.TRY_LATER, f"{url}: cannot connect: {exc}", unreachable=True)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Sent(Verdict.TRY_LATER, f"{url}: {type(exc).__name__}: {exc}".rstrip(": "))
        answer = _json(raw)
        result = verdict(status, answer)
        queued = None
        if isinstance(answer, dict):
            value = answer.get("queued")
            queued = value if isinstance(value, int) and not isinstance(value, bool) else None
        if result in (Verdict.MOVED, Verdict.DUPLICATE):
            self._sent(msg, url, duplicate=result == Verdict.DUPLICATE)
            return Sent(result, f"{url}: {status}", status, queued)
        error = answer.get("error") if isinstance(answer, dict) else None
        text = error if isinstance(error, str) else raw[:200].decode("utf-8", "replace")
        stopping = isinstance(answer, dict) and answer.get("stopping") is True
        return Sent(result, f"{url}: {status} {text}".strip(), status, queued, stopping=stopping)

    def _sent(self, msg: Message, url: str, *, duplicate: bool) -> None:
        """The peer has it on stable storage: log XferOut, then forget our copy."""
        note = " (it already had it)" if duplicate else ""
        response = Response.parse(250, f"transferred to {url}{note}")
        host = urlsplit(url).hostname or url
        record = self._outcomes.record(
            RecordType.XFER_OUT,
            msg,
            response,
            Attempt(site=xfer_queue_name(url), peer=PeerAddress(name=url, addr=host)),
            delivery_protocol="xfer",
        )
        self._logs.emit(record)
        self._spool.remove_nowait([msg.id])
        self._on_result("duplicate" if duplicate else "sent")

    def _log_rebind(self, msg: Message, *, from_queue: str, to_queue: str, reason: str) -> None:
        moved = dataclasses.replace(msg, queue=to_queue)
        response = Response.parse(250, f"Rebound from {from_queue}: {reason}")
        self._logs.emit(self._outcomes.record(RecordType.ADMIN_REBIND, moved, response, Attempt()))

    # -- scale-in ------------------------------------------------------------------

    async def scale_in(self, http_port: int) -> JsonObject:
        """Send every spooled message to the peers within ``cluster.xfer_deadline``.
        Returns (and logs) what happened; never raises for a peer's failure."""
        started = time.monotonic()
        cfg = self._cluster
        await self._spool.flush()
        messages = await self._spool.messages()
        result: JsonObject = {"messages": len(messages), "moved": 0, "duplicates": 0}
        if not messages:
            if cfg.peers:  # a lone node has nothing to say about a scale-in
                log.info("scale_in_done", extra={**result, "left": 0, "seconds": 0.0})
            return result
        if self._secret is None or not cfg.peers:
            why = "no cluster secret" if self._secret is None else "no peers (cluster.peers)"
            # A lone node (no peers) keeps its spool for its next start: that is no fault.
            level = logging.INFO if not cfg.peers else logging.WARNING
            log.log(level, "scale_in_skipped", extra={"reason": why, "left": len(messages)})
            return {**result, "left": len(messages), "skipped": why}
        urls = await peer_urls(cfg.peers, http_port)
        loads = PeerLoads(urls)
        pending = deque(messages)
        counts = {"moved": 0, "duplicates": 0, "refused": 0}
        timeout = aiohttp.ClientTimeout(total=cfg.xfer_timeout)
        connector = aiohttp.TCPConnector(limit=cfg.xfer_concurrency)
        reached = False
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            workers = [
                asyncio.create_task(self._scale_in_worker(session, loads, pending, counts))
                for _ in range(min(cfg.xfer_concurrency, len(pending)))
            ]
            try:
                async with asyncio.timeout(cfg.xfer_deadline):
                    await asyncio.gather(*workers)
            except TimeoutError:
                reached = True
            finally:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        await self._spool.flush()  # the deletions of what moved, before the spool closes
        left = self._spool.count
        out: JsonObject = {
            **result,
            "moved": counts["moved"],
            "duplicates": counts["duplicates"],
            "refused": counts["refused"],
            "left": left,
            "peers": len(urls),
            "peers_left_out": sorted(loads.dropped),
            "seconds": round(time.monotonic() - started, 3),
        }
        if reached:
            log.warning("scale_in_deadline_reached", extra={**out, "deadline": cfg.xfer_deadline})
        else:
            log.info("scale_in_done", extra=out)
        return out

    async def _scale_in_worker(
        self,
        session: aiohttp.ClientSession,
        loads: PeerLoads,
        pending: deque[Message],
        counts: dict[str, int],
    ) -> None:
        while pending:
            now = time.monotonic()
            url = loads.pick(now)
            if url is None:
                wake = loads.next_wake()
                if wake is None:
                    return  # no usable peer left: the rest stays spooled
                await asyncio.sleep(max(0.05, wake - now))
                continue
            msg = pending.popleft()
            loads.in_flight[url] = loads.in_flight.get(url, 0) + 1
            try:
                sent = await self._send(session, url, msg)
            finally:
                loads.in_flight[url] -= 1
            if sent.queued is not None:
                loads.queued[url] = sent.queued
            match sent.verdict:
                case Verdict.MOVED | None:
                    counts["moved"] += 1
                case Verdict.DUPLICATE:
                    counts["moved"] += 1
                    counts["duplicates"] += 1
                case Verdict.MESSAGE_REFUSED:
                    counts["refused"] += 1
                    self._on_result("failed")
                    log.warning(
                        "scale_in_message_refused", extra={"id": msg.id, "detail": sent.detail}
                    )
                case Verdict.TRY_LATER:
                    pending.appendleft(msg)
                    if sent.unreachable or sent.stopping:
                        self._leave_out(loads, url, sent.detail)  # nothing listens there
                    else:
                        rest = BUSY_REST if sent.status == 503 else SLOW_REST
                        loads.resting[url] = time.monotonic() + rest
                case Verdict.SELF | Verdict.PEER_REFUSED:
                    pending.appendleft(msg)
                    self._leave_out(loads, url, sent.detail)

    def _leave_out(self, loads: PeerLoads, url: str, detail: str) -> None:
        if url not in loads.dropped:
            loads.dropped.add(url)
            log.info("scale_in_peer_left_out", extra={"peer": url, "detail": detail})

    async def close(self) -> None:
        """Stop every job (shutdown); unsent messages stay spooled for scale-in or restart."""
        self._closed = True
        tasks = []
        for job in self._jobs.values():
            if job.state == "running":
                job.state = "stopped"
            job.wake.set()
            if job.task is not None:
                job.task.cancel()
                tasks.append(job.task)
        await asyncio.gather(*tasks, return_exceptions=True)


def _json(raw: bytes) -> Json:
    try:
        value: Json = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value
