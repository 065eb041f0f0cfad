"""The other nodes: where a scale-in transfer may send mail, and which one takes the next.

Exports:
    peer_urls(entries, http_port, resolve=...) -> list[str]   base URLs, resolved
    classify_entry(entry, http_port) -> (url | None, host | None)   pure
    PeerLoads                                                 pick the least-loaded peer

``cluster.peers`` (``NIMBUS_CLUSTER_PEERS``) lists ``http(s)://host:port`` URLs (taken
as they are) or DNS names, optionally ``name:port``: a name is resolved at the moment
of the transfer and every address it has is one peer, on ``http_port`` unless the entry
names a port. The chart passes the StatefulSet's headless Service, whose name resolves
to every MTA pod; the node itself is among them and answers 409, after which the sender
leaves it out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from engine.config.units import parse_url_prefix

__all__ = ["peer_urls", "classify_entry", "PeerLoads"]

Resolve = Callable[[str], Awaitable[list[str]]]


async def _resolve(host: str) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _url(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"http://{host}:{port}"


def classify_entry(entry: str, http_port: int) -> tuple[str | None, tuple[str, int] | None]:
    """(URL, None) for a URL entry; (None, (host, port)) for a name to resolve.
    ValueError for an entry that is neither."""
    entry = entry.strip()
    if "://" in entry:
        return parse_url_prefix(entry), None
    host, port = entry, http_port
    if entry.count(":") == 1:
        host, _, raw = entry.partition(":")
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise ValueError(f"bad port in peer {entry!r}")
        port = int(raw)
    try:
        ipaddress.ip_address(host.strip("[]"))
        return _url(host.strip("[]"), port), None
    except ValueError:
        pass
    if not host or any(c in host for c in "/ @"):
        raise ValueError(f"peer {entry!r} is neither a URL nor a host name")
    return None, (host, port)


async def peer_urls(
    entries: Iterable[str], http_port: int, *, resolve: Resolve = _resolve
) -> list[str]:
    """Every peer's base URL, in order, without repeats; a name that does not resolve
    contributes nothing (the transfer goes to the others, or mail stays spooled)."""
    out: list[str] = []
    for entry in entries:
        if not entry.strip():
            continue
        url, name = classify_entry(entry, http_port)
        found: list[str] = []
        if url is not None:
            found = [url]
        elif name is not None:
            try:
                found = [_url(addr, name[1]) for addr in await resolve(name[0])]
            except OSError:
                found = []
        for u in found:
            if u not in out:
                out.append(u)
    return out


@dataclass
class PeerLoads:
    """Which peer takes the next message: the one with the fewest messages queued (as
    its last answer said) plus those we have in flight to it; unknown loads count 0,
    ties go round-robin. Peers found to be unusable are left out for good."""

    urls: list[str]
    queued: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)
    resting: dict[str, float] = field(default_factory=dict)  # url -> monotonic time
    _turn: int = 0

    def pick(self, now: float) -> str | None:
        """The peer for the next message, or None when none is usable now."""
        live = [u for u in self.urls if u not in self.dropped and self.resting.get(u, 0.0) <= now]
        if not live:
            return None
        self._turn += 1
        n = len(live)
        order = [live[(self._turn + i) % n] for i in range(n)]
        return min(order, key=lambda u: self.queued.get(u, 0) + self.in_flight.get(u, 0))

    def usable(self) -> bool:
        """Is any peer not dropped (perhaps resting)?"""
        return any(u not in self.dropped for u in self.urls)

    def next_wake(self) -> float | None:
        """When the earliest resting peer may be tried again."""
        times = [t for u, t in self.resting.items() if u not in self.dropped]
        return min(times) if times else None
