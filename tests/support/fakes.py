"""In-memory fakes of delivery's seams (``engine.delivery.ports``) and the ready queue's parts.

Exports:
    HostScript      how one fake host behaves: connect refusal, TLS failure, replies
    FakeConnector   an SmtpConnector with scripted replies per host; records every command
    FakeResolver    a Resolver answering from dicts (MX, addresses, failures); records lookups
    FakeTlsPolicy   a TlsPolicySource answering from dicts (MTA-STS policies, TLSA answers)
    FakeSpool       message bodies by id (``load_data``)
    FakeOutcomes    records each disposition the ready queue applies; waits for a count

Like httpx's ``MockTransport`` and KumoMTA's ``TestResolver``: no sockets, no
processes. The fake connection keeps the real client's contract
(``engine.delivery.commands``): a MAIL or RCPT refusal is followed by RSET and
returned; a 421 marks the session unusable and raises ConnectionLost; a refused
RSET makes the session unusable; a session the peer closed before answering raises
ConnectionLost with a DISCONNECTED SessionLoss saying whether it was reused.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from engine.delivery.dane import TlsaAnswer, TlsaLookupFailed
from engine.delivery.errors import (
    ConnectFailed,
    ConnectionLost,
    LossCause,
    SessionLoss,
    TlsFailed,
)
from engine.delivery.mta_sts import MtaStsPolicy
from engine.delivery.mx import HostResolutionError, MailExchanger, MxError
from engine.delivery.ports import Endpoint
from engine.policy.egress import EgressPathConfig, EgressSource
from engine.queues.outcomes import Attempt
from engine.records import Message, PeerAddress, Response

__all__ = [
    "HostScript",
    "FakeConnector",
    "FakeResolver",
    "FakeTlsPolicy",
    "FakeSpool",
    "FakeOutcomes",
]

OK = Response.parse(250, "2.0.0 OK", "DATA")


@dataclass
class HostScript:
    """refuse_connect / tls_failure: connect raises ConnectFailed / TlsFailed with this.
    replies: one final reply per transaction, in order (then ``default``); the reply's
    ``command`` (``MAIL FROM``, ``RCPT TO``, ``DATA``) says which command answered.
    rset_code: the reply to RSET after a refusal. hold: when set, each ``send`` waits for
    it (tests observe a delivery in progress); ``sending`` is set when one starts.
    drop_at: transaction numbers (1-based, counted over all of this host's sessions in
    ``sends``) at which the peer closes the session before answering MAIL FROM."""

    refuse_connect: Response | None = None
    tls_failure: Response | None = None
    replies: list[Response] = field(default_factory=list)
    default: Response = OK
    rset_code: int = 250
    hold: asyncio.Event | None = None
    sending: asyncio.Event = field(default_factory=asyncio.Event)
    drop_at: set[int] = field(default_factory=set)
    sends: int = 0


class FakeConnection:
    """One scripted session; ``commands`` is what it was sent, in order."""

    def __init__(self, connector: FakeConnector, endpoint: Endpoint, script: HostScript) -> None:
        self._connector = connector
        self._script = script
        self.endpoint = endpoint
        self.peer = PeerAddress(name=endpoint.host, addr=f"{endpoint.address}:{endpoint.port}")
        self.deliveries = 0
        self.tls_cipher: str | None = None
        self.tls_protocol_version: str | None = None
        self.commands: list[str] = []
        self.closed = False
        self._broken = False

    @property
    def is_usable(self) -> bool:
        return not self._broken and not self.closed

    async def send(self, sender: str, recipient: str, data: bytes) -> Response:
        if not self.is_usable:
            raise ConnectionLost(Response.parse(421, "4.4.2 connection closed"))
        reused = self.deliveries > 0
        self.deliveries += 1
        self._script.sends += 1
        if self._script.sends in self._script.drop_at:
            self._broken = True
            self.commands.append(f"MAIL FROM:<{sender}>")
            raise ConnectionLost(
                Response.parse(421, "4.4.2 connection lost during MAIL FROM", "MAIL FROM"),
                SessionLoss(phase="MAIL FROM", cause=LossCause.DISCONNECTED, reused=reused),
            )
        self._script.sending.set()
        if self._script.hold is not None:
            await self._script.hold.wait()
        reply = self._script.replies.pop(0) if self._script.replies else self._script.default
        phases = [f"MAIL FROM:<{sender}>", f"RCPT TO:<{recipient}>", "DATA"]
        answered = (reply.command or "DATA").split(":")[0]
        upto = {"MAIL FROM": 1, "RCPT TO": 2}.get(answered, 3)
        self.commands.extend(phases[:upto])
        if reply.code == 421:  # RFC 5321 3.8, as the real client: the session is gone
            self._broken = True
            raise ConnectionLost(reply)
        if upto < 3:
            self.commands.append("RSET")
            if self._script.rset_code != 250:
                self._broken = True
        return reply

    async def close(self) -> None:
        if self.is_usable:
            self.commands.append("QUIT")
        if not self.closed:
            self.closed = True
            self._connector.open_now -= 1


class FakeConnector:
    """scripts: host name -> HostScript (hosts not listed accept and reply 250).

    connects: (host, address, port) per attempt, failed ones too; endpoints: the same
    Endpoints (with their TLSA records). connections: the sessions opened, in order. open_now / max_open: sessions open now and at most.
    """

    def __init__(self, scripts: dict[str, HostScript] | None = None) -> None:
        self.scripts = scripts or {}
        self.connects: list[tuple[str, str, int]] = []
        self.endpoints: list[Endpoint] = []
        self.connections: list[FakeConnection] = []
        self.open_now = 0
        self.max_open = 0
        self._opened = asyncio.Event()

    def script(self, host: str) -> HostScript:
        return self.scripts.setdefault(host, HostScript())

    async def connect(
        self, endpoint: Endpoint, source: EgressSource, path: EgressPathConfig
    ) -> FakeConnection:
        self.connects.append((endpoint.host, endpoint.address, endpoint.port))
        self.endpoints.append(endpoint)
        script = self.script(endpoint.host)
        if script.refuse_connect is not None:
            raise ConnectFailed(script.refuse_connect)
        if script.tls_failure is not None:
            raise TlsFailed(script.tls_failure)
        conn = FakeConnection(self, endpoint, script)
        self.connections.append(conn)
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        self._opened.set()
        return conn

    async def wait_open(self, count: int, timeout: float = 5.0) -> None:
        """Until ``count`` sessions are open at once."""
        async with asyncio.timeout(timeout):
            while self.open_now < count:
                self._opened.clear()
                await self._opened.wait()


class FakeResolver:
    """mx: domain -> MailExchanger or MxError. addresses: host -> list or
    HostResolutionError (a host not listed has no address: a permanent failure).
    lookups: ("mx" | "addr", name) per call."""

    def __init__(
        self,
        *,
        mx: dict[str, MailExchanger | MxError] | None = None,
        addresses: dict[str, list[str] | HostResolutionError] | None = None,
    ) -> None:
        self.mx = mx or {}
        self.addresses = addresses or {}
        self.lookups: list[tuple[str, str]] = []

    async def resolve_mx(self, domain: str) -> MailExchanger:
        self.lookups.append(("mx", domain))
        answer = self.mx.get(domain)
        if answer is None:
            raise MxError(550, "5.1.2", f"no MX scripted for {domain}")
        if isinstance(answer, MxError):
            raise answer
        return answer

    async def resolve_addresses(self, host: str) -> list[str]:
        self.lookups.append(("addr", host))
        answer = self.addresses.get(host)
        if answer is None:
            raise HostResolutionError(host, transient=False, message=f"{host} has no address")
        if isinstance(answer, HostResolutionError):
            raise answer
        return list(answer)


class FakeTlsPolicy:
    """policies: domain -> MtaStsPolicy (absent: none). tlsa: host -> TlsaAnswer (absent:
    no records), or TlsaLookupFailed to raise. insecure: hosts whose address records are
    not DNSSEC-validated (every other host's are). lookups: ("mta_sts" | "tlsa" | "addr",
    name) per call."""

    def __init__(
        self,
        *,
        policies: dict[str, MtaStsPolicy] | None = None,
        tlsa: dict[str, TlsaAnswer | TlsaLookupFailed] | None = None,
        insecure: set[str] | None = None,
    ) -> None:
        self.policies = policies or {}
        self.tlsa_answers = tlsa or {}
        self.insecure = insecure or set()
        self.lookups: list[tuple[str, str]] = []

    async def mta_sts(self, domain: str) -> MtaStsPolicy | None:
        self.lookups.append(("mta_sts", domain))
        return self.policies.get(domain)

    async def tlsa(self, host: str, port: int = 25) -> TlsaAnswer:
        self.lookups.append(("tlsa", host))
        answer = self.tlsa_answers.get(host, TlsaAnswer())
        if isinstance(answer, TlsaLookupFailed):
            raise answer
        return answer

    async def address_secure(self, host: str) -> bool:
        self.lookups.append(("addr", host))
        return host not in self.insecure


class FakeSpool:
    """bodies: id -> message data; a missing id reads as removed (None)."""

    def __init__(self, bodies: dict[str, bytes] | None = None) -> None:
        self.bodies = bodies or {}

    async def load_data(self, id: str) -> bytes | None:
        return self.bodies.get(id)


@dataclass(frozen=True, slots=True, kw_only=True)
class Disposition:
    kind: str  # delivered / transient / bounced / delayed
    id: str
    response: Response | None
    attempt: Attempt | None
    delay: float | None = None


class FakeOutcomes:
    """Records dispositions in ``records``; ``wait_for(n)`` until n have been applied."""

    def __init__(self) -> None:
        self.records: list[Disposition] = []
        self._changed = asyncio.Event()

    def _add(self, record: Disposition) -> None:
        self.records.append(record)
        self._changed.set()

    def kinds(self) -> list[tuple[str, str]]:
        return [(r.kind, r.id) for r in self.records]

    def delivered(self, msg: Message, response: Response, attempt: Attempt) -> None:
        self._add(Disposition(kind="delivered", id=msg.id, response=response, attempt=attempt))

    def bounced(self, msg: Message, response: Response, attempt: Attempt) -> None:
        self._add(Disposition(kind="bounced", id=msg.id, response=response, attempt=attempt))

    async def transient(self, msg: Message, response: Response, attempt: Attempt) -> None:
        self._add(Disposition(kind="transient", id=msg.id, response=response, attempt=attempt))

    def delay(self, msg: Message, seconds: float) -> None:
        self._add(
            Disposition(kind="delayed", id=msg.id, response=None, attempt=None, delay=seconds)
        )

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.records) < count:
                self._changed.clear()
                await self._changed.wait()
