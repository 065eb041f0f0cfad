"""FakeDns: an in-process authoritative DNS server on 127.0.0.1 for tests.

Exports:
    FakeDns    records from ``add()`` (MX, A, TXT, TLSA, ...), ``remove()``; UDP and TCP
               on one free port; injectable SERVFAIL and silence; the AD bit for names
               marked ``secure()``; a query counter per (name, type)

    async with FakeDns(ttl=60) as server:
        server.add("example.test", "MX", "10 mx1.example.test.")
        server.add("mx1.example.test", "A", "127.0.0.2")
        settings = DnsSettings(nameservers=[server.nameserver])

Unknown names get NXDOMAIN, known names asked for another type get NODATA; both
carry an SOA in the authority section so resolvers have a negative TTL (RFC 2308).
A name is known when it, or a name below it, has records (RFC 8020: empty
non-terminals exist). UDP answers longer than ``udp_limit`` are truncated with
TC set, so the client retries over TCP (2-byte length prefix, RFC 1035 4.2.2).

``secure(name)`` makes the server answer for that name like a validating resolver
answering for a signed zone: AD set (RFC 4035 §3.2.3) when the query asked for it
with AD or DO (RFC 6840 §5.7). No signatures are served; clients trust the AD bit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

__all__ = ["FakeDns"]

_TXT_CHUNK = 255  # RFC 1035 3.3: a character-string holds at most 255 octets


def _key(name: str | dns.name.Name) -> dns.name.Name:
    return name if isinstance(name, dns.name.Name) else dns.name.from_text(name)


class FakeDns:
    """A fake authoritative server; every name it serves lives in one flat table.

    ttl: TTL of every answer unless ``add()`` gives one.
    negative_ttl: TTL and minimum of the SOA sent with NXDOMAIN and NODATA
        (default: ``ttl``).
    udp_limit: largest UDP answer in bytes before truncation (EDNS sizes ignored).
    """

    def __init__(
        self,
        *,
        ttl: int = 300,
        negative_ttl: int | None = None,
        udp_limit: int = 512,
        host: str = "127.0.0.1",
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = ttl if negative_ttl is None else negative_ttl
        self.udp_limit = udp_limit
        self.host = host
        self.port = 0
        self.records: dict[tuple[dns.name.Name, int], list[dns.rdata.Rdata]] = {}
        self.ttls: dict[tuple[dns.name.Name, int], int] = {}
        self.names: set[dns.name.Name] = set()
        self.servfail_names: set[dns.name.Name] = set()
        self.drop_names: set[dns.name.Name] = set()
        self.secure_names: set[dns.name.Name] = set()
        self.queries: Counter[tuple[str, str]] = Counter()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def nameserver(self) -> str:
        """``host:port`` for ``DnsSettings.nameservers``."""
        return f"{self.host}:{self.port}"

    def add(self, name: str, rdtype: str, value: str, *, ttl: int | None = None) -> None:
        """Serve one more record.

        name: owner name, absolute with or without the trailing dot.
        rdtype: ``"MX"``, ``"A"``, ``"AAAA"``, ``"TXT"``, ... .
        value: the record in zone-file text (``"10 mx1.example.test."``); names in
            it are taken as absolute. For TXT it is the raw, unquoted text, split
            into 255-octet strings (a long DKIM key just works).
        ttl: this RRset's TTL (default: the server's ``ttl``).
        """
        owner = _key(name)
        kind = dns.rdatatype.from_text(rdtype)
        if kind == dns.rdatatype.TXT:
            raw = value.encode()
            chunks = [raw[i : i + _TXT_CHUNK] for i in range(0, len(raw), _TXT_CHUNK)] or [b""]
            rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, kind, chunks)
        else:
            rdata = dns.rdata.from_text(
                dns.rdataclass.IN, kind, value, origin=dns.name.root, relativize=False
            )
        self.records.setdefault((owner, kind), []).append(rdata)
        if ttl is not None:
            self.ttls[(owner, kind)] = ttl
        while owner != dns.name.root:
            self.names.add(owner)
            owner = owner.parent()

    def remove(self, name: str, rdtype: str) -> None:
        """Stop serving ``name``'s records of ``rdtype`` (then NODATA)."""
        self.records.pop((_key(name), dns.rdatatype.from_text(rdtype)), None)

    def secure(self, name: str) -> None:
        """Answer queries for ``name`` as DNSSEC-validated: AD set when asked for."""
        self.secure_names.add(_key(name))

    def servfail(self, name: str) -> None:
        """Answer every query for ``name`` with SERVFAIL."""
        self.servfail_names.add(_key(name))

    def drop(self, name: str) -> None:
        """Never answer queries for ``name``: the client times out."""
        self.drop_names.add(_key(name))

    def count(self, name: str, rdtype: str) -> int:
        """How many queries for (name, type) arrived, over UDP and TCP, dropped ones too."""
        return self.queries[(str(_key(name)).lower(), rdtype.upper())]

    def answer(self, wire: bytes) -> dns.message.Message | None:
        """The response to one query, or None to stay silent (dropped or unparseable)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        name, kind = question.name, question.rdtype
        self.queries[(str(name).lower(), dns.rdatatype.to_text(kind))] += 1
        if name in self.drop_names:
            return None
        asked = query.flags & dns.flags.AD or query.ednsflags & dns.flags.DO
        if name in self.secure_names and asked:
            response.flags |= dns.flags.AD
        if name in self.servfail_names:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif (name, kind) in self.records:
            ttl = self.ttls.get((name, kind), self.ttl)
            response.answer.append(dns.rrset.from_rdata_list(name, ttl, self.records[(name, kind)]))
        else:
            if name not in self.names:
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa())
        return response

    def _soa(self) -> dns.rrset.RRset:
        n = self.negative_ttl
        return dns.rrset.from_text(
            dns.name.root,
            n,
            "IN",
            "SOA",
            f"ns.fake.test. hostmaster.fake.test. 1 3600 600 86400 {n}",
        )

    async def start(self) -> None:
        """Bind UDP and TCP on one free port of ``host``; sets ``port``."""
        loop = asyncio.get_running_loop()
        for _ in range(20):
            udp, _proto = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, 0)
            )
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError:  # the TCP side of that port is taken: try another
                udp.close()
                continue
            self._udp, self.port = udp, port
            return
        raise OSError(f"no port free for both UDP and TCP on {self.host}")

    async def stop(self) -> None:
        """Close the listeners and every open TCP connection."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._connections):
                writer.close()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._tcp.wait_closed()
            self._tcp = None
        await asyncio.sleep(0)  # let the transports finish closing their sockets

    async def __aenter__(self) -> FakeDns:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._connections.add(writer)
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                response = self.answer(await reader.readexactly(size))
                if response is not None:
                    writer.write(response.to_wire(max_size=65535, prepend_length=True))
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.discard(task)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: FakeDns) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        response = self._server.answer(data)
        if response is not None and self._transport is not None:
            wire = response.to_wire(max_size=self._server.udp_limit, prefer_truncation=True)
            self._transport.sendto(wire, addr)
