"""The answer of ``get_listener_domain``: relaying rules for one recipient domain.

Exports:
    ListenerDomain   relay_to, relay_from, log_oob, log_arf (KumoMTA make_listener_domain)
                     and ``unimplemented_options()``
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
        bounces and ARF reports sent to this domain. OOB/ARF parsing is not built yet:
        anything but "Ignore" is not acted on, and dispatch logs a warning per domain.
    """

    relay_to: bool = False
    relay_from: tuple[str, ...] = ()
    log_oob: str = "Ignore"
    log_arf: str = "Ignore"

    def unimplemented_options(self) -> tuple[str, ...]:
        """The options set to something this node does not do yet (``log_oob=LogThenDrop``)."""
        return tuple(
            f"{name}={value}"
            for name, value in (("log_oob", self.log_oob), ("log_arf", self.log_arf))
            if value != "Ignore"
        )
