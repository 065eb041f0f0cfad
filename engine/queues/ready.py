"""Ready queues: messages due now for one egress source -> MX site, and their connections.

Exports:
    Target        a host to try (MX name or configured host) and port
    ReadyQueue    enqueue / connection tasks / drain

A ready queue opens connections on demand, up to the path's ``connection_limit``
and never more than there are messages waiting. Each connection tries the targets
in order (next host on connect failure, RFC 5321 §5.1), then delivers messages one
by one, reusing the session up to ``max_deliveries_per_connection``, and closes
after ``idle_timeout`` without work. A message arriving while a connection is idle
is handed to it directly. When no target can be reached and no other connection
is delivering, every waiting message gets a TransientFailure and is rescheduled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.config.settings import Settings
from engine.delivery.broken_tls import BrokenTlsHosts, open_connection
from engine.delivery.client import ConnectionLost, DeliveryError, SmtpClientConnection
from engine.delivery.mx import HostResolutionError, MxResolver, order_addresses
from engine.policy.egress import EgressPathConfig, EgressSource, is_prohibited
from engine.policy.events import PolicyFailure, Registry, Rejected
from engine.queues.controls import Controls
from engine.queues.naming import QueueName
from engine.queues.outcomes import Attempt, Outcomes
from engine.records import Message, Response, rfc3339
from engine.shaping.gate import Gate, Ticket
from engine.storage.spool import Spool

__all__ = ["Target", "ReadyQueue", "NoTargetAvailable"]

log = logging.getLogger("nimbus.ready")

CONNECT_BACKOFF = 5.0
MAX_SLOT_WAIT = 3.0
"""Longest single wait for a connection slot before asking the gate again."""
"""After a failed connect, no extra connections for this long while others deliver."""


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int


class NoTargetAvailable(Exception):
    """Every target failed; ``response`` says why (the last failure)."""

    def __init__(self, response: Response, permanent: bool = False) -> None:
        super().__init__(str(response))
        self.response = response
        self.permanent = permanent


class ReadyQueue:
    """One ``source->site@smtp_client`` queue and its connections."""

    def __init__(
        self,
        *,
        name: str,
        site: str,
        targets: tuple[Target, ...],
        explicit: bool,
        source: EgressSource,
        pool: str,
        path: EgressPathConfig,
        settings: Settings,
        resolver: MxResolver,
        spool: Spool,
        outcomes: Outcomes,
        on_idle: Callable[[ReadyQueue], None],
        policy: Callable[[], Registry] = Registry,
        controls: Controls | None = None,
        gate: Gate | None = None,
        broken_tls: BrokenTlsHosts | None = None,
    ) -> None:
        self.name = name
        self.site = site
        self.targets = targets
        self.explicit = explicit
        self.source = source
        self.pool = pool
        self.path = path
        self._settings = settings
        self._resolver = resolver
        self._spool = spool
        self._outcomes = outcomes
        self._on_idle = on_idle
        self._policy = policy
        self._controls = controls
        self._gate = gate
        self._broken_tls = broken_tls or BrokenTlsHosts()
        self.states: dict[str, dict[str, str]] = {}
        """Why this queue is waiting (KumoMTA's ready-q-states): state -> {context, since}."""
        self.queue: deque[Message] = deque()
        # None: "no work" (closing, or no more work), the connection stops waiting.
        self._waiters: deque[asyncio.Future[Message | None]] = deque()
        self._conns: set[asyncio.Task] = set()
        self._established = 0
        self._backoff_until = 0.0
        self._slot_retry_at = 0.0  # a shared connection slot was refused until then
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()

    # -- state -------------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def is_idle(self) -> bool:
        return not self.queue and not self._conns

    def reconfigure(self, *, path: EgressPathConfig, targets: tuple[Target, ...]) -> None:
        """Adopt a changed path config (policy reload, TSA override). Idle connections
        close so the next message opens one under the new settings (e.g. TLS Required);
        a delivery in progress finishes on its connection."""
        self.path = path
        self.targets = targets
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)  # "close, no work"
        self._waiters.clear()

    def enqueue(self, msg: Message) -> bool:
        """Add a due message; False when the queue is full (caller delays it)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(msg)
                return True
        if len(self.queue) >= self.path.max_ready:
            return False
        self.queue.append(msg)
        self._maybe_spawn()
        return True

    def _maybe_spawn(self) -> None:
        """Open connections while messages outnumber connections still connecting."""
        if self._stopping:
            return
        if self._established and time.monotonic() < max(self._backoff_until, self._slot_retry_at):
            # A host refused us, or the cluster's connection limit is full: the open
            # connections drain the queue; asking again at once would spin.
            return
        while len(self._conns) < self.path.connection_limit and len(
            self._conns
        ) - self._established < len(self.queue):
            task = asyncio.create_task(self._connection(), name=f"conn:{self.name}")
            self._conns.add(task)
            self._idle.clear()

    def _suspension(self) -> Any:
        if self._controls is None:
            return None
        return self._controls.ready_suspended(self.name, self.source.name, self.site, time.time())

    def set_state(self, state: str, context: str | None) -> None:
        """Record (or clear, with None) why this queue is waiting: ready-q-states."""
        if context is None:
            self.states.pop(state, None)
        elif state not in self.states:
            self.states[state] = {"context": context, "since": rfc3339(time.time())}

    def _hold_all(self, hold: Any) -> None:
        """Suspended: everything waiting goes back to its scheduled queue until the end."""
        delay = max(1.0, hold.expires - time.time())
        while self.queue:
            self._outcomes.delay(self.queue.popleft(), delay)

    async def _next(self, timeout: float) -> Message | None:
        if self._stopping:
            return None  # draining: the rest stays spooled for the next start
        hold = self._suspension()
        self.set_state("suspended", hold.reason if hold else None)
        if hold is not None:
            self._hold_all(hold)
            return None
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

    # -- connections ---------------------------------------------------------------

    async def _open(self) -> SmtpClientConnection:
        """Try each target in order; raise NoTargetAvailable with the last failure."""
        last = Response.parse(451, f"4.4.0 no usable hosts for {self.site}")
        permanent = True
        allow_loopback = self.explicit or self._settings.delivery.allow_loopback_mx
        path, plan = self.path, 0
        for target in self.targets:
            try:
                addresses = await self._addresses(target.host)
            except HostResolutionError as exc:
                last = Response.parse(exc.code, f"{exc.enhanced} {exc}")
                permanent &= not exc.transient
                continue
            ordered = order_addresses(
                addresses, path.ip_lookup_strategy, path.max_mx_addresses_per_host
            )
            for address in ordered:
                if not allow_loopback and is_prohibited(address, path.prohibited_hosts):
                    last = Response.parse(
                        550, f"5.4.4 {target.host} resolves to prohibited address {address}"
                    )
                    continue
                permanent = False
                if path.skip_hosts and is_prohibited(address, path.skip_hosts):
                    last = Response.parse(451, f"4.4.4 {target.host} [{address}] is in skip_hosts")
                    continue  # not an error while other hosts remain (KumoMTA)
                if plan >= path.max_mx_plan_size:
                    raise NoTargetAvailable(last, permanent=permanent)
                plan += 1
                try:
                    return await open_connection(
                        self._broken_tls,
                        host_name=target.host,
                        address=address,
                        port=target.port,
                        path=self.path,
                        source=self.source,
                        ehlo_domain=(
                            self.path.ehlo_domain
                            or self.source.ehlo_domain
                            or self._settings.effective_hostname
                        ),
                    )
                except DeliveryError as exc:
                    last = exc.response
                    log.info(
                        "connect failed",
                        extra={
                            "ready_queue": self.name,
                            "host": target.host,
                            "address": address,
                            "response": str(exc.response),
                        },
                    )
        raise NoTargetAvailable(last, permanent=permanent)

    async def _addresses(self, host: str) -> list[str]:
        """An IP literal (sink, mx_list) is its own address; names go to DNS."""
        try:
            return [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            return await self._resolver.resolve_addresses(host)

    async def _slot(self) -> Ticket | None | float:
        """Connection leases from the gate: a Ticket, None (no gate), or seconds to wait."""
        if self._gate is None:
            return None
        got = await self._gate.open(self.path, self.name)
        if isinstance(got, Ticket):
            self.set_state("connection_limited", None)
            return got
        self.set_state("connection_limited", f"connection limit reached; next slot in {got:.1f}s")
        return got

    async def _rate_wait(self, msg: Message) -> bool:
        """Wait for the message-rate buckets; False when the message was delayed instead
        (a wait longer than idle_timeout goes back to the scheduled queue, as KumoMTA)."""
        if self._gate is None:
            return True
        while (wait := await self._gate.message_wait(self.path, self.name)) is not None:
            self.set_state(
                "message_rate_throttled", f"max_message_rate reached; next token in {wait:.2f}s"
            )
            if wait > self.path.idle_timeout or self._stopping:
                self._outcomes.delay(msg, wait)
                return False
            await asyncio.sleep(wait)  # only this connection waits; other queues run on
        self.set_state("message_rate_throttled", None)
        return True

    async def _connection(self) -> None:
        conn: SmtpClientConnection | None = None
        ticket: Ticket | None = None
        try:
            while True:
                if conn is None:
                    if not self.queue or self._stopping:
                        return
                    slot = await self._slot()
                    if isinstance(slot, float):
                        self._slot_retry_at = time.monotonic() + min(slot, MAX_SLOT_WAIT)
                        if self._established > 0:
                            return  # the open connections drain the queue
                        await asyncio.sleep(min(slot, MAX_SLOT_WAIT))
                        continue
                    ticket = slot
                    try:
                        conn = await self._open()
                    except NoTargetAvailable as exc:
                        self._backoff_until = time.monotonic() + CONNECT_BACKOFF
                        await self._fail_waiting(exc)
                        return
                    self._established += 1
                msg = await self._next(self.path.idle_timeout)
                if msg is None:
                    return
                if not await self._rate_wait(msg):
                    continue
                keep = ticket is None or self._gate is None or await self._gate.keep(ticket)
                if (
                    not await self._deliver(conn, msg)
                    or not keep
                    or (conn.deliveries >= self.path.max_deliveries_per_connection)
                ):
                    await conn.close()
                    self._established -= 1
                    conn = None
                    if ticket is not None and self._gate is not None:
                        await self._gate.close(ticket)
                        ticket = None
        finally:
            if conn is not None:
                self._established -= 1
                await asyncio.shield(conn.close())
            if ticket is not None and self._gate is not None:  # a ticket comes from the gate
                await asyncio.shield(self._gate.close(ticket))
            self._conns.discard(asyncio.current_task())
            if self.queue and not self._stopping:
                self._maybe_spawn()
            if not self._conns:
                self._idle.set()
                if not self.queue:
                    self._on_idle(self)

    async def _deliver(self, conn: SmtpClientConnection, msg: Message) -> bool:
        """Send one message; returns False when the connection is no longer usable."""
        attempt = Attempt(
            site=self.name,
            egress_source=self.source.name,
            egress_pool=self.pool,
            peer=conn.peer,
            tls_cipher=conn.tls_cipher,
            tls_protocol_version=conn.tls_protocol_version,
            provider_name=self.path.provider_name,
        )
        data = await self._spool.load_data(msg.id)
        if data is None:
            return True  # removed while queued (admin bounce); nothing to send
        try:
            response = await conn.send(msg.sender, msg.recipient, data)
        except ConnectionLost as exc:
            await self._outcomes.transient(msg, exc.response, attempt)
            return False
        except Exception as exc:  # a bug must cost a retry, never the message
            log.exception("delivery failed unexpectedly", extra={"id": msg.id})
            await self._outcomes.transient(
                msg, Response.parse(451, f"4.3.0 internal error: {type(exc).__name__}"), attempt
            )
            return False
        if not response.is_success:
            response = await self._rewrite(msg, response)
        await self._outcomes.from_response(msg, response, attempt)
        return conn.is_usable

    async def _rewrite(self, msg: Message, response: Response) -> Response:
        """``smtp_client_rewrite_delivery_status``: the policy may change a failure's code
        (e.g. treat a provider's 5xx as 4xx); the text says so, as KumoMTA's does."""
        registry = self._policy()
        if not registry.has("smtp_client_rewrite_delivery_status"):
            return response
        q = QueueName.parse(msg.queue)
        try:
            code = await registry.dispatch(
                "smtp_client_rewrite_delivery_status",
                response,
                q.domain,
                q.tenant,
                q.campaign,
                q.routing_domain,
            )
        except (Rejected, PolicyFailure):
            return response
        if code is None or int(code) == response.code:
            return response
        return dataclasses.replace(
            response,
            code=int(code),
            content=f"{response.content} (nimbus: status was rewritten from "
            f"{response.code} -> {int(code)})",
        )

    async def _fail_waiting(self, exc: NoTargetAvailable) -> None:
        """No host reachable: unless another connection is delivering, fail the queue."""
        if self._established > 0:
            return
        attempt = Attempt(site=self.name, egress_source=self.source.name, egress_pool=self.pool)
        while self.queue:
            msg = self.queue.popleft()
            if exc.permanent:
                self._outcomes.bounced(msg, exc.response, attempt)
            else:
                await self._outcomes.transient(msg, exc.response, attempt)

    # -- shutdown ----------------------------------------------------------------

    def stop_new_work(self) -> None:
        """Finish the message in hand on each connection, start nothing new."""
        self._stopping = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)  # "no more work"
        self._waiters.clear()

    async def wait_idle(self) -> None:
        while self._conns:
            await self._idle.wait()
            if self._conns:
                self._idle.clear()

    async def cancel(self) -> None:
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
