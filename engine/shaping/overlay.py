"""The shaping overlay: suspensions, bounces and config overrides that expire on their own.

Exports:
    Overlay            current entries with lookups by ready queue, scheduled queue and path
    Suspension         a ready-queue (source, site) or scheduled-queue (domain, tenant,
                       campaign) suspension
    BounceRule         bounce what is (or arrives) in matching scheduled queues
    ConfigOverride     one egress-path option set for a (domain | site, source)
    OverlayEntry       Suspension | BounceRule | ConfigOverride
    entry_from_json(obj) -> OverlayEntry     (ValueError naming what is wrong)

Entries come from the TSA (origin ``"tsa"``, through ``engine.shaping.tsa_client``) and from the
admin API (origin ``"admin"``); both use the same ``upsert``/``remove``. Every entry
carries an absolute ``expires`` (Unix seconds) and simply stops applying after it, so an
unreachable TSA never clears anything early (KumoMTA treats an unreachable TSA as an
empty overlay). A field left ``None`` matches anything (an admin suspension of a whole
site, or of every tenant of a domain).

JSON form (the TSA's Redis hash and pub/sub channel; ``to_json``/``entry_from_json``)::

    {"kind": "ReadyQSuspension", "id", "reason", "expires", "origin", "rule",
     "source", "site", "queue"}
    {"kind": "SchedQSuspension" | "SchedQBounce", ..., "domain", "tenant", "campaign"}
    {"kind": "ConfigOverride", ..., "domain", "site", "source", "mx_rollup", "name", "value"}

``ConfigOverride.value`` is the option's TOML value (``"1/minute"``, ``1``); ``parsed`` is
the engine's value (a ThrottleSpec, a LimitSpec for ``connection_limit``), so callers
apply ``config_overrides()`` with ``egress.apply_egress_options(overrides, base)``.
Pure: no I/O and no clock; every lookup takes ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from engine.config.settings import ConfigError
from engine.policy.egress_options import parse_egress_option
from engine.records import Json, JsonObject

__all__ = [
    "Overlay",
    "Suspension",
    "BounceRule",
    "ConfigOverride",
    "OverlayEntry",
    "entry_from_json",
    "READY",
    "SCHEDULED",
    "ORIGINS",
]

READY = "ready"
SCHEDULED = "scheduled"
ORIGINS = ("tsa", "admin")


def _opt_str(obj: Mapping[str, Json], key: str) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string, got {value!r}")
    return value


class _Common(TypedDict):
    """The fields every overlay entry has, as keyword arguments."""

    id: str
    expires: float
    origin: str
    reason: str
    rule: str | None


class _SchedScope(TypedDict):
    """A scheduled-queue scope (None matches any), as keyword arguments."""

    domain: str | None
    tenant: str | None
    campaign: str | None


def _common(obj: Mapping[str, Json]) -> _Common:
    ident = obj.get("id")
    if not isinstance(ident, str) or not ident:
        raise ValueError(f"id: expected a non-empty string, got {ident!r}")
    expires = obj.get("expires")
    if isinstance(expires, bool) or not isinstance(expires, (int, float)):
        raise ValueError(f"expires: expected Unix seconds, got {expires!r}")
    origin = obj.get("origin", "tsa")
    if origin not in ORIGINS:
        raise ValueError(f"origin: expected one of {', '.join(ORIGINS)}, got {origin!r}")
    reason = obj.get("reason", "")
    if not isinstance(reason, str):
        raise ValueError(f"reason: expected a string, got {reason!r}")
    return {
        "id": ident,
        "expires": float(expires),
        "origin": origin,
        "reason": reason,
        "rule": _opt_str(obj, "rule"),
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class Suspension:
    """Hold delivery. scope: ``"ready"`` (source, site; queue is the ready-queue name
    ``source->site@smtp_client`` for display) or ``"scheduled"`` (domain, tenant,
    campaign). reason: shown to operators. expires: Unix seconds. origin: "tsa" or
    "admin". rule: the automation rule's fingerprint, if any."""

    id: str
    scope: str
    reason: str = ""
    expires: float
    origin: str = "tsa"
    rule: str | None = None
    source: str | None = None
    site: str | None = None
    queue: str | None = None
    domain: str | None = None
    tenant: str | None = None
    campaign: str | None = None

    @property
    def kind(self) -> str:
        return "ReadyQSuspension" if self.scope == READY else "SchedQSuspension"

    def to_json(self) -> JsonObject:
        out = _base_json(self)
        if self.scope == READY:
            out.update(source=self.source, site=self.site, queue=self.queue)
        else:
            out.update(domain=self.domain, tenant=self.tenant, campaign=self.campaign)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class BounceRule:
    """Bounce messages of matching scheduled queues (domain, tenant, campaign; None
    matches any) until ``expires``. Other fields as Suspension."""

    id: str
    reason: str = ""
    expires: float
    origin: str = "tsa"
    rule: str | None = None
    domain: str | None = None
    tenant: str | None = None
    campaign: str | None = None

    kind = "SchedQBounce"

    def to_json(self) -> JsonObject:
        out = _base_json(self)
        out.update(domain=self.domain, tenant=self.tenant, campaign=self.campaign)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigOverride:
    """One egress-path option for one egress source (None: every source).

    mx_rollup: True applies to every domain on ``site`` (the MX site name), as a
    ``["domain"]`` block with mx_rollup=true; False applies to ``domain`` only.
    name/value: the option and its TOML value; parsed: its engine value, computed
    here (ValueError for an unknown option or bad value).
    """

    id: str
    reason: str = ""
    expires: float
    origin: str = "tsa"
    rule: str | None = None
    domain: str
    site: str | None = None
    source: str | None = None
    mx_rollup: bool = False
    name: str
    value: Json
    parsed: Any = field(default=None, compare=False)

    kind = "ConfigOverride"

    def __post_init__(self) -> None:
        if self.mx_rollup and not self.site:
            raise ValueError("site: required when mx_rollup is true")
        try:
            parsed = parse_egress_option(self.name, self.value, where=f"overlay {self.id}")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        object.__setattr__(self, "parsed", parsed)

    def to_json(self) -> JsonObject:
        out = _base_json(self)
        out.update(
            domain=self.domain,
            site=self.site,
            source=self.source,
            mx_rollup=self.mx_rollup,
            name=self.name,
            value=self.value,
        )
        return out


OverlayEntry = Suspension | BounceRule | ConfigOverride


def _base_json(entry: OverlayEntry) -> JsonObject:
    return {
        "kind": entry.kind,
        "id": entry.id,
        "reason": entry.reason,
        "expires": entry.expires,
        "origin": entry.origin,
        "rule": entry.rule,
    }


def entry_from_json(obj: Json) -> OverlayEntry:
    """Build an entry from its JSON form. Raises ValueError naming the bad field."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected an object, got {obj!r}")
    kind = obj.get("kind")
    common = _common(obj)
    if kind == "ReadyQSuspension":
        return Suspension(
            scope=READY,
            source=_opt_str(obj, "source"),
            site=_opt_str(obj, "site"),
            queue=_opt_str(obj, "queue"),
            **common,
        )
    sched: _SchedScope = {
        "domain": _opt_str(obj, "domain"),
        "tenant": _opt_str(obj, "tenant"),
        "campaign": _opt_str(obj, "campaign"),
    }
    if kind == "SchedQSuspension":
        return Suspension(scope=SCHEDULED, **sched, **common)
    if kind == "SchedQBounce":
        return BounceRule(**sched, **common)
    if kind == "ConfigOverride":
        domain, name = obj.get("domain"), obj.get("name")
        if not isinstance(domain, str) or not isinstance(name, str):
            raise ValueError("ConfigOverride needs domain and name strings")
        rollup = obj.get("mx_rollup", False)
        if not isinstance(rollup, bool):
            raise ValueError(f"mx_rollup: expected true or false, got {rollup!r}")
        return ConfigOverride(
            domain=domain,
            site=_opt_str(obj, "site"),
            source=_opt_str(obj, "source"),
            mx_rollup=rollup,
            name=name,
            value=obj.get("value"),
            **common,
        )
    raise ValueError(f"kind: unknown entry kind {kind!r}")


def _matches(pattern: str | None, value: str | None) -> bool:
    return pattern is None or pattern == value


def _latest(entries: Iterable[Any], now: float) -> Any:
    best = None
    for entry in entries:
        if entry.expires > now and (best is None or entry.expires > best.expires):
            best = entry
    return best


class Overlay:
    """The entries in force, indexed for the delivery hot path.

    Mutations (rare) rebuild the indexes; lookups (per dispatch) touch only the
    entries for one site or domain. ``generation`` increases on every change so a
    caller can notice one cheaply.
    """

    def __init__(self, entries: Iterable[OverlayEntry] = ()) -> None:
        self._by_id: dict[str, OverlayEntry] = {e.id: e for e in entries}
        self.generation = 0
        self._reindex()

    def _reindex(self) -> None:
        ready: dict[str | None, list[Suspension]] = {}
        sched: dict[str | None, list[Suspension]] = {}
        bounce: dict[str | None, list[BounceRule]] = {}
        by_site: dict[str, list[ConfigOverride]] = {}
        by_domain: dict[str, list[ConfigOverride]] = {}
        for e in self._by_id.values():
            if isinstance(e, Suspension):
                if e.scope == READY:
                    ready.setdefault(e.site, []).append(e)
                else:
                    sched.setdefault(e.domain, []).append(e)
            elif isinstance(e, BounceRule):
                bounce.setdefault(e.domain, []).append(e)
            elif e.mx_rollup:
                by_site.setdefault(e.site or "", []).append(e)
            else:
                by_domain.setdefault(e.domain, []).append(e)
        self._ready, self._sched, self._bounce = ready, sched, bounce
        self._config_site, self._config_domain = by_site, by_domain
        self.generation += 1

    # --- changes ------------------------------------------------------------------------

    def upsert(self, entry: OverlayEntry) -> None:
        """Add an entry or replace the one with the same id."""
        self._by_id[entry.id] = entry
        self._reindex()

    def remove(self, ident: str) -> bool:
        """Drop the entry with this id; False when there was none."""
        if self._by_id.pop(ident, None) is None:
            return False
        self._reindex()
        return True

    def replace_all(self, entries: Iterable[OverlayEntry], *, origin: str = "tsa") -> None:
        """Make ``entries`` the complete set for ``origin`` (a full resync); entries of
        other origins (admin) are kept."""
        kept = {k: e for k, e in self._by_id.items() if e.origin != origin}
        kept.update((e.id, e) for e in entries)
        self._by_id = kept
        self._reindex()

    def prune(self, now: float) -> int:
        """Forget entries whose ``expires`` has passed; returns how many."""
        stale = [k for k, e in self._by_id.items() if e.expires <= now]
        for k in stale:
            del self._by_id[k]
        if stale:
            self._reindex()
        return len(stale)

    # --- lookups ------------------------------------------------------------------------

    def get(self, ident: str) -> OverlayEntry | None:
        return self._by_id.get(ident)

    def entries(self, now: float | None = None) -> list[OverlayEntry]:
        """All entries (only those in force at ``now`` when given), oldest expiry first."""
        out = [e for e in self._by_id.values() if now is None or e.expires > now]
        return sorted(out, key=lambda e: (e.expires, e.id))

    def __len__(self) -> int:
        return len(self._by_id)

    def ready_suspension(self, source: str, site: str, now: float) -> Suspension | None:
        """The longest-lasting suspension of ready queue ``source->site``, or None."""
        candidates = [*self._ready.get(site, ()), *self._ready.get(None, ())]
        return _latest((s for s in candidates if _matches(s.source, source)), now)

    def sched_suspension(
        self, domain: str, tenant: str | None, campaign: str | None, now: float
    ) -> Suspension | None:
        """The longest-lasting suspension of scheduled queue (domain, tenant, campaign)."""
        candidates = [*self._sched.get(domain, ()), *self._sched.get(None, ())]
        return _latest(
            (
                s
                for s in candidates
                if _matches(s.tenant, tenant) and _matches(s.campaign, campaign)
            ),
            now,
        )

    def bounce_rule(
        self, domain: str, tenant: str | None, campaign: str | None, now: float
    ) -> BounceRule | None:
        """The longest-lasting bounce rule covering scheduled queue (domain, tenant, campaign)."""
        candidates = [*self._bounce.get(domain, ()), *self._bounce.get(None, ())]
        return _latest(
            (
                b
                for b in candidates
                if _matches(b.tenant, tenant) and _matches(b.campaign, campaign)
            ),
            now,
        )

    def config_overrides(self, domain: str, site: str, source: str, now: float) -> dict[str, Any]:
        """Option name -> parsed value for the egress path (domain, site, source).

        Site (mx_rollup) overrides apply first, then domain ones, as shaping resolution
        applies site sources before domain sources; within each, the entry expiring
        last wins.
        """
        out: dict[str, Any] = {}
        for group in (self._config_site.get(site, ()), self._config_domain.get(domain, ())):
            live = [c for c in group if c.expires > now and _matches(c.source, source)]
            for c in sorted(live, key=lambda c: (c.expires, c.id)):
                out[c.name] = c.parsed
        return out

    def to_json(self, now: float | None = None) -> list[JsonObject]:
        """Every entry (in force at ``now`` when given) in its JSON form."""
        return [e.to_json() for e in self.entries(now)]
