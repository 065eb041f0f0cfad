"""Ready queues: messages due now for one egress source -> MX site, and their connections.

Exports:
    DeliveryParts   the node's parts a queue uses: connector, resolver, spool, outcomes, ...
    ReadyQueue      enqueue / connection tasks / drain (its route: ``queues.connect``);
                    ``sessions()`` and ``abort(session_id)`` for operators
    Dispatcher      one connection task's state (session id, phase, counters)

The feedback loop (each decision is a pure function of ``queues/decisions.py``)::

    enqueue(msg):
        a connection idle-waiting for work takes msg directly; else append it
        (queue at path.max_ready: refuse, the router delays it)
        start connections_to_open(waiting, connecting, established,
                                  connection_limit, holding_off, stopping) tasks

    connection task, until it ends:
        if it has no session:
            end if nothing waits or the queue is stopping
            lease = gate.open(path)                  # shared connection_limit, rates
            refused(wait): step = after_lease_refused(wait, established)
                           hold off step.hold_off; end if step.sleep is None
                           else sleep step.sleep and ask again
            open_session (queues/connect.py): each target, each of its addresses
                (RFC 5321 §5.1, MX order); skip prohibited addresses (550 5.4.4);
                connector.connect -> session, or a connect/TLS failure: the next one
            none reached: hold off connect_backoff(consecutive failures, jitter)
                fate = after_no_target(established,
                                       no_target_is_permanent(tried_address, dns_transient))
                KEEP_WAITING (another session drains the queue) / every waiting message
                gets TRANSIENT or BOUNCE; end
        suspended: give every waiting message back for hold_delay(expires, now); end
        msg = next waiting message, or wait up to path.idle_timeout; none: end (idle close)
        rate_wait_fate(wait, idle_timeout, stopping): wait for the token here, or
            GIVE_BACK the message to its scheduled queue for that long
        reply = session.send(msg)              # lost session: synthetic 4xx, lost=True
        lost: lost_session_fate(loss, retried) = RETRY_NOW for a pooled session the
            peer closed before answering: log pooled_connection_stale, no record, no
            attempt; retire it and send msg first on a fresh session (once per message)
        failure reply: smtp_client_rewrite_delivery_status may change its code
        apply reply_fate(reply, lost) to msg: DELIVERED / TRANSIENT / BOUNCE
        retires_connection(reply, lost, usable, deliveries,
                           max_deliveries_per_connection, lease_kept): QUIT, release lease
    on exit: QUIT and release whatever is held; start connections again if messages
    wait; with no connection and nothing waiting, tell the router (on_idle)

A changed path (policy reload, TSA override) closes idle connections so the next
message opens one under the new settings; a delivery in progress finishes first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from engine.delivery.mta_sts import MtaStsPolicy
from engine.delivery.ports import Resolver, SmtpConnection, SmtpConnector, TlsPolicySource
from engine.policy.egress import EgressPathConfig, EgressSource
from engine.policy.events import Registry
from engine.queues.attempt import Sent, apply_fate, attempt_facts, deliver
from engine.queues.connect import NoTargetAvailable, ReadyRoute, Target, open_session
from engine.queues.controls import Controls
from engine.queues.decisions import (
    Fate,
    after_lease_refused,
    after_no_target,
    connect_backoff,
    connections_to_open,
    hold_delay,
    rate_wait_fate,
    retires_connection,
    worker_share,
)
from engine.queues.outcomes import Outcomes
from engine.records import Message, rfc3339
from engine.shaping.gate import Ticket
from engine.trace import CLIENT_CONTEXT

__all__ = ["DeliveryParts", "ReadyQueue"]

log = logging.getLogger("nimbus.ready")

IDLE_LEASE_CHECK = 2.0
"""Seconds between an idle connection's looks at whether its lease sets are full (then it
closes and gives its leases back; see ``ReadyQueue._idle_wait``)."""


class MessageData(Protocol):
    """Where message bodies are read from (the spool)."""

    async def load_data(self, id: str) -> bytes | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryParts:
    """The node's shared parts, the same for every ready queue.

    connector / resolver: the network seams (``delivery.ports``). spool: message bodies.
    outcomes: applies dispositions. policy: the current Registry. controls: admin and
    TSA holds. gate: connection leases and rates (None: only the local limit).
    allow_loopback_mx: ``delivery.allow_loopback_mx``: DNS answers may be loopback.
    tls_policy: MTA-STS policies and TLSA records (None: neither is applied).
    workers: the node's engine processes; each worker's ready queue opens at most
        ``worker_share(connection_limit, workers)`` connections (decisions.py).
    """

    connector: SmtpConnector
    resolver: Resolver
    spool: MessageData
    outcomes: Outcomes
    policy: Callable[[], Registry] = Registry
    controls: Controls | None = None
    gate: Any = None
    allow_loopback_mx: bool = False
    tls_policy: TlsPolicySource | None = None
    workers: int = 1


@dataclass(slots=True, kw_only=True)
class Dispatcher:
    """One connection task of a ready queue, as ``inspect-ready-q`` shows it.

    session_id: its id (KumoMTA's dispatcher session_id, a UUID). phase: ``connecting``,
    ``idle`` (waiting for a message), ``sending``. since: when it entered the phase
    (unix seconds). delivered / attempted: messages through it. in_flight: the message
    it is sending now, if any. aborted: an operator asked it to stop (abort).
    """

    session_id: str
    started: float
    phase: str = "connecting"
    since: float = 0.0
    attempted: int = 0
    in_flight: Message | None = None
    aborted: bool = False

    def enter(self, phase: str) -> None:
        self.phase, self.since = phase, time.time()

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "started": rfc3339(self.started),
            "phase": self.phase,
            "seconds_in_phase": round(max(0.0, now - self.since), 3),
            "attempted": self.attempted,
            "in_flight": self.in_flight.id if self.in_flight else None,
        }


class ReadyQueue:
    """One ``source->site@smtp_client`` queue and its connections.

    on_idle: called when the queue has neither messages nor connections (the router
    forgets it).
    """

    def __init__(
        self, route: ReadyRoute, parts: DeliveryParts, on_idle: Callable[[ReadyQueue], None]
    ) -> None:
        self.route = route
        self._parts = parts
        self._on_idle = on_idle
        self.states: dict[str, dict[str, str]] = {}
        """Why this queue is waiting (KumoMTA's ready-q-states): state -> {context, since}."""
        self.queue: deque[Message] = deque()
        self._waiters: deque[asyncio.Future[Message | None]] = deque()
        self._conns: set[asyncio.Task] = set()
        self._dispatchers: dict[asyncio.Task, Dispatcher] = {}
        self._established = 0
        self._hold_off_until = 0.0  # monotonic: no extra connections before then
        self._connect_hold_until = 0.0  # the same after no host answered; a session ends it
        self._connect_failures = 0  # consecutive times no host answered
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()

    # -- state -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.route.name

    @property
    def site(self) -> str:
        return self.route.site

    @property
    def source(self) -> EgressSource:
        return self.route.source

    @property
    def path(self) -> EgressPathConfig:
        return self.route.path

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def is_idle(self) -> bool:
        return not self.queue and not self._conns

    def reconfigure(
        self,
        *,
        path: EgressPathConfig,
        targets: tuple[Target, ...],
        mta_sts: MtaStsPolicy | None = None,
    ) -> None:
        """Adopt a changed path config (policy reload, TSA override, new MTA-STS policy).
        Idle connections close so the next message opens one under the new settings
        (e.g. TLS Required); a delivery in progress finishes on its connection."""
        self.route = dataclasses.replace(self.route, path=path, targets=targets, mta_sts=mta_sts)
        self._release_waiters()

    def enqueue(self, msg: Message) -> bool:
        """Add a due message; False when the queue is full (caller delays it)."""
        if self._hand_over(msg):
            return True
        if len(self.queue) >= self.path.max_ready:
            return False
        self.queue.append(msg)
        self._maybe_spawn()
        return True

    def _maybe_spawn(self) -> None:
        count = connections_to_open(
            waiting=len(self.queue),
            connecting=len(self._conns) - self._established,
            established=self._established,
            connection_limit=worker_share(self.path.connection_limit, self._parts.workers),
            holding_off=time.monotonic() < max(self._hold_off_until, self._connect_hold_until),
            stopping=self._stopping,
        )
        for _ in range(count):
            # Owned: kept in self._conns until it ends; drain waits for or cancels it.
            now = time.time()
            dispatcher = Dispatcher(session_id=str(uuid.uuid4()), started=now, since=now)
            task = asyncio.create_task(self._connection(dispatcher), name=f"conn:{self.name}")
            self._conns.add(task)
            self._dispatchers[task] = dispatcher
            self._idle.clear()

    def _hold_off(self, seconds: float) -> None:
        self._hold_off_until = max(self._hold_off_until, time.monotonic() + seconds)

    def set_state(self, state: str, context: str | None) -> None:
        """Record (or clear, with None) why this queue is waiting: ready-q-states."""
        if context is None:
            self.states.pop(state, None)
        elif state not in self.states:
            self.states[state] = {"context": context, "since": rfc3339(time.time())}

    def _release_waiters(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)  # "close, no work"
        self._waiters.clear()

    def _held(self) -> bool:
        """Suspended (admin or TSA): everything waiting goes back until the end."""
        controls = self._parts.controls
        now = time.time()
        hold = (
            None
            if controls is None
            else controls.ready_suspended(self.name, self.source.name, self.site, now)
        )
        self.set_state("suspended", hold.reason if hold else None)
        if hold is None:
            return False
        delay = hold_delay(expires=hold.expires, now=now)
        while self.queue:
            self._parts.outcomes.delay(self.queue.popleft(), delay)
        return True

    async def _next(self, timeout: float) -> Message | None:
        if self._stopping or self._held():
            return None  # draining: the rest stays spooled for the next start
        if self.queue:
            return self.queue.popleft()
        waiter: asyncio.Future[Message | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return waiter.result()  # handed over just as the timeout fired
            return None

    async def _idle_wait(self, ticket: Ticket | None) -> Message | None:
        """Wait up to ``idle_timeout`` for the next message; with leases held, look every
        ``IDLE_LEASE_CHECK`` seconds whether a lease set is full, and if so give the
        connection (and its lease) up now: idle connections of one worker, ready queue or
        node must not starve the others' first connections for the whole idle timeout."""
        total = self.path.idle_timeout
        gate = self._parts.gate
        if ticket is None or gate is None or not ticket.held or total <= IDLE_LEASE_CHECK:
            return await self._next(total)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total
        while True:
            step = min(IDLE_LEASE_CHECK, deadline - loop.time())
            if step <= 0:
                return None
            started = loop.time()
            msg = await self._next(step)
            if msg is not None or self._stopping:
                return msg
            if loop.time() - started < step * 0.9:
                return None  # not a timeout: held (suspended) or stopping
            if await gate.contended(ticket):
                log.debug("idle_connection_gives_up_lease", extra={"queue": self.name})
                return None

    # -- connections ---------------------------------------------------------------

    async def _slot(self) -> Ticket | None | float:
        """Connection leases from the gate: a Ticket, None (no gate), or seconds to wait."""
        gate = self._parts.gate
        if gate is None:
            return None
        got = await gate.open(self.path, self.name)
        if isinstance(got, Ticket):
            self.set_state("connection_limited", None)
            return got
        self.set_state("connection_limited", f"connection limit reached; next slot in {got:.1f}s")
        return got

    async def _rate_wait(self, msg: Message) -> bool:
        """Wait for the message-rate buckets; False when the message was given back."""
        gate = self._parts.gate
        if gate is None:
            return True
        while (wait := await gate.message_wait(self.path, self.name)) is not None:
            self.set_state(
                "message_rate_throttled", f"max_message_rate reached; next token in {wait:.2f}s"
            )
            fate = rate_wait_fate(
                wait=wait, idle_timeout=self.path.idle_timeout, stopping=self._stopping
            )
            if fate is Fate.GIVE_BACK:
                self._parts.outcomes.delay(msg, wait)
                return False
            await asyncio.sleep(wait)  # only this connection waits; other queues run on
        self.set_state("message_rate_throttled", None)
        return True

    async def _session(self, retry: Message | None) -> tuple[SmtpConnection, Ticket | None] | None:
        """A lease and a session, or None: this task ends (nothing to do, or no host).

        retry: a message this task owes an immediate send (its pooled session was stale);
        with None it goes back to the front of the queue, for the others or the next start.
        """
        while True:
            if (not self.queue and retry is None) or self._stopping:
                self._put_back(retry)
                return None
            slot = await self._slot()
            if isinstance(slot, float):
                step = after_lease_refused(wait=slot, established=self._established)
                self._hold_off(step.hold_off)
                if step.sleep is None:
                    self._put_back(retry)
                    return None  # the open connections drain the queue
                await asyncio.sleep(step.sleep)
                continue
            try:
                conn = await open_session(
                    self.route,
                    connector=self._parts.connector,
                    resolver=self._parts.resolver,
                    allow_loopback_mx=self._parts.allow_loopback_mx,
                    tls_policy=self._parts.tls_policy,
                )
            except NoTargetAvailable as exc:
                if slot is not None:
                    await self._parts.gate.close(slot)
                self._connect_failures += 1
                hold = connect_backoff(failures=self._connect_failures, rand=random.random())
                self._connect_hold_until = max(self._connect_hold_until, time.monotonic() + hold)
                self._put_back(retry)
                await self._fail_waiting(exc)
                return None
            self._connect_failures, self._connect_hold_until = 0, 0.0  # a host answers again
            self._established += 1
            return conn, slot

    def _put_back(self, msg: Message | None) -> None:
        """A retry this task cannot send: to an idle connection, else the queue front."""
        if msg is not None and not self._hand_over(msg):
            self.queue.appendleft(msg)

    def _hand_over(self, msg: Message) -> bool:
        """Give ``msg`` to a connection idle-waiting for work, if there is one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(msg)
                return True
        return False

    def sessions(self) -> list[Dispatcher]:
        """The connection tasks running now (``inspect-ready-q --connections``)."""
        return list(self._dispatchers.values())

    def abort(self, session_id: str) -> bool:
        """Stop one connection task now (``abort-ready-q-conn``): its session is closed
        and the message it was sending goes back to its scheduled queue, due now, with
        no attempt counted. False when no task has that id."""
        for task, dispatcher in self._dispatchers.items():
            if dispatcher.session_id == session_id and not task.done():
                dispatcher.aborted = True
                task.cancel()
                return True
        return False

    async def _connection(self, me: Dispatcher) -> None:
        # This task's own context: the client trace events of its sessions carry these.
        CLIENT_CONTEXT.set(
            {
                "session_id": me.session_id,
                "ready_queue": self.name,
                "egress_source": self.source.name,
                "egress_pool": self.route.pool,
            }
        )
        try:
            await self._dispatch(me)
        except asyncio.CancelledError:
            if not me.aborted:
                raise  # shutdown: what is in hand stays spooled for the next start
            if me.in_flight is not None:
                self._parts.outcomes.delay(me.in_flight, 0.0)
            log.info("ready_queue_connection_aborted", extra={"queue": self.name})

    async def _dispatch(self, me: Dispatcher) -> None:
        conn: SmtpConnection | None = None
        ticket: Ticket | None = None
        retry: Message | None = None  # its pooled session was stale: first on a fresh one
        gate = self._parts.gate
        try:
            while True:
                if conn is None:
                    me.enter("connecting")
                    me.in_flight = retry
                    session = await self._session(retry)
                    if session is None:
                        me.in_flight = None
                        return
                    conn, ticket = session
                msg, retried = retry, retry is not None  # a retry's rate token is spent
                retry = None
                if msg is None:
                    me.enter("idle")
                    msg = await self._idle_wait(ticket)
                    if msg is None:
                        return
                    me.in_flight = msg
                    if not await self._rate_wait(msg):
                        me.in_flight = None
                        continue
                me.enter("sending")
                me.in_flight = msg
                me.attempted += 1
                kept = ticket is None or await gate.keep(ticket)
                sent = await self._deliver(conn, msg, retried=retried)
                me.in_flight = None
                retry = msg if sent.stale else None
                if retires_connection(
                    response=sent.response,
                    lost=sent.lost,
                    usable=conn.is_usable,
                    deliveries=conn.deliveries,
                    max_deliveries=self.path.max_deliveries_per_connection,
                    lease_kept=kept,
                ):
                    self._established -= 1
                    await conn.close()
                    conn = None
                    if ticket is not None:
                        await gate.close(ticket)
                        ticket = None
        finally:
            if conn is not None:
                self._established -= 1
                await asyncio.shield(conn.close())
            if ticket is not None:
                await asyncio.shield(gate.close(ticket))
            current = asyncio.current_task()
            self._conns.discard(current)
            if current is not None:
                self._dispatchers.pop(current, None)
            if self.queue and not self._stopping:
                self._maybe_spawn()
            if not self._conns:
                self._idle.set()
                if not self.queue:
                    self._on_idle(self)

    async def _deliver(self, conn: SmtpConnection, msg: Message, *, retried: bool) -> Sent:
        """Send one message and apply its fate (``queues.attempt.deliver``)."""
        data = await self._parts.spool.load_data(msg.id)
        if data is None:
            return Sent(response=None)  # removed while queued (admin bounce); nothing to send
        return await deliver(
            self.route,
            conn,
            msg,
            data,
            outcomes=self._parts.outcomes,
            policy=self._parts.policy,
            retried=retried,
        )

    async def _fail_waiting(self, exc: NoTargetAvailable) -> None:
        """No host reachable: the waiting messages' fate (after_no_target)."""
        fate = after_no_target(established=self._established, permanent=exc.permanent)
        if fate is Fate.KEEP_WAITING:
            return
        attempt = attempt_facts(self.route)
        while self.queue:
            await apply_fate(
                self._parts.outcomes, fate, self.queue.popleft(), exc.response, attempt
            )

    # -- shutdown ----------------------------------------------------------------

    def stop_new_work(self) -> None:
        """Finish the message in hand on each connection, start nothing new."""
        self._stopping = True
        self._release_waiters()

    async def wait_idle(self) -> None:
        while self._conns:
            await self._idle.wait()
            if self._conns:
                self._idle.clear()

    async def cancel(self) -> None:
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
