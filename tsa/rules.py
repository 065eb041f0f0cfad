"""TSA decisions: which automation rules a log record triggers, and the entries they make.

Exports:
    RecordView, parse_record(obj) -> RecordView     the fields of a log record TSA uses
    RecordInvalid                                   a record we cannot read (ValueError)
    Window                                          a Threshold rule's counting window
    Match                                           one rule matching one record
    evaluate(shaping, record, *, now) -> [Match]    rules and their planned overlay entries
    window_count(scores, *, ts, period) -> int      what a Threshold window counts
    action_id(fingerprint, action, scope) -> str    the stable id of one planned entry
    reason_for(rule) -> str                         ``automation rule: <regexes>``
    IGNORED_TYPES

Pure: values in (including ``now``), values out; the Redis side is ``tsa.state``.

Matching (shared/reference/kumomta-shaping-tsa.md §2; KumoMTA tsa-daemon
``publish_log_v1_impl``): for each recipient domain, ``match_rules`` with
    domain        the recipient's domain (lowercased)
    site_name     the record's ``site`` without ``<source>->`` and ``@smtp_client``
    mx_hosts      ``[peer_address.name]`` when the record has one (the MX that answered),
                  so provider rules can match; KumoMTA resolves the MX itself
    site_of       ``{domain: site_name}``: a rollup ``["domain"]`` block applies to records
                  for that domain (other domains sharing its site are not recognised: that
                  needs DNS, which the TSA does not do)
    response_line ``"<code> <c.s.d> <content>"`` on one line
``match_internal=false`` rules skip our own ``Nimbus internal:`` / ``KumoMTA internal:``
responses, so a suspension cannot re-trigger itself.

Actions (expiry = record timestamp + rule duration; a record already past that is
ignored, as KumoMTA):
    Suspend                  ready queue (source, site)
    SetConfig                (recipient domain | site when the rule is rollup, source)
    SetDomainConfig          (recipient domain, source), never rollup
    SuspendTenant            scheduled queues (queue domain, tenant); no tenant: nothing
    SuspendCampaign          (queue domain, tenant, campaign); no campaign: tenant-wide
    Bounce                   (queue domain[, tenant when the queue has one]), as KumoMTA
    BounceTenant/-Campaign   as the Suspend variants
Each entry's id is ``sha256(rule fingerprint, action, scope)``, so a re-trigger rewrites
the same entry (extending its expiry) and every replica computes the same id.

Threshold ``N/period``: the action fires when N matching records with timestamps in
``(ts - period, ts]`` have been seen for (rule, ready queue), ``ts`` being the newest
record's timestamp. KumoMTA's code counts over the rule's *duration* instead of the
threshold period (``EventData.duration = rule.duration``), so ``"5/hr"`` with
``duration="2 days"`` fired on 5 matches in two days; we count over the period, as the
documentation says.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.policy.helpers.shaping import Action, ActionKind, Rule, Shaping, match_rules
from engine.queues.naming import QueueName
from engine.records import Json
from engine.shaping.overlay import (
    READY,
    SCHEDULED,
    BounceRule,
    ConfigOverride,
    OverlayEntry,
    Suspension,
)

__all__ = [
    "RecordView",
    "RecordInvalid",
    "parse_record",
    "Window",
    "Match",
    "evaluate",
    "window_count",
    "action_id",
    "reason_for",
    "IGNORED_TYPES",
]

# Record types kumod's TSA log hook never ships (shaping.lua setup_publish): they say
# nothing about how a destination treats us.
IGNORED_TYPES = frozenset(
    {
        "Reception",
        "Delayed",
        "Rejection",
        "AdminRebind",
        "DeferredInjectionRebind",
        "XferIn",
        "XferOut",
    }
)
_PROTO_SUFFIX = "@smtp_client"


class RecordInvalid(ValueError):
    """A log record lacks a field TSA needs, or has it in the wrong shape."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordView:
    """What TSA reads from one log record.

    id/type/timestamp: the record's. domains: recipient domains, lowercased, in order.
    ready_queue: the record's ``site`` (``source->site@smtp_client``). source: the
    egress source (``egress_source``, else the part before ``->``, else
    ``unspecified``). site: the bare MX site name. queue: the scheduled queue name.
    response_line: ``"<code> <c.s.d> <content>"``. mx_hosts: the peer's name, if any.
    """

    id: str
    type: str
    timestamp: float
    domains: tuple[str, ...]
    ready_queue: str
    source: str
    site: str
    queue: str
    response_line: str
    mx_hosts: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Identifies the record across replicas (MTAs publish it to every replica)."""
        return f"{self.id}:{self.type}:{self.timestamp:g}"


def _record_time(obj: Mapping[str, Any]) -> float:
    """When the record happened: its RFC 3339 ``event_time`` (microseconds) when present,
    else ``timestamp`` (whole Unix seconds, which would make expiries up to 1 s early)."""
    event_time = obj.get("event_time")
    if isinstance(event_time, str):
        try:
            return datetime.fromisoformat(event_time.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return _timestamp(obj.get("timestamp"))


def _timestamp(value: Any) -> float:
    if isinstance(value, bool):
        raise RecordInvalid(f"timestamp: expected Unix seconds, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise RecordInvalid(f"timestamp: expected Unix seconds or RFC 3339, got {value!r}")


def _response_line(response: Any) -> str:
    if not isinstance(response, Mapping) or not isinstance(response.get("code"), int):
        raise RecordInvalid(
            f"response: expected {{code, enhanced_code, content}}, got {response!r}"
        )
    content = " ".join(str(response.get("content") or "").split())
    enhanced = response.get("enhanced_code")
    parts = [str(response["code"])]
    if isinstance(enhanced, Mapping):
        try:
            parts.append(
                f"{int(enhanced['class'])}.{int(enhanced['subject'])}.{int(enhanced['detail'])}"
            )
        except (KeyError, TypeError, ValueError):
            raise RecordInvalid(
                f"response.enhanced_code: expected {{class, subject, detail}}, got {enhanced!r}"
            ) from None
    if content:
        parts.append(content)
    return " ".join(parts)


def _domains(recipient: Any) -> tuple[str, ...]:
    items = recipient if isinstance(recipient, list) else [recipient]
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise RecordInvalid(f"recipient: expected an address or a list, got {recipient!r}")
        address = item.strip().strip("<>")
        if "@" not in address:  # <postmaster>: automation makes no sense there (KumoMTA)
            continue
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if domain and domain not in out:
            out.append(domain)
    return tuple(out)


def _site_parts(site: str, egress_source: Any) -> tuple[str, str]:
    """``"src->mx.example@smtp_client"`` -> (source, site name)."""
    before, arrow, after = site.partition("->")
    bare = after if arrow else site
    bare = bare.removesuffix(_PROTO_SUFFIX)
    if isinstance(egress_source, str) and egress_source:
        source = egress_source
    else:
        source = before if arrow and before else "unspecified"
    return source, bare


def parse_record(obj: Json) -> RecordView:
    """Read a KumoMTA-shaped JSON log record (shared/reference/kumomta-interfaces.md §7).

    A record without ``id`` gets the sha256 of its canonical JSON, so duplicates still
    collapse. Raises RecordInvalid naming the field.
    """
    if not isinstance(obj, Mapping):
        raise RecordInvalid(f"expected a log record object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        raise RecordInvalid(f"type: expected a record type, got {kind!r}")
    ident = obj.get("id")
    if not isinstance(ident, str) or not ident:
        ident = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
    site = obj.get("site") or ""
    queue = obj.get("queue") or ""
    if not isinstance(site, str) or not isinstance(queue, str):
        raise RecordInvalid("site and queue: expected strings")
    source, bare = _site_parts(site, obj.get("egress_source"))
    peer = obj.get("peer_address")
    peer_name = peer.get("name") if isinstance(peer, Mapping) else None
    mx = (peer_name,) if isinstance(peer_name, str) and peer_name else ()
    return RecordView(
        id=ident,
        type=kind,
        timestamp=_record_time(obj),
        domains=_domains(obj.get("recipient", "")),
        ready_queue=site,
        source=source,
        site=bare,
        queue=queue,
        response_line=_response_line(obj.get("response")),
        mx_hosts=mx,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """A Threshold rule's count for one (rule, ready queue).

    key: names the window (rule fingerprint + ready queue). limit/period: the
    ``N/period`` trigger. hold: how long a sample must be kept (rule duration + period:
    a record up to ``duration`` old still counts, against samples a period before it).
    """

    key: str
    limit: int
    period: float
    hold: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Match:
    """One rule matching a record for one recipient domain.

    window: None for Immediate rules (the entries apply at once). entries: the overlay
    entries to write when the rule fires (possibly none: SuspendTenant without tenant).
    """

    rule: Rule
    domain: str
    window: Window | None
    entries: tuple[OverlayEntry, ...]


def window_count(scores: Iterable[float], *, ts: float, period: float) -> int:
    """How many samples (record timestamps) fall in ``(ts - period, ts]``."""
    return sum(1 for s in scores if ts - period < s <= ts)


def action_id(fingerprint: str, action: Action, scope: str) -> str:
    """``sha256(rule fingerprint, action, scope)`` as hex."""
    text = json.dumps([fingerprint, action.kind, action.name, action.value, scope], default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def reason_for(rule: Rule) -> str:
    """KumoMTA's ``automation rule: <regex>`` (several as ``(a,b)``)."""
    patterns = [rx.pattern for rx in rule.regexes]
    text = patterns[0] if len(patterns) == 1 else "(" + ",".join(patterns) + ")"
    return f"automation rule: {text}"


def _sched_entry(
    rule: Rule, action: Action, view: RecordView, recipient_domain: str, expires: float, fp: str
) -> OverlayEntry | None:
    try:
        queue = QueueName.parse(view.queue)
        domain, tenant, campaign = queue.domain, queue.tenant, queue.campaign
    except ValueError:
        domain, tenant, campaign = recipient_domain, None, None
    kind = action.kind
    needs_tenant = kind in (
        ActionKind.SUSPEND_TENANT,
        ActionKind.SUSPEND_CAMPAIGN,
        ActionKind.BOUNCE_TENANT,
        ActionKind.BOUNCE_CAMPAIGN,
    )
    if needs_tenant and tenant is None:
        return None
    if kind not in (ActionKind.SUSPEND_CAMPAIGN, ActionKind.BOUNCE_CAMPAIGN):
        campaign = None
    reason = f"{reason_for(rule)} domain={domain}"
    reason += f" tenant={tenant}" if tenant else ""
    reason += f" campaign={campaign}" if campaign else ""
    ident = action_id(fp, action, f"sched:{domain}:{tenant or ''}:{campaign or ''}")
    if kind in (ActionKind.SUSPEND_TENANT, ActionKind.SUSPEND_CAMPAIGN):
        return Suspension(
            scope=SCHEDULED,
            id=ident,
            reason=reason,
            expires=expires,
            rule=fp,
            domain=domain,
            tenant=tenant,
            campaign=campaign,
        )
    return BounceRule(
        id=ident,
        reason=reason,
        expires=expires,
        rule=fp,
        domain=domain,
        tenant=tenant,
        campaign=campaign,
    )


def _entry(
    rule: Rule, action: Action, view: RecordView, domain: str, expires: float
) -> OverlayEntry | None:
    """The overlay entry one action makes for one record (None: nothing to do)."""
    fp = rule.fingerprint()
    if action.kind == ActionKind.SUSPEND:
        return Suspension(
            id=action_id(fp, action, f"ready:{view.source}->{view.site}"),
            scope=READY,
            reason=reason_for(rule),
            expires=expires,
            rule=fp,
            source=view.source,
            site=view.site,
            queue=view.ready_queue,
        )
    if action.kind in (ActionKind.SET_CONFIG, ActionKind.SET_DOMAIN_CONFIG):
        rollup = action.kind == ActionKind.SET_CONFIG and rule.rollup and bool(view.site)
        target = view.site if rollup else domain
        return ConfigOverride(
            id=action_id(fp, action, f"config:{view.source}->{target}"),
            reason=reason_for(rule),
            expires=expires,
            rule=fp,
            domain=domain,
            site=view.site or None,
            source=view.source,
            mx_rollup=rollup,
            name=action.name or "",
            value=action.value,
        )
    return _sched_entry(rule, action, view, domain, expires, fp)


def evaluate(shaping: Shaping, record: RecordView, *, now: float) -> list[Match]:
    """The rules ``record`` matches and the entries each would make.

    now: the current time; a match whose expiry (record timestamp + duration) is not
    after it is dropped. Records of IGNORED_TYPES match nothing.
    """
    if record.type in IGNORED_TYPES:
        return []
    out: list[Match] = []
    for domain in record.domains:
        rules = match_rules(
            shaping,
            domain=domain,
            site_name=record.site,
            mx_hosts=record.mx_hosts,
            site_of={domain: record.site} if record.site else {},
            response_line=record.response_line,
        )
        for rule in rules:
            expires = record.timestamp + rule.duration
            if expires <= now:
                continue
            window = None
            if rule.trigger is not None:
                window = Window(
                    key=f"{rule.fingerprint()}:{record.ready_queue}",
                    limit=rule.trigger.limit,
                    period=rule.trigger.period,
                    hold=rule.duration + rule.trigger.period,
                )
            entries = (_entry(rule, a, record, domain, expires) for a in rule.actions)
            out.append(
                Match(
                    rule=rule,
                    domain=domain,
                    window=window,
                    entries=tuple(e for e in entries if e is not None),
                )
            )
    return out
