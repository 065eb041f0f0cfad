"""Dispositions: what happens to a message after an attempt, in one place.

Exports:
    Attempt       where an attempt went (ready queue, source, pool, peer, TLS facts)
    Outcomes      delivered / transient / bounced / expired / from_response

Each disposition writes exactly one log record, updates the spool (remove or
persist the new due time and attempt count) and, for a retry, puts the message
back in its scheduled queue. Retry and expiry are decided by the pure
``queue_config.next_attempt``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from engine.logs.writer import LogWriter
from engine.policy.events import REQUEUE_MESSAGE, PolicyFailure, Registry, Rejected
from engine.policy.message import PolicyMessage
from engine.policy.queue_config import QueueConfig, next_attempt
from engine.policy.scheduling import Scheduling
from engine.queues.naming import scheduled_queue_name
from engine.queues.scheduled import Scheduler
from engine.records import LogRecord, Message, PeerAddress, RecordType, Response
from engine.storage.spool import Spool

__all__ = ["Attempt", "Outcomes", "EXPIRED"]


def _scheduling(msg: Message) -> Scheduling | None:
    raw = msg.meta.get("scheduling")
    if not raw:
        return None
    try:
        if not isinstance(raw, Mapping):
            raise ValueError(f"expected an object, got {raw!r}")
        return Scheduling.from_options(raw)
    except ValueError:
        log.warning("stored_scheduling_invalid", extra={"id": msg.id})
        return None


log = logging.getLogger("nimbus.outcomes")

EXPIRED = Response.parse(551, "5.4.7 Next delivery time would be after the expiration time")

CLASSIFIED = frozenset(
    {
        RecordType.BOUNCE,
        RecordType.TRANSIENT_FAILURE,
        RecordType.EXPIRATION,
        RecordType.ADMIN_BOUNCE,
        RecordType.REJECTION,
        RecordType.OOB,
        RecordType.FEEDBACK,
    }
)
"""Record types that carry a bounce classification (KumoMTA §7)."""


def classify(registry: Registry, response: Response) -> str:
    """The policy's bounce classifier verdict for ``response``, or ``Uncategorized``."""
    classifier = registry.bounce_classifier
    return "Uncategorized" if classifier is None else classifier.classify(response.single_line())


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """Facts about one delivery attempt, copied into its log record."""

    site: str = ""
    egress_source: str | None = None
    egress_pool: str | None = None
    peer: PeerAddress | None = None
    tls_cipher: str | None = None
    tls_protocol_version: str | None = None
    provider_name: str | None = None


class Outcomes:
    """Applies dispositions.

    spool / scheduler / logs: the node's parts.
    queue_config: async lookup of a scheduled queue's QueueConfig.
    node_id: copied into every record.
    """

    def __init__(
        self,
        *,
        spool: Spool,
        scheduler: Scheduler,
        logs: LogWriter,
        queue_config: Callable[[str], Awaitable[QueueConfig]],
        node_id: str,
        policy: Callable[[], Registry] = Registry,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._spool = spool
        self._scheduler = scheduler
        self._logs = logs
        self._queue_config = queue_config
        self._node_id = node_id
        self._policy = policy
        self._clock = clock
        self._rand = rand

    def record(
        self,
        kind: RecordType,
        msg: Message,
        response: Response,
        attempt: Attempt,
        *,
        delivery_protocol: str | None = None,
    ) -> LogRecord:
        """Build the log record for ``msg`` (shared with reception)."""
        record = LogRecord(
            type=kind,
            id=msg.id,
            sender=msg.sender,
            recipient=msg.recipient,
            queue=msg.queue,
            site=attempt.site,
            size=msg.size,
            response=response,
            timestamp=self._clock(),
            created=msg.created,
            nodeid=self._node_id,
            num_attempts=msg.num_attempts,
            peer_address=attempt.peer,
            egress_pool=attempt.egress_pool,
            egress_source=attempt.egress_source,
            tls_cipher=attempt.tls_cipher,
            tls_protocol_version=attempt.tls_protocol_version,
            provider_name=attempt.provider_name,
            delivery_protocol=delivery_protocol,
        )
        if kind in CLASSIFIED:
            record = dataclasses.replace(
                record, bounce_classification=classify(self._policy(), response)
            )
        return record

    async def from_response(self, msg: Message, response: Response, attempt: Attempt) -> None:
        """2xx delivered, 4xx retry later, 5xx bounce."""
        if response.is_success:
            self.delivered(msg, response, attempt)
        elif response.is_transient:
            await self.transient(msg, response, attempt)
        else:
            self.bounced(msg, response, attempt)

    def delivered(self, msg: Message, response: Response, attempt: Attempt) -> None:
        msg = dataclasses.replace(msg, num_attempts=msg.num_attempts + 1)
        self._logs.emit(
            self.record(RecordType.DELIVERY, msg, response, attempt, delivery_protocol="ESMTP")
        )
        self._spool.remove_nowait([msg.id])

    def bounced(self, msg: Message, response: Response, attempt: Attempt) -> None:
        msg = dataclasses.replace(msg, num_attempts=msg.num_attempts + 1)
        self._logs.emit(
            self.record(
                RecordType.BOUNCE,
                msg,
                response,
                attempt,
                delivery_protocol="ESMTP" if attempt.peer else None,
            )
        )
        self._spool.remove_nowait([msg.id])

    async def transient(self, msg: Message, response: Response, attempt: Attempt) -> None:
        """Log TransientFailure, then reschedule with backoff, or expire past max_age.

        The policy's ``requeue_message`` may rebind the message (change its queue meta)
        or ``reject`` it, which turns the failure into a Bounce with that reply.
        """
        msg = dataclasses.replace(msg, num_attempts=msg.num_attempts + 1)
        self._logs.emit(
            self.record(
                RecordType.TRANSIENT_FAILURE,
                msg,
                response,
                attempt,
                delivery_protocol="ESMTP" if attempt.peer else None,
            )
        )
        registry = self._policy()
        if registry.has(REQUEUE_MESSAGE):
            try:
                msg = await self._requeue_hook(registry, msg, response)
            except Rejected as exc:
                self._bounce_after_failure(msg, exc.response, attempt)
                return
            except PolicyFailure:
                pass  # logged by the registry; retry as if there were no hook
        cfg = await self._queue_config(msg.queue)
        now = self._clock()
        scheduling = _scheduling(msg)
        if scheduling is not None and scheduling.expires is not None:
            # set_scheduling's expires replaces max_age for this message (KumoMTA).
            cfg = dataclasses.replace(cfg, max_age=max(0.0, scheduling.expires - msg.created))
        due = next_attempt(cfg, msg.created, now, msg.num_attempts, self._rand())
        if due is not None and scheduling is not None:
            due = scheduling.adjust(due)
            if due - msg.created > cfg.max_age:
                due = None
        if due is None:
            self.expire(msg, attempt)
            return
        self.requeue(dataclasses.replace(msg, due=due))

    async def _requeue_hook(self, registry: Registry, msg: Message, response: Response) -> Message:
        pm = PolicyMessage(msg.id, msg.sender, msg.recipient, b"", dict(msg.meta))
        await registry.dispatch(REQUEUE_MESSAGE, pm, response, [], True, None)
        queue = scheduled_queue_name(pm.recipient(), pm.meta)
        if queue != msg.queue or pm.meta != msg.meta:
            log.info(
                "message_rebound",
                extra={"id": msg.id, "from_queue": msg.queue, "to_queue": queue},
            )
            return dataclasses.replace(msg, queue=queue, meta=pm.meta)
        return msg

    def _bounce_after_failure(self, msg: Message, response: Response, attempt: Attempt) -> None:
        # The TransientFailure is already logged (and counted the attempt).
        self._logs.emit(
            self.record(
                RecordType.BOUNCE,
                msg,
                response,
                attempt,
                delivery_protocol="ESMTP" if attempt.peer else None,
            )
        )
        self._spool.remove_nowait([msg.id])

    def expire(self, msg: Message, attempt: Attempt = Attempt()) -> None:
        self._logs.emit(self.record(RecordType.EXPIRATION, msg, EXPIRED, attempt))
        self._spool.remove_nowait([msg.id])

    def admin_bounce(self, msg: Message, reason: str, *, log: bool = True) -> None:
        """An operator's bounce: AdminBounce 551 5.7.1 (KumoMTA's text), spool entry gone."""
        if log:
            response = Response.parse(551, f"5.7.1 Administrator bounced with reason: {reason}")
            self._logs.emit(self.record(RecordType.ADMIN_BOUNCE, msg, response, Attempt()))
        self._spool.remove_nowait([msg.id])

    def admin_rebind(self, msg: Message, *, from_queue: str, reason: str) -> None:
        """An operator moved the message to another queue: AdminRebind record, requeue."""
        response = Response.parse(250, f"Rebound from {from_queue}: {reason}")
        self._logs.emit(self.record(RecordType.ADMIN_REBIND, msg, response, Attempt()))
        self.requeue(msg)

    def requeue(self, msg: Message) -> None:
        """Persist the message's new state and put it back in its scheduled queue."""
        self._spool.update_nowait(msg)
        self._scheduler.insert(msg)

    def delay(self, msg: Message, seconds: float) -> None:
        """Put a message back without counting an attempt (ready queue full, throttled)."""
        self.requeue(dataclasses.replace(msg, due=self._clock() + seconds))
