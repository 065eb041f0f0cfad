"""Opening a ready queue's session: its targets in order, each address, next host on failure.

Exports:
    Target              a host to try (MX name or configured host) and port
    ReadyRoute          what a ready queue delivers to: name, site, source, pool, path, targets
    NoTargetAvailable   every target failed; the last failure and whether it is permanent
    open_session(...)   the first session any target accepts, through an SmtpConnector

RFC 5321 §5.1: the MX hosts are tried in preference order, and each host's
addresses in turn; a refused connect, banner, EHLO or TLS negotiation moves on to
the next address, then the next host. Each host's addresses are ordered by the path's
``ip_lookup_strategy`` and cut to ``max_mx_addresses_per_host``; at most
``max_mx_plan_size`` addresses are tried in all. Addresses in ``prohibited_hosts``
are skipped unless the targets came from configuration (sink, ``mx_list``) or the
node allows loopback MX answers; addresses in ``skip_hosts`` are skipped always (an
error, ``451 4.4.4``, only when nothing else remains, as KumoMTA).

Outbound TLS policy, per target: with ``enable_dane`` a host whose TLSA RRset and
address records are DNSSEC-validated gets the RRset on its Endpoint (TLS mandatory, RFC
7672 §2.2); an unvalidated RRset, or one for an insecure address, is ignored. A failed
TLSA lookup for a host with secure addresses skips that host (``451 4.7.5``: no
downgrade an attacker could provoke; ``delivery.dane.dane_verdict``). A route carrying
an MTA-STS ``enforce`` policy (its ready queue serves that one recipient domain, so a
broken policy fails only that domain's mail) skips hosts matching none of the policy's
``mx:`` patterns (RFC 8461 §4.1) unless DANE applies to them (DANE takes precedence,
§2); its path requires verified TLS (routing sets it), and TLS failures say it was
MTA-STS. Such refusals are transient (``451 4.7.5``): a policy may be fixed.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from engine.delivery.dane import DaneVerdict, Tlsa, TlsaLookupFailed, dane_verdict, usable
from engine.delivery.errors import DeliveryError, TlsFailed, TlsRequiredError
from engine.delivery.mta_sts import MtaStsPolicy, mx_matches
from engine.delivery.mx import HostResolutionError, order_addresses
from engine.delivery.ports import (
    Endpoint,
    Resolver,
    SmtpConnection,
    SmtpConnector,
    TlsPolicySource,
)
from engine.policy.egress import EgressPathConfig, EgressSource, is_prohibited
from engine.queues.decisions import no_target_is_permanent
from engine.records import Response

__all__ = ["Target", "ReadyRoute", "NoTargetAvailable", "open_session"]

log = logging.getLogger("nimbus.ready")


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadyRoute:
    """name: ``source->site@smtp_client``. site: the MX site (or ``mx_list:...``).
    source / pool: the egress source and the pool it was picked from. path: the
    egress path config. targets: hosts in the order to try. explicit: targets came
    from configuration (sink, mx_list), so loopback addresses are allowed.
    mta_sts: the recipient domain's MTA-STS policy in ``enforce`` mode, or None."""

    name: str
    site: str
    source: EgressSource
    pool: str
    path: EgressPathConfig
    targets: tuple[Target, ...]
    explicit: bool = False
    mta_sts: MtaStsPolicy | None = None


class NoTargetAvailable(Exception):
    """Every target failed; ``response`` says why (the last failure)."""

    def __init__(self, response: Response, permanent: bool = False) -> None:
        super().__init__(str(response))
        self.response = response
        self.permanent = permanent


async def _addresses(resolver: Resolver, host: str) -> list[str]:
    """An IP literal (sink, mx_list) is its own address; names go to DNS."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        return await resolver.resolve_addresses(host)


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


async def _validated_tlsa(
    tls: TlsPolicySource | None, route: ReadyRoute, target: Target
) -> tuple[Tlsa, ...] | None:
    """The target's TLSA RRset when DANE applies to it, else None (RFC 7672 §2.2).

    Raises TlsaLookupFailed when the host must be skipped (its addresses are secure but
    its TLSA lookup failed).
    """
    if tls is None or not route.path.enable_dane or _is_literal(target.host):
        return None
    try:
        answer = await tls.tlsa(target.host, target.port)
    except TlsaLookupFailed:
        verdict = dane_verdict(tlsa=None, address_secure=await tls.address_secure(target.host))
        if verdict is DaneVerdict.SKIP_HOST:
            raise
        return None
    if not answer.records:  # nothing published: the addresses' status does not matter
        return None
    secure = await tls.address_secure(target.host)
    if dane_verdict(tlsa=answer, address_secure=secure) is DaneVerdict.APPLY:
        return answer.records
    if answer.validated and not secure:
        log.warning("dane_address_insecure", extra={"host": target.host})
    return None


def _mta_sts_failure(policy: MtaStsPolicy, exc: DeliveryError) -> Response:
    """A TLS failure under an enforce policy, saying so (RFC 8461 §5: the MX is not used)."""
    text = exc.response.content
    return Response.parse(
        451,
        f"4.7.5 MTA-STS policy of {policy.domain} (enforce): {text}",
        exc.response.command,
    )


async def open_session(
    route: ReadyRoute,
    *,
    connector: SmtpConnector,
    resolver: Resolver,
    allow_loopback_mx: bool,
    tls_policy: TlsPolicySource | None = None,
) -> SmtpConnection:
    """The first session any of ``route.targets`` accepts.

    allow_loopback_mx: DNS answers may be prohibited (loopback) addresses.
    tls_policy: TLSA lookups for ``enable_dane`` (None: DANE is never applied).
    Raises NoTargetAvailable with the last failure; ``permanent`` when no address
    could be tried and no DNS failure may heal (``no_target_is_permanent``).
    """
    last = Response.parse(451, f"4.4.0 no usable hosts for {route.site}")
    tried_address = dns_transient = False
    allow_loopback = route.explicit or allow_loopback_mx
    path, plan, sts = route.path, 0, route.mta_sts
    for target in route.targets:
        try:
            tlsa = await _validated_tlsa(tls_policy, route, target)
        except TlsaLookupFailed as exc:
            last = Response.parse(451, f"4.7.5 DANE: {exc}; {target.host} skipped")
            dns_transient = True  # a lookup may succeed next time
            log.info("dane_host_skipped", extra={"ready_queue": route.name, "host": target.host})
            continue
        if sts is not None and tlsa is not None and not usable(tlsa):
            tlsa = None  # RFC 8461 §2: only usable TLSA outranks MTA-STS's verified TLS
        if sts is not None and tlsa is None and not mx_matches(sts.mx, target.host):
            last = Response.parse(
                451,
                f"4.7.5 MTA-STS policy of {sts.domain} (enforce): {target.host} matches no "
                f"mx pattern ({', '.join(sts.mx)})",
            )
            dns_transient = True  # a policy refusal is never permanent
            log.info(
                "mta_sts_mx_mismatch",
                extra={"ready_queue": route.name, "host": target.host, "domain": sts.domain},
            )
            continue
        try:
            addresses = await _addresses(resolver, target.host)
        except HostResolutionError as exc:
            last = Response.parse(exc.code, f"{exc.enhanced} {exc}")
            dns_transient |= exc.transient
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
            tried_address = True
            if path.skip_hosts and is_prohibited(address, path.skip_hosts):
                last = Response.parse(451, f"4.4.4 {target.host} [{address}] is in skip_hosts")
                continue  # not an error while other hosts remain (KumoMTA)
            if plan >= path.max_mx_plan_size:  # the whole plan was tried
                raise NoTargetAvailable(last, permanent=False)
            plan += 1
            endpoint = Endpoint(host=target.host, address=address, port=target.port, tlsa=tlsa)
            try:
                return await connector.connect(endpoint, route.source, route.path)
            except DeliveryError as exc:  # connect, banner, EHLO, TLS: the next one
                last = exc.response
                if (
                    sts is not None
                    and tlsa is None
                    and isinstance(exc, TlsFailed | TlsRequiredError)
                ):
                    last = _mta_sts_failure(sts, exc)
                log.info(
                    "connect_failed",
                    extra={
                        "ready_queue": route.name,
                        "host": target.host,
                        "address": address,
                        "response": str(exc.response),
                    },
                )
    permanent = no_target_is_permanent(
        tried_address=tried_address, resolution_transient=dns_transient
    )
    raise NoTargetAvailable(last, permanent=permanent)
