"""Traffic shaping resolution: merged shaping data -> one path's config and rules.

Exports:
    Shaping                               merged shaping data (``shaping_load.load_shaping``
                                          reads it from TOML files)
    Shaping.rollup_domains() -> [domain]  domains whose blocks need an MX site name
    Shaping.automation_rules(...)         rules that apply to a destination (for TSA)
    resolve(shaping, *, domain, source, site_name, mx_hosts, site_of) -> ResolvedPath
    match_rules(shaping, *, ..., response_line) -> [Rule]   rules whose regex matches a reply
    provider_matches(matches, domain, mx_hosts) -> bool
    is_internal_response(line) -> bool
    Rule, Action, ActionKind, RuleScope, ProviderMatch, Block, Provider, ResolvedPath
                                          frozen records
    INTERNAL_PREFIXES, MERGEABLE
    normalize_host, merge_options, merge_block   merge rules shared with ``shaping_load``

Loading, merging files and validation are in ``shaping_load`` (see its docstring for
the format). Resolution order: default, matching providers, provider sources, site,
domain, site sources, domain sources; each later step wins per key, except the three
``additional_*`` maps, which merge key by key. Rollup needs DNS, so the engine resolves
``rollup_domains()`` and passes their site names as ``site_of``; a domain missing from
``site_of`` (DNS failure, null MX) contributes nothing, as KumoMTA's
``dns_fail``/``null_mx = Ignore``.

KumoMTA quirks fixed here:
    * An empty MX host list matches no MXSuffix/HostName provider (KumoMTA's
      every-host check is vacuously true for it). MX hosts and the domain are
      compared lowercased (configured suffixes are lowercased at load: shaping_load).
    * ``replace_base`` acts only while merging files: KumoMTA also honoured a stored
      flag at resolution, wiping default and provider settings for that path.
Regexes are Python ``re`` (KumoMTA uses fancy-regex; lookaround, atomic groups and
possessive quantifiers exist in both). Responses starting ``KumoMTA internal: `` or
``Nimbus internal: `` are skipped unless the rule sets ``match_internal``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from engine.config.throttle_spec import LimitSpec, ThrottleSpec
from engine.policy.egress import EgressPathConfig
from engine.policy.egress_options import apply_egress_options

__all__ = [
    "Shaping",
    "ResolvedPath",
    "Rule",
    "Action",
    "ActionKind",
    "RuleScope",
    "ProviderMatch",
    "Block",
    "Provider",
    "resolve",
    "match_rules",
    "provider_matches",
    "is_internal_response",
    "INTERNAL_PREFIXES",
]

MERGEABLE = (
    "additional_connection_limits",
    "additional_message_rate_throttles",
    "additional_source_selection_rates",
)
INTERNAL_PREFIXES = ("KumoMTA internal: ", "Nimbus internal: ")
_DOMAIN_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_INTERNAL = re.compile(
    r"\d{3} (?:\d\.\d{1,3}\.\d{1,3} )?(?:" + "|".join(re.escape(p) for p in INTERNAL_PREFIXES) + ")"
)


class ActionKind(StrEnum):
    SUSPEND = "Suspend"  # the ready queue (source -> site)
    SET_CONFIG = "SetConfig"  # override one egress path option
    SET_DOMAIN_CONFIG = "SetDomainConfig"  # the same, keyed by domain (mx_rollup=false)
    SUSPEND_TENANT = "SuspendTenant"
    SUSPEND_CAMPAIGN = "SuspendCampaign"
    BOUNCE = "Bounce"
    BOUNCE_TENANT = "BounceTenant"
    BOUNCE_CAMPAIGN = "BounceCampaign"


class RuleScope(StrEnum):
    DEFAULT = "default"
    PROVIDER = "provider"
    SITE = "site"  # from a domain block with mx_rollup=true
    DOMAIN = "domain"  # from a domain block with mx_rollup=false


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """One automation action. ``name``/``value``/``parsed`` are set for the two config kinds:
    the option name, its TOML value (for the TSA overlay) and its parsed value."""

    kind: ActionKind
    name: str | None = None
    value: Any = None
    parsed: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """An automation rule.

    regexes: any match counts. actions: applied together. trigger: None for
    Immediate, else the Threshold rate. duration: seconds an action lasts.
    match_internal: also match our own internal responses. scope/block: where the
    rule was declared (block is ``"default"``, the domain, or the provider name).
    origin: ``file: [table][n]`` for messages.
    """

    regexes: tuple[re.Pattern[str], ...]
    actions: tuple[Action, ...]
    trigger: ThrottleSpec | None = None
    duration: float
    match_internal: bool = False
    scope: RuleScope
    block: str
    origin: str = ""

    @property
    def rollup(self) -> bool:
        """True when the rule acts on the site (default and site rules), as KumoMTA's
        ``was_rollup``; provider and domain rules act on the recipient domain."""
        return self.scope in (RuleScope.DEFAULT, RuleScope.SITE)

    def matches(self, response_line: str, *, is_internal: bool) -> bool:
        """True when some regex finds a match in ``"<code> <c.s.d> <content>"``."""
        if is_internal and not self.match_internal:
            return False
        return any(rx.search(response_line) for rx in self.regexes)

    def fingerprint(self) -> str:
        """A stable sha256 of what the rule does (not where it was declared)."""
        text = json.dumps(
            [
                [rx.pattern for rx in self.regexes],
                [[a.kind, a.name, a.value] for a in self.actions],
                str(self.trigger) if self.trigger else None,
                self.duration,
                self.match_internal,
            ],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderMatch:
    """One ``match`` entry: kind is MXSuffix, DomainSuffix or HostName; value is
    lowercased with any trailing dot removed."""

    kind: str
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    """A ``["default"]`` or domain block (merged, or one file's fragment of a rollup block).

    options/sources hold parsed option values (``connection_limit`` as a LimitSpec).
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    automation: tuple[Rule, ...] = ()
    replace_base: bool = False
    origin: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Provider:
    """A ``[provider."name"]`` block, merged over all files.

    connection_limit / max_message_rate / source_selection_rate: the ``provider_*``
    keys, shared per source as ``shaping-provider-<name>-<source>-{limit,rate,
    selection-rate}``. source_selection_rates: ``provider_source_selection_rate`` set
    in ``sources.<src>``.
    """

    name: str
    matches: tuple[ProviderMatch, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    connection_limit: LimitSpec | None = None
    max_message_rate: ThrottleSpec | None = None
    source_selection_rate: ThrottleSpec | None = None
    sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source_selection_rates: Mapping[str, ThrottleSpec] = field(default_factory=dict)
    automation: tuple[Rule, ...] = ()
    origin: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedPath:
    """The shaping outcome for one (domain, source, site).

    config: the merged EgressPathConfig. provider_name: the last matching provider
    (also ``config.provider_name`` unless a block overrode it). providers: every
    matching provider in definition order. rules: the automation rules that apply, in
    KumoMTA's order (default, providers, site, domain). origins: option name -> the
    block that set it last (``default``, ``provider:<name>``, ``site:<site>``,
    ``domain:<domain>``, each maybe with `` source:<source>``); options it does not
    name keep the engine's defaults.
    """

    config: EgressPathConfig
    provider_name: str | None
    providers: tuple[str, ...]
    rules: tuple[Rule, ...]
    origins: Mapping[str, str] = field(default_factory=dict)


# --- pure decisions ---------------------------------------------------------------------


def normalize_host(name: str) -> str:
    return name.strip().lower().removesuffix(".")


def provider_matches(
    matches: Sequence[ProviderMatch], domain: str, mx_hosts: Sequence[str]
) -> bool:
    """Does a provider's ``match`` list cover this destination?

    A DomainSuffix matching the domain wins outright. Otherwise every MX host must
    end with some MXSuffix or equal some HostName (plain lowercase ``ends_with``,
    trailing dots ignored on both sides). No MX hosts, or no MX rules: no match.
    """
    domain = normalize_host(domain)
    if any(m.kind == "DomainSuffix" and domain.endswith(m.value) for m in matches):
        return True
    mx_rules = [m for m in matches if m.kind != "DomainSuffix"]
    if not mx_rules or not mx_hosts:
        return False
    for host in map(normalize_host, mx_hosts):
        if not any(
            host.endswith(m.value) if m.kind == "MXSuffix" else host == m.value for m in mx_rules
        ):
            return False
    return True


def is_internal_response(line: str) -> bool:
    """True for a response we generated ourselves (``[<code> [<c.s.d>] ]KumoMTA internal: ``
    or ``Nimbus internal: ``), which rules skip unless ``match_internal``."""
    return line.startswith(INTERNAL_PREFIXES) or _INTERNAL.match(line) is not None


def merge_options(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    """Later wins per key, except the ``additional_*`` maps, which merge key by key."""
    for key, value in new.items():
        if key in MERGEABLE and key in into:
            into[key] = MappingProxyType({**into[key], **value})
        else:
            into[key] = value


def _provider_implied(
    prov: Provider, source: str, selection: ThrottleSpec | None
) -> dict[str, Any]:
    stem = f"shaping-provider-{prov.name}-{source}"
    implied: dict[str, Any] = {"provider_name": prov.name}
    if prov.connection_limit is not None:
        implied["additional_connection_limits"] = {f"{stem}-limit": prov.connection_limit}
    if prov.max_message_rate is not None:
        implied["additional_message_rate_throttles"] = {f"{stem}-rate": prov.max_message_rate}
    if selection is not None:
        implied["additional_source_selection_rates"] = {f"{stem}-selection-rate": selection}
    return implied


def _site_block(shaping: Shaping, site_name: str, site_of: Mapping[str, str]) -> Block | None:
    block = None
    if site_name:
        for fragment in shaping.rollups:
            if site_of.get(fragment.name) == site_name:
                block = merge_block(block, fragment)
    return block


def _matching_providers(shaping: Shaping, domain: str, mx_hosts: Sequence[str]) -> list[Provider]:
    # Providers only match DNS names, not e.g. the TSA hook queue "http://h:8008.tsa.kumomta".
    if not _DOMAIN_NAME.fullmatch(normalize_host(domain)):
        return []
    return [p for p in shaping.providers.values() if provider_matches(p.matches, domain, mx_hosts)]


def _steps(
    shaping: Shaping,
    domain: str,
    source: str,
    site_name: str,
    site: Block | None,
    dom: Block | None,
    providers: Sequence[Provider],
) -> list[tuple[str, Mapping[str, Any]]]:
    """The option blocks that apply to one path, in merge order, each with its origin:
    ``default``, ``provider:<name>``, ``provider:<name> source:<source>``,
    ``site:<site>``, ``domain:<domain>``, ``site:<site> source:<source>``,
    ``domain:<domain> source:<source>``."""
    steps: list[tuple[str, Mapping[str, Any]]] = []
    if shaping.default is not None:
        steps.append(("default", shaping.default.options))
    for prov in providers:
        steps.append((f"provider:{prov.name}", prov.options))
        steps.append(
            (f"provider:{prov.name}", _provider_implied(prov, source, prov.source_selection_rate))
        )
    for prov in providers:
        if source in prov.sources:
            origin = f"provider:{prov.name} source:{source}"
            steps.append((origin, prov.sources[source]))
            rate = prov.source_selection_rates.get(source, prov.source_selection_rate)
            steps.append((origin, _provider_implied(prov, source, rate)))
    labelled = ((site, f"site:{site_name}"), (dom, f"domain:{domain}"))
    for block, label in labelled:
        if block is not None:
            steps.append((label, block.options))
    for block, label in labelled:
        if block is not None and source in block.sources:
            steps.append((f"{label} source:{source}", block.sources[source]))
    return steps


def resolve(
    shaping: Shaping,
    *,
    domain: str,
    source: str,
    site_name: str,
    mx_hosts: Sequence[str],
    site_of: Mapping[str, str],
) -> ResolvedPath:
    """Merge the shaping blocks that apply to one egress path.

    domain: the routing/recipient domain. source: the egress source name.
    site_name: the ready queue's MX site (``factor_names``). mx_hosts: the domain's MX
    hosts (for provider matching). site_of: rollup block domain -> its site name.
    Order: default; matching providers in definition order (each followed by its
    implied ``provider_name`` and shared limits); their ``sources.<source>``; the site
    block; the ``mx_rollup=false`` domain block; site then domain ``sources.<source>``.
    ``origins`` names, for each option set, the last block that set it (``_steps``).
    """
    domain = normalize_host(domain)
    options: dict[str, Any] = {}
    origins: dict[str, str] = {}
    providers = _matching_providers(shaping, domain, mx_hosts)
    site = _site_block(shaping, site_name, site_of)
    dom = shaping.domains.get(domain)
    for origin, block in _steps(shaping, domain, source, site_name, site, dom, providers):
        merge_options(options, block)
        origins.update(dict.fromkeys(block, origin))
    if "connection_limit" in origins:
        origins["connection_limit_local"] = origins["connection_limit"]
    rules = _applicable_rules(shaping, providers, site, dom)
    return ResolvedPath(
        config=apply_egress_options(options),
        provider_name=providers[-1].name if providers else None,
        providers=tuple(p.name for p in providers),
        rules=rules,
        origins=MappingProxyType(origins),
    )


def _applicable_rules(
    shaping: Shaping, providers: Sequence[Provider], site: Block | None, dom: Block | None
) -> tuple[Rule, ...]:
    rules = list(shaping.default.automation) if shaping.default else []
    for prov in providers:
        rules.extend(prov.automation)
    for block in (site, dom):
        if block is not None:
            rules.extend(block.automation)
    return tuple(rules)


def match_rules(
    shaping: Shaping,
    *,
    domain: str,
    site_name: str,
    mx_hosts: Sequence[str],
    site_of: Mapping[str, str],
    response_line: str,
    is_internal: bool | None = None,
) -> list[Rule]:
    """The automation rules that fire for one delivery response.

    response_line: ``"<code> <c.s.d> <content>"`` on one line (``Response.single_line``).
    is_internal: whether we generated the response; None detects it from the text.
    Other arguments as ``resolve``. Returns matching rules in KumoMTA's order.
    """
    internal = is_internal_response(response_line) if is_internal is None else is_internal
    rules = shaping.automation_rules(
        domain=domain, site_name=site_name, mx_hosts=mx_hosts, site_of=site_of
    )
    return [rule for rule in rules if rule.matches(response_line, is_internal=internal)]


def merge_block(acc: Block | None, new: Block) -> Block:
    """``new`` merged over ``acc`` (a later file's, or another domain's, fragment);
    ``replace_base`` drops ``acc`` here and is not kept on the result."""
    if acc is None or new.replace_base:
        return Block(
            name=new.name,
            options=dict(new.options),
            sources={k: dict(v) for k, v in new.sources.items()},
            automation=new.automation,
            origin=new.origin,
        )
    options = dict(acc.options)
    merge_options(options, new.options)
    sources = {k: dict(v) for k, v in acc.sources.items()}
    for src, table in new.sources.items():
        merge_options(sources.setdefault(src, {}), table)
    return Block(
        name=acc.name,
        options=options,
        sources=sources,
        automation=acc.automation + new.automation,
        origin=acc.origin,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Shaping:
    """Merged shaping data.

    default: the ``["default"]`` block. domains: ``mx_rollup=false`` blocks by domain.
    rollups: ``mx_rollup=true`` fragments in load order, merged per site at resolution
    (several domains may share a site). providers: by name, in definition order.
    """

    files: tuple[str, ...] = ()
    default: Block | None = None
    domains: Mapping[str, Block] = field(default_factory=dict)
    rollups: tuple[Block, ...] = ()
    providers: Mapping[str, Provider] = field(default_factory=dict)

    def rollup_domains(self) -> list[str]:
        """Domains of ``mx_rollup=true`` blocks: resolve their MX and pass ``site_of``."""
        return list(dict.fromkeys(block.name for block in self.rollups))

    def automation_rules(
        self, *, domain: str, site_name: str, mx_hosts: Sequence[str], site_of: Mapping[str, str]
    ) -> list[Rule]:
        """Every automation rule that applies to a destination, matching or not, in
        KumoMTA's order: default, matching providers, site, domain."""
        providers = _matching_providers(self, domain, mx_hosts)
        site = _site_block(self, site_name, site_of)
        dom = self.domains.get(normalize_host(domain))
        return list(_applicable_rules(self, providers, site, dom))
