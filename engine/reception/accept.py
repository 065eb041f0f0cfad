"""Accepting messages: the path shared by the SMTP and HTTP listeners.

Exports:
    Incoming      one message to accept (one recipient, as KumoMTA)
    Accepted      its spool id and queue
    Acceptor      accept(...) -> per-message results; accept_transfer(...) for a
                  message another node hands over; readiness and drain state;
                  close(timeout) waits for commits still running
    Transferred   what accept_transfer did (stored, or already spooled)

For a batch (one SMTP DATA, or one HTTP request) the acceptor runs the policy
event (``smtp_server_message_received`` / ``http_message_generated``) for each
message, names its scheduled queue, stores the whole batch in one spool commit,
and only then logs ``Reception`` and schedules it. A recipient on the suppression list
(checked after the event, when the policy has set the tenant) is refused with its
``550 5.7.1`` and a ``Rejection`` record, before any DKIM signing. Store-and-schedule runs
shielded from cancellation: a client that disconnects mid-commit can cost a
duplicate, never a message stranded in the spool.

Faults stay with one request: meta a handler left that JSON cannot encode fails that
message with the event's 451 (and a ``policy_meta_not_json`` line naming the event and
key) before anything is stored; the wait for the commit is bounded by
``spool.write_timeout`` (then SpoolTimeout: SMTP 451 4.3.0, HTTP 503). A commit that
finishes after its timeout is still logged and scheduled (the client may retry: a
duplicate, never a loss).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.dkim.service import DkimService
from engine.dkim.signer import DkimError
from engine.logs.writer import LogWriter
from engine.policy.events import XFER_MESSAGE_RECEIVED, Event, PolicyFailure, Registry, Rejected
from engine.policy.message import PolicyMessage, check_meta
from engine.queues.naming import NULL_QUEUE, scheduled_queue_name
from engine.queues.scheduled import Scheduler
from engine.records import (
    Json,
    LogRecord,
    Message,
    PeerAddress,
    RecordType,
    Response,
    new_message_id,
)
from engine.storage.spool import Spool, SpoolDuplicate, SpoolTimeout
from engine.suppression.service import Suppressed, Suppressions

__all__ = ["Incoming", "Accepted", "Acceptor", "Transferred", "RECEIVED"]

# Messages handled between two yields to the loop: a 10,000-recipient injection is one
# batch, and its per-message work (event, naming, Reception record, scheduling: ~50-150 us
# each) must not hold the loop that serves every other session for a second.
YIELD_EVERY = 64

log = logging.getLogger("nimbus.accept")

RECEIVED = Response(code=250, content="")


@dataclass(frozen=True, slots=True, kw_only=True)
class Incoming:
    sender: str
    recipient: str
    data: bytes
    meta: dict[str, Json] = field(default_factory=dict)
    id: str = field(default_factory=new_message_id)


@dataclass(frozen=True, slots=True)
class Accepted:
    id: str
    queue: str


@dataclass(frozen=True, slots=True)
class Transferred:
    id: str
    queue: str
    duplicate: bool  # already spooled here (a repeated transfer): nothing stored


class Acceptor:
    """The reception half of a node.

    policy: returns the current Registry. node_id: for log records.
    dkim: signs messages whose policy called ``msg.dkim_sign`` (default: a DkimService).
    suppressions: the suppression list, checked for each message after the reception
        event (its meta ``tenant`` known); None: no check.
    """

    def __init__(
        self,
        *,
        spool: Spool,
        scheduler: Scheduler,
        logs: LogWriter,
        policy: Callable[[], Registry],
        node_id: str,
        clock: Callable[[], float] = time.time,
        dkim: DkimService | None = None,
        suppressions: Suppressions | None = None,
    ) -> None:
        self._dkim = DkimService() if dkim is None else dkim
        self.suppressions = suppressions
        self._spool = spool
        self._scheduler = scheduler
        self._logs = logs
        self._policy = policy
        self._node_id = node_id
        self._clock = clock
        self.not_ready: str | None = "waiting for spool startup"
        # Spool commits run as their own tasks so a client that hangs up mid-commit cannot
        # cancel one half-way; they are kept here so close() can wait for them.
        self._stores: set[asyncio.Task[None]] = set()

    def set_ready(self) -> None:
        self.not_ready = None

    def set_draining(self) -> None:
        self.not_ready = "shutting down"

    async def accept(
        self,
        batch: list[Incoming],
        *,
        event: Event,
        event_arg: Any,
        protocol: str,
        peer: PeerAddress | None,
        all_or_nothing: bool = False,
    ) -> list[Accepted | Rejected | PolicyFailure]:
        """Accept a batch; each result is Accepted, or the Rejected/PolicyFailure for it.

        all_or_nothing: one refusal stores nothing of the batch (SMTP: one DATA has one
        reply, so a 4xx/5xx must not be given for copies that were spooled); the results
        end at that refusal. A suppressed recipient (its Rejection record logged) is no
        refusal of the others: its copy alone is left out, and only a batch of nothing
        but suppressed recipients is refused. Without it (HTTP injection) the others are
        stored, as KumoMTA's ``failed_recipients``.

        Raises SpoolFull / SpoolError when the batch could not be stored (nothing was),
        SpoolTimeout when the commit did not finish within ``spool.write_timeout`` (it
        may still finish: then the batch is logged and scheduled).
        """
        now = self._clock()
        results: list[Accepted | Rejected | PolicyFailure] = []
        to_store: list[tuple[Message, bytes]] = []
        registry = self._policy()
        for index, item in enumerate(batch):
            if all_or_nothing and results and _refuses_all(results[-1]):
                break  # refused: the rest need no event, no signing
            if index % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            pm = PolicyMessage(item.id, item.sender, item.recipient, item.data, item.meta)
            try:
                await registry.dispatch(event, pm, event_arg)
                if self.suppressions is not None:  # before signing: a refusal costs no RSA
                    tenant = pm.meta.get("tenant")
                    await self.suppressions.check(
                        pm.recipient(), tenant if isinstance(tenant, str) else None, registry
                    )
                if pm.dkim_requests():  # signed after the event: the bytes are final
                    pm.set_data(await self._dkim.sign(pm.get_data(), pm.dkim_requests()))
            except Suppressed as exc:
                self.log_rejection(
                    sender=pm.sender(),
                    recipient=pm.recipient(),
                    response=exc.response,
                    protocol=protocol,
                    peer=peer,
                )
                results.append(exc)
                continue
            except (Rejected, PolicyFailure) as exc:
                results.append(exc)
                continue
            except DkimError as exc:
                results.append(PolicyFailure("dkim_sign", str(exc)))
                continue
            try:
                check_meta(pm.meta)  # edited in place past set_meta: the spool needs JSON
            except (TypeError, ValueError) as exc:
                log.error(
                    "policy_meta_not_json",
                    extra={"event_name": event.name, "message_id": item.id, "error": str(exc)},
                )
                results.append(PolicyFailure(event.name, str(exc)))
                continue
            queue = scheduled_queue_name(pm.recipient(), pm.meta)
            results.append(Accepted(item.id, queue))
            if queue == NULL_QUEUE:
                continue  # discarded by policy, still a success (KumoMTA semantics)
            data = pm.get_data()
            scheduling = pm.get_scheduling()
            due = scheduling.adjust(now) if scheduling else now
            msg = Message(
                id=item.id,
                sender=pm.sender(),
                recipient=pm.recipient(),
                queue=queue,
                meta=pm.meta,
                created=now,
                due=due,
                size=len(data),
            )
            to_store.append((msg, data))
        if all_or_nothing:
            refusals = [r for r in results if _refuses_all(r)]
            if refusals:
                return refusals[:1]
            if not any(isinstance(r, Accepted) for r in results):
                return results[:1]  # every recipient suppressed: that is the reply
            results = [r for r in results if isinstance(r, Accepted)]
        if to_store:
            task = asyncio.create_task(self._store(to_store, protocol, peer), name="spool-commit")
            self._stores.add(task)
            task.add_done_callback(self._stores.discard)
            await self._wait_stored(task, len(to_store))
        return results

    async def accept_transfer(
        self, msg: Message, data: bytes, *, from_node: str, peer: PeerAddress | None
    ) -> Transferred:
        """Take over a message another node held: the ``xfer_message_received`` event,
        then one spool commit (fsync) before returning, then ``XferIn`` and scheduling.
        The id, created time (so ``max_age`` counts from the first reception), due time
        and attempt count are kept; the queue follows the meta (as at reception), so a
        handler that edits it moves the message.

        Raises Rejected / PolicyFailure from the event, SpoolFull / SpoolError /
        SpoolTimeout as ``accept``; a message already spooled here is a duplicate.
        """
        if await self._spool.contains(msg.id):
            return Transferred(msg.id, msg.queue, duplicate=True)
        pm = PolicyMessage(msg.id, msg.sender, msg.recipient, data, dict(msg.meta))
        info: dict[str, Json] = {"from_node": from_node, "peer": peer.addr if peer else None}
        await self._policy().dispatch(XFER_MESSAGE_RECEIVED, pm, info)
        try:
            check_meta(pm.meta)
        except (TypeError, ValueError) as exc:
            raise PolicyFailure(XFER_MESSAGE_RECEIVED.name, str(exc)) from None
        queue = msg.queue
        if pm.meta != msg.meta or pm.recipient() != msg.recipient:
            queue = scheduled_queue_name(pm.recipient(), pm.meta)
        body = pm.get_data()
        stored = Message(
            id=msg.id,
            sender=pm.sender(),
            recipient=pm.recipient(),
            queue=queue,
            meta=pm.meta,
            created=msg.created,
            due=msg.due,
            num_attempts=msg.num_attempts,
            size=len(body),
        )
        task = asyncio.create_task(
            self._store_transfer(stored, body, from_node, peer), name="spool-commit-xfer"
        )
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)
        try:
            await self._wait_stored(task, 1)
        except SpoolDuplicate:  # the same id arrived twice at once
            return Transferred(msg.id, queue, duplicate=True)
        return Transferred(msg.id, queue, duplicate=False)

    async def _store_transfer(
        self, msg: Message, data: bytes, from_node: str, peer: PeerAddress | None
    ) -> None:
        await self._spool.save([(msg, data)])
        self._logs.emit(
            LogRecord(
                type=RecordType.XFER_IN,
                id=msg.id,
                sender=msg.sender,
                recipient=msg.recipient,
                queue=msg.queue,
                site="",
                size=msg.size,
                response=Response.parse(250, f"transferred from {from_node}"),
                timestamp=self._clock(),
                created=msg.created,
                nodeid=self._node_id,
                num_attempts=msg.num_attempts,
                peer_address=peer,
                meta=msg.meta,
                reception_protocol="xfer",
            )
        )
        self._scheduler.insert(msg)

    async def _wait_stored(self, task: asyncio.Task[None], count: int) -> None:
        """Wait for a store task up to ``spool.write_timeout``; it runs on past that."""
        timeout = self._spool.settings.write_timeout
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(task)
        except TimeoutError:
            if task.done():
                raise  # the store's own error, not our deadline
            log.error("spool_write_timed_out", extra={"timeout": timeout, "messages": count})
            raise SpoolTimeout(
                f"spool commit of {count} message(s) did not finish within {timeout}s "
                "(spool.write_timeout)"
            ) from None

    async def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for spool commits whose client went away, then
        cancel the rest (call before closing the spool)."""
        if not self._stores:
            return
        _, pending = await asyncio.wait(set(self._stores), timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _store(
        self, items: list[tuple[Message, bytes]], protocol: str, peer: PeerAddress | None
    ) -> None:
        await self._spool.save(items)
        for index, (msg, _) in enumerate(items):
            if index % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            self._logs.emit(self._reception(msg, protocol, peer))
            self._scheduler.insert(msg)

    def _reception(self, msg: Message, protocol: str, peer: PeerAddress | None) -> LogRecord:
        return LogRecord(
            type=RecordType.RECEPTION,
            id=msg.id,
            sender=msg.sender,
            recipient=msg.recipient,
            queue=msg.queue,
            site="",
            size=msg.size,
            response=RECEIVED,
            timestamp=self._clock(),
            created=msg.created,
            nodeid=self._node_id,
            peer_address=peer,
            meta=msg.meta,
            reception_protocol=protocol,
        )

    def classify(self, response: Response) -> str:
        """The policy's bounce classification of ``response`` (``Uncategorized`` without)."""
        classifier = self._policy().bounce_classifier
        return (
            "Uncategorized" if classifier is None else classifier.classify(response.single_line())
        )

    def log_records(self, records: list[LogRecord]) -> None:
        """Log records made outside the accept path (``OOB`` / ``Feedback`` reports)."""
        for record in records:
            self._logs.emit(record)

    @property
    def node_id(self) -> str:
        return self._node_id

    def log_rejection(
        self,
        *,
        sender: str,
        recipient: str,
        response: Response,
        protocol: str,
        peer: PeerAddress | None,
    ) -> None:
        """Log a ``Rejection`` record: our 4xx/5xx to a client."""
        now = self._clock()
        classification = self.classify(response)
        self._logs.emit(
            LogRecord(
                type=RecordType.REJECTION,
                id=new_message_id(),
                sender=sender,
                recipient=recipient,
                queue="",
                site="",
                size=0,
                response=response,
                timestamp=now,
                created=now,
                nodeid=self._node_id,
                peer_address=peer,
                reception_protocol=protocol,
                bounce_classification=classification,
            )
        )


def _refuses_all(result: Accepted | Rejected | PolicyFailure) -> bool:
    """Does this result refuse a whole SMTP transaction? (A suppressed recipient does not.)"""
    return not isinstance(result, Accepted | Suppressed)
