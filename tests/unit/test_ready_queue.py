"""ReadyQueue with the in-memory fakes: host fallback, reuse, idle close, limits, drain."""

from __future__ import annotations

import asyncio
import dataclasses

from engine.delivery.mx import HostResolutionError
from engine.policy.egress import EgressPathConfig, EgressSource
from engine.queues.connect import ReadyRoute, Target
from engine.queues.ready import DeliveryParts, ReadyQueue
from engine.records import Message, Response
from tests.support.fakes import FakeConnector, FakeOutcomes, FakeResolver, FakeSpool, HostScript

PATH = EgressPathConfig(idle_timeout=0.05)
ADDRESSES = {"mx1.example": ["192.0.2.1"], "mx2.example": ["192.0.2.2"]}


class Harness:
    """One ReadyQueue wired to fakes; ``idle`` is set when the queue reports idle."""

    def __init__(
        self,
        *,
        path: EgressPathConfig = PATH,
        hosts: tuple[str, ...] = ("mx1.example", "mx2.example"),
        scripts: dict[str, HostScript] | None = None,
        addresses: dict[str, list[str] | HostResolutionError] | None = None,
        gate: object = None,
    ) -> None:
        self.connector = FakeConnector(scripts)
        self.resolver = FakeResolver(addresses=ADDRESSES if addresses is None else addresses)
        self.spool = FakeSpool()
        self.outcomes = FakeOutcomes()
        self.idle = asyncio.Event()
        route = ReadyRoute(
            name="default->example.com@smtp_client",
            site="example.com",
            source=EgressSource(name="default"),
            pool="default",
            path=path,
            targets=tuple(Target(host=h, port=25) for h in hosts),
        )
        parts = DeliveryParts(
            connector=self.connector,
            resolver=self.resolver,
            spool=self.spool,
            outcomes=self.outcomes,  # type: ignore[arg-type]
            gate=gate,
        )
        self.ready = ReadyQueue(route, parts, on_idle=lambda _: self.idle.set())

    def add(self, count: int) -> list[Message]:
        msgs = []
        for i in range(count):
            msg = Message(
                id=f"{len(self.spool.bodies):032x}",
                sender="a@sender.example",
                recipient=f"r{i}@example.com",
                queue="example.com",
                created=0.0,
                due=0.0,
            )
            self.spool.bodies[msg.id] = b"Subject: t\r\n\r\nbody\r\n"
            assert self.ready.enqueue(msg)
            msgs.append(msg)
        return msgs

    async def until_idle(self) -> None:
        async with asyncio.timeout(5):
            await self.idle.wait()


async def test_delivers_on_the_first_host() -> None:
    """A message goes to the first MX over one session: MAIL, RCPT, DATA, then QUIT."""
    h = Harness()
    [msg] = h.add(1)
    await h.until_idle()
    assert h.outcomes.kinds() == [("delivered", msg.id)]
    assert h.connector.connects == [("mx1.example", "192.0.2.1", 25)]
    conn = h.connector.connections[0]
    assert conn.commands == [
        "MAIL FROM:<a@sender.example>",
        "RCPT TO:<r0@example.com>",
        "DATA",
        "QUIT",
    ]
    assert h.outcomes.records[0].attempt.peer.addr == "192.0.2.1:25"
    assert h.ready.is_idle


async def test_next_host_on_connect_failure() -> None:
    """A refused connect moves on to the next MX (RFC 5321 5.1); the message is delivered."""
    h = Harness(scripts={"mx1.example": HostScript(refuse_connect=Response.parse(421, "4.4.1 no"))})
    [msg] = h.add(1)
    await h.until_idle()
    assert [c[0] for c in h.connector.connects] == ["mx1.example", "mx2.example"]
    assert h.outcomes.kinds() == [("delivered", msg.id)]
    assert h.outcomes.records[0].attempt.peer.name == "mx2.example"


async def test_next_host_on_tls_failure() -> None:
    """A failed TLS negotiation also moves on to the next host."""
    failure = Response.parse(451, "4.7.5 TLS handshake failed", "STARTTLS")
    h = Harness(scripts={"mx1.example": HostScript(tls_failure=failure)})
    [msg] = h.add(1)
    await h.until_idle()
    assert [c[0] for c in h.connector.connects] == ["mx1.example", "mx2.example"]
    assert h.outcomes.kinds() == [("delivered", msg.id)]


async def test_no_reachable_host_fails_waiting_messages_transiently() -> None:
    """Every host refusing gives each waiting message a TransientFailure with the last reply."""
    refuse = HostScript(refuse_connect=Response.parse(421, "4.4.1 refused"))
    h = Harness(scripts={"mx1.example": refuse, "mx2.example": refuse})
    msgs = h.add(2)
    await h.until_idle()
    assert sorted(h.outcomes.kinds()) == sorted(("transient", m.id) for m in msgs)
    assert {r.response.code for r in h.outcomes.records} == {421}


async def test_hosts_without_addresses_bounce() -> None:
    """No MX host has an address (and no failure may heal): the messages bounce."""
    h = Harness(addresses={})
    [msg] = h.add(1)
    await h.until_idle()
    assert h.outcomes.kinds() == [("bounced", msg.id)]
    assert h.connector.connects == []


async def test_prohibited_address_is_skipped() -> None:
    """An MX resolving to loopback is never connected to (the next host is)."""
    h = Harness(addresses={"mx1.example": ["127.0.0.1"], "mx2.example": ["192.0.2.2"]})
    [msg] = h.add(1)
    await h.until_idle()
    assert h.connector.connects == [("mx2.example", "192.0.2.2", 25)]
    assert h.outcomes.kinds() == [("delivered", msg.id)]


async def test_reuse_up_to_max_deliveries_per_connection() -> None:
    """Five messages over sessions of at most two transactions: three sessions, 2+2+1."""
    path = dataclasses.replace(PATH, connection_limit=1, max_deliveries_per_connection=2)
    h = Harness(path=path)
    h.add(5)
    await h.until_idle()
    assert [k for k, _ in h.outcomes.kinds()] == ["delivered"] * 5
    assert [c.deliveries for c in h.connector.connections] == [2, 2, 1]
    assert all(c.commands[-1] == "QUIT" for c in h.connector.connections)


async def test_refusals_keep_the_connection() -> None:
    """A 550 to RCPT (then RSET) and a 554 after DATA end only that transaction."""
    script = HostScript(
        replies=[
            Response.parse(550, "5.1.1 no such user", "RCPT TO"),
            Response.parse(554, "5.7.1 no", "DATA"),
        ]
    )
    path = dataclasses.replace(PATH, connection_limit=1)
    h = Harness(path=path, scripts={"mx1.example": script})
    msgs = h.add(3)
    await h.until_idle()
    assert h.outcomes.kinds() == [
        ("bounced", msgs[0].id),
        ("bounced", msgs[1].id),
        ("delivered", msgs[2].id),
    ]
    [conn] = h.connector.connections
    assert conn.commands.count("RSET") == 1
    assert conn.deliveries == 3


async def test_idle_connection_closes_after_idle_timeout() -> None:
    """With nothing more to send, the session QUITs after idle_timeout and the queue is idle."""
    h = Harness(path=dataclasses.replace(PATH, idle_timeout=0.3))
    h.add(1)
    await h.outcomes.wait_for(1)
    conn = h.connector.connections[0]
    assert not conn.closed  # still open, waiting for work
    await h.until_idle()
    assert conn.closed and conn.commands[-1] == "QUIT"
    assert h.ready.connections == 0


async def test_message_arriving_while_idle_reuses_the_connection() -> None:
    """A message enqueued while a session idles is handed to it: no new connection."""
    h = Harness(path=dataclasses.replace(PATH, idle_timeout=5.0))
    h.add(1)
    await h.outcomes.wait_for(1)
    h.add(1)
    await h.outcomes.wait_for(2)
    assert len(h.connector.connections) == 1
    assert h.connector.connections[0].deliveries == 2
    h.ready.stop_new_work()
    await h.until_idle()


async def test_421_retires_the_connection() -> None:
    """A 421 (RFC 5321 3.8) fails that message transiently and the next gets a new session."""
    script = HostScript(replies=[Response.parse(421, "4.3.2 closing", "MAIL FROM")])
    path = dataclasses.replace(PATH, connection_limit=1)
    h = Harness(path=path, scripts={"mx1.example": script})
    msgs = h.add(2)
    await h.until_idle()
    assert h.outcomes.kinds() == [("transient", msgs[0].id), ("delivered", msgs[1].id)]
    first, second = h.connector.connections
    assert "QUIT" not in first.commands  # the peer closed it; nothing more is sent
    assert second.deliveries == 1


async def test_connection_limit_respected() -> None:
    """Ten messages with connection_limit 3: never more than three sessions at once."""
    hold = asyncio.Event()
    path = dataclasses.replace(PATH, connection_limit=3)
    h = Harness(path=path, scripts={"mx1.example": HostScript(hold=hold)})
    h.add(10)
    await h.connector.wait_open(3)
    assert h.ready.connections == 3
    hold.set()
    await h.until_idle()
    assert h.connector.max_open == 3
    assert [k for k, _ in h.outcomes.kinds()] == ["delivered"] * 10


async def test_drain_finishes_the_message_in_hand_and_leaves_the_rest() -> None:
    """stop_new_work: the delivery in progress completes, waiting messages stay spooled."""
    hold = asyncio.Event()
    script = HostScript(hold=hold)
    path = dataclasses.replace(PATH, connection_limit=1, idle_timeout=5.0)
    h = Harness(path=path, scripts={"mx1.example": script})
    msgs = h.add(3)
    async with asyncio.timeout(5):
        await script.sending.wait()
    h.ready.stop_new_work()
    hold.set()
    async with asyncio.timeout(5):
        await h.ready.wait_idle()
    assert h.outcomes.kinds() == [("delivered", msgs[0].id)]
    assert list(h.ready.queue) == msgs[1:]
    assert h.connector.connections[0].closed
    assert h.ready.enqueue(msgs[0]) and h.ready.connections == 0  # nothing new starts


async def test_stale_pooled_session_is_retried_at_once_on_a_fresh_one() -> None:
    """The peer closed the pooled session before answering the second message's MAIL:
    no attempt is recorded, and the message goes out at once on a new session."""
    h = Harness(path=dataclasses.replace(PATH, connection_limit=1))
    h.connector.script("mx1.example").drop_at = {2}
    first, second = h.add(2)
    await h.until_idle()
    assert h.outcomes.kinds() == [("delivered", first.id), ("delivered", second.id)]
    stale, fresh = h.connector.connections
    assert stale.commands[-1] == "MAIL FROM:<a@sender.example>" and stale.closed
    assert fresh.deliveries == 1 and h.outcomes.records[1].attempt.peer == fresh.peer


async def test_fresh_session_dropping_too_is_one_transient_failure() -> None:
    """Bounded: the immediate retry on a fresh session fails the same way, and that is an
    ordinary TransientFailure; no third session is opened for it."""
    h = Harness(path=dataclasses.replace(PATH, connection_limit=1))
    h.connector.script("mx1.example").drop_at = {2, 3}
    first, second = h.add(2)
    await h.until_idle()
    assert h.outcomes.kinds() == [("delivered", first.id), ("transient", second.id)]
    assert len(h.connector.connections) == 2


async def test_first_transaction_dropped_is_a_transient_failure() -> None:
    """A fresh session the peer closes is a delivery attempt (TransientFailure)."""
    h = Harness()
    h.connector.script("mx1.example").drop_at = {1}
    [msg] = h.add(1)
    await h.until_idle()
    assert h.outcomes.kinds() == [("transient", msg.id)]
    assert len(h.connector.connections) == 1


async def test_an_idle_connection_gives_its_lease_back_when_the_set_is_full(monkeypatch) -> None:
    """Two ready queues of the same name (two workers of a node) share connection_limit 1
    through one gate: the first queue's idle connection, holding the only lease, closes
    within the lease check instead of the 30 s idle timeout, and the second delivers."""
    import engine.queues.ready as ready_module
    from engine.shaping.gate import Gate
    from engine.shaping.throttle.embedded import EmbeddedStore

    monkeypatch.setattr(ready_module, "IDLE_LEASE_CHECK", 0.1)
    gate = Gate(EmbeddedStore(), "t")
    path = dataclasses.replace(PATH, connection_limit=1, idle_timeout=30.0)
    first, second = Harness(path=path, gate=gate), Harness(path=path, gate=gate)
    first.add(1)
    async with asyncio.timeout(5):
        while not first.outcomes.kinds():
            await asyncio.sleep(0.01)  # an in-process condition, polled with a deadline
    [msg] = second.add(1)
    async with asyncio.timeout(5):  # far below the 30 s idle timeout
        await second.until_idle()
    assert second.outcomes.kinds() == [("delivered", msg.id)]
    assert first.connector.connections[0].closed


async def test_an_idle_connection_keeps_its_lease_while_the_set_has_room(monkeypatch) -> None:
    """With room left in the lease set the idle connection stays for reuse."""
    import engine.queues.ready as ready_module
    from engine.shaping.gate import Gate
    from engine.shaping.throttle.embedded import EmbeddedStore

    monkeypatch.setattr(ready_module, "IDLE_LEASE_CHECK", 0.05)
    gate = Gate(EmbeddedStore(), "t")
    h = Harness(path=dataclasses.replace(PATH, connection_limit=2, idle_timeout=30.0), gate=gate)
    h.add(1)
    async with asyncio.timeout(5):
        while not h.outcomes.kinds():
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # several lease checks pass: the connection must still be there
    h.add(1)
    async with asyncio.timeout(5):
        while len(h.outcomes.kinds()) < 2:
            await asyncio.sleep(0.01)
    assert len(h.connector.connections) == 1 and not h.connector.connections[0].closed
    h.ready.stop_new_work()
