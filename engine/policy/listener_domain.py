"""The answer of ``get_listener_domain``: relaying and report rules for one recipient domain.

Exports:
    ListenerDomain   relay_to, relay_from, log_oob, log_arf (KumoMTA make_listener_domain)
    REPORT_MODES     the values log_oob and log_arf take
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ListenerDomain", "REPORT_MODES"]

REPORT_MODES = ("Ignore", "LogThenRelay", "LogThenDrop")


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerDomain:
    """What ``get_listener_domain`` returns (KumoMTA make_listener_domain).

    relay_to: accept mail addressed to this domain from any peer (inbound domains).
    relay_from: CIDRs that may relay mail for this domain.
    log_oob / log_arf: what to do with an out-of-band bounce (RFC 3464 DSN) / an abuse
        report (RFC 5965 ARF) sent to this domain: "Ignore" (ordinary mail), "LogThenRelay"
        (log an ``OOB`` / ``Feedback`` record, then handle it as ordinary mail) or
        "LogThenDrop" (log it, then discard it: accepted, never queued).
        Raises ValueError for any other value, naming the field.
    """

    relay_to: bool = False
    relay_from: tuple[str, ...] = ()
    log_oob: str = "Ignore"
    log_arf: str = "Ignore"

    def __post_init__(self) -> None:
        for name in ("log_oob", "log_arf"):
            value = getattr(self, name)
            if value not in REPORT_MODES:
                raise ValueError(
                    f"ListenerDomain {name}={value!r}: use one of {', '.join(REPORT_MODES)}"
                )

    def report_mode(self, kind: str) -> str:
        """The mode for a report of ``kind`` ("oob" or "arf")."""
        return self.log_oob if kind == "oob" else self.log_arf

    @property
    def reads_reports(self) -> bool:
        return self.log_oob != "Ignore" or self.log_arf != "Ignore"
