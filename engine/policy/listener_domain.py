"""The answer of ``get_listener_domain``: relaying rules for one recipient domain.

Exports:
    ListenerDomain   relay_to, relay_from, log_oob, log_arf (KumoMTA make_listener_domain)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ListenerDomain"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerDomain:
    """What ``get_listener_domain`` returns (KumoMTA make_listener_domain).

    relay_to: accept mail addressed to this domain from any peer (inbound domains).
    relay_from: CIDRs that may relay mail for this domain.
    log_oob / log_arf: "Ignore", "LogThenRelay" or "LogThenDrop" for out-of-band
        bounces and ARF reports sent to this domain (recorded; OOB/ARF parsing is not
        built yet, so these are not acted on).
    """

    relay_to: bool = False
    relay_from: tuple[str, ...] = ()
    log_oob: str = "Ignore"
    log_arf: str = "Ignore"
