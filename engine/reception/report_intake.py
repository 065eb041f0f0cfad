"""Reports received over SMTP for a listener domain that reads them (``log_oob`` /
``log_arf`` of ``get_listener_domain``): log them, then relay or drop each copy.

Exports:
    Intake         what DATA does next: the recipients still to accept, and the id of the
                   report when some copies were dropped (named in ``250 OK ids=``)
    take_reports(data, rcpts, listeners, *, acceptor, sender, peer) -> Intake

One report is logged once however many of its recipients read it: ``OOB`` records (one
per DSN recipient block) or a ``Feedback`` record, in KumoMTA's shape
(``reception.reports``). A recipient whose domain says ``LogThenDrop`` is then accepted
without being queued; ``LogThenRelay`` and ``Ignore`` copies go on as ordinary mail. A
message that is no report at all is ordinary mail for everyone; a report that cannot be
read is one ``report_malformed`` warning (never an error to the client) and is then
handled by the same modes, so a broken report to a bounce address is still dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine.policy.listener_domain import ListenerDomain
from engine.reception.accept import Acceptor
from engine.reception.reports import MalformedReport, parse_report, report_records
from engine.records import PeerAddress, new_message_id

__all__ = ["Intake", "take_reports"]

log = logging.getLogger("nimbus.reports")


@dataclass(frozen=True, slots=True)
class Intake:
    recipients: tuple[str, ...]  # still to accept as ordinary mail
    report_id: str | None = None  # set when copies were dropped after logging


def take_reports(
    data: bytes,
    rcpts: Sequence[str],
    listeners: Mapping[str, ListenerDomain],
    *,
    acceptor: Acceptor,
    sender: str,
    peer: PeerAddress | None,
) -> Intake:
    """Log ``data`` if it is a report some recipient's listener domain reads; which
    recipients remain. ``listeners``: recipient -> its listener domain (those that read
    reports only)."""
    everyone = Intake(tuple(rcpts))
    if not listeners:
        return everyone
    report = parse_report(data)
    if report is None:
        return everyone
    if isinstance(report, MalformedReport) and not report.kind:  # e.g. a read receipt
        log.warning("report_malformed", extra={"reason": report.reason, "peer": _addr(peer)})
        return everyone
    modes = {
        r: listeners[r].report_mode(report.kind) if r in listeners else "Ignore" for r in rcpts
    }
    if all(mode == "Ignore" for mode in modes.values()):
        return everyone
    id = new_message_id()
    if isinstance(report, MalformedReport):
        log.warning(
            "report_malformed",
            extra={"kind": report.kind, "reason": report.reason, "peer": _addr(peer), "id": id},
        )
    else:
        acceptor.log_records(
            report_records(
                report,
                id=id,
                sender=sender,
                size=len(data),
                peer=peer,
                now=time.time(),
                node_id=acceptor.node_id,
                classify=acceptor.classify,
            )
        )
    keep = tuple(r for r in rcpts if modes[r] != "LogThenDrop")
    return Intake(keep, id if len(keep) < len(rcpts) else None)


def _addr(peer: PeerAddress | None) -> str:
    return peer.addr if peer is not None else ""
