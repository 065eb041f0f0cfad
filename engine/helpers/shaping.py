"""Traffic shaping: KumoMTA ``shaping.toml`` files -> egress path config and automation rules.

Exports:
    Shaping.load(paths) -> Shaping        TOML files merged in order, validated at load
    Shaping.rollup_domains() -> [domain]  domains whose blocks need an MX site name
    Shaping.automation_rules(...)         rules that apply to a destination (for TSA)
    resolve(shaping, *, domain, source, site_name, mx_hosts, site_of) -> ResolvedPath
    match_rules(shaping, *, ..., response_line) -> [Rule]   rules whose regex matches a reply
    provider_matches(matches, domain, mx_hosts) -> bool
    is_internal_response(line) -> bool
    Rule, Action, ActionKind, RuleScope, ProviderMatch, ResolvedPath    frozen records

Format (``shared/reference/kumomta-shaping-tsa.md`` §1; KumoMTA
``crates/kumo-api-types/src/shaping.rs``): ``["default"]``, ``["domain"]`` blocks
(``mx_rollup`` true by default: the block applies to the domain's MX *site*, so every
domain with the same MX hosts shares it; ``mx_rollup=false`` keys it by the literal
name), ``["d".sources."src"]``, ``[provider."n"]`` with ``match=[{MXSuffix=..}, ...]``
and ``[[<block>.automation]]`` rules. Later files merge into earlier ones block by
block: the three ``additional_*`` maps merge key by key, every other key is replaced
whole; ``replace_base=true`` drops what earlier files said for that block. Resolution
order: default, matching providers, provider sources, site, domain, site sources,
domain sources. Everything is validated at load; errors are ConfigError naming file,
table and key. Rollup needs DNS, so the engine resolves ``rollup_domains()`` and passes
their site names as ``site_of``; a domain missing from ``site_of`` (DNS failure, null
MX) contributes nothing, as KumoMTA's ``dns_fail``/``null_mx = Ignore``.

KumoMTA quirks fixed here:
    * A configured suffix's trailing dot is stripped too (only the MX host's was), so
      ``MXSuffix=".barracudanetworks.com."`` matches; suffixes and hosts are compared
      lowercased.
    * An empty MX host list matches no MXSuffix/HostName provider (KumoMTA's
      every-host check is vacuously true for it).
    * ``provider_max_message_rate`` from a later file is merged (``ProviderEntry::
      merge_from`` dropped it, and ``replace_base`` kept the old one).
    * A provider that still has no ``match`` after all files are merged is a
      ConfigError (its rules would never fire: the community ``provider."gmail"``
      block, whose base is called ``google``). A later file may add rules to a
      provider defined, with ``match``, in an earlier file.
    * ``replace_base`` acts only while merging files: KumoMTA also honoured a stored
      flag at resolution, wiping default and provider settings for that path.
    * ``sources`` in ``["default"]`` (ignored by KumoMTA) and ``mx_rollup`` in
      ``["default"]`` are errors rather than silently meaningless.
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
from pathlib import Path
from types import MappingProxyType
from typing import Any

import tomli

from ..config import ConfigError
from ..egress import (EGRESS_OPTION_NAMES, EgressPathConfig, apply_egress_options,
                      parse_egress_option)
from ..throttle_spec import LimitSpec, ThrottleSpec
from ..units import parse_duration

__all__ = [
    "Shaping", "ResolvedPath", "Rule", "Action", "ActionKind", "RuleScope", "ProviderMatch",
    "Block", "Provider", "resolve", "match_rules", "provider_matches", "is_internal_response",
    "INTERNAL_PREFIXES",
]

MERGEABLE = ("additional_connection_limits", "additional_message_rate_throttles",
             "additional_source_selection_rates")
INTERNAL_PREFIXES = ("KumoMTA internal: ", "Nimbus internal: ")
_MATCH_KINDS = ("MXSuffix", "DomainSuffix", "HostName")
_RULE_KEYS = {"regex", "action", "trigger", "duration", "match_internal"}
_PROVIDER_KEYS = ("provider_connection_limit", "provider_max_message_rate",
                  "provider_source_selection_rate")
_DOMAIN_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_INTERNAL = re.compile(r"\d{3} (?:\d\.\d{1,3}\.\d{1,3} )?(?:%s)" %
                       "|".join(re.escape(p) for p in INTERNAL_PREFIXES))


class ActionKind(StrEnum):
    SUSPEND = "Suspend"                      # the ready queue (source -> site)
    SET_CONFIG = "SetConfig"                 # override one egress path option
    SET_DOMAIN_CONFIG = "SetDomainConfig"    # the same, keyed by domain (mx_rollup=false)
    SUSPEND_TENANT = "SuspendTenant"
    SUSPEND_CAMPAIGN = "SuspendCampaign"
    BOUNCE = "Bounce"
    BOUNCE_TENANT = "BounceTenant"
    BOUNCE_CAMPAIGN = "BounceCampaign"


class RuleScope(StrEnum):
    DEFAULT = "default"
    PROVIDER = "provider"
    SITE = "site"        # from a domain block with mx_rollup=true
    DOMAIN = "domain"    # from a domain block with mx_rollup=false


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
        text = json.dumps([[rx.pattern for rx in self.regexes],
                           [[a.kind, a.name, a.value] for a in self.actions],
                           str(self.trigger) if self.trigger else None, self.duration,
                           self.match_internal], sort_keys=True, default=str)
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
    KumoMTA's order (default, providers, site, domain).
    """

    config: EgressPathConfig
    provider_name: str | None
    providers: tuple[str, ...]
    rules: tuple[Rule, ...]


# --- pure decisions ---------------------------------------------------------------------

def _host(name: str) -> str:
    return name.strip().lower().removesuffix(".")


def provider_matches(matches: Sequence[ProviderMatch], domain: str,
                     mx_hosts: Sequence[str]) -> bool:
    """Does a provider's ``match`` list cover this destination?

    A DomainSuffix matching the domain wins outright. Otherwise every MX host must
    end with some MXSuffix or equal some HostName (plain lowercase ``ends_with``,
    trailing dots ignored on both sides). No MX hosts, or no MX rules: no match.
    """
    domain = _host(domain)
    if any(m.kind == "DomainSuffix" and domain.endswith(m.value) for m in matches):
        return True
    mx_rules = [m for m in matches if m.kind != "DomainSuffix"]
    if not mx_rules or not mx_hosts:
        return False
    for host in map(_host, mx_hosts):
        if not any(host.endswith(m.value) if m.kind == "MXSuffix" else host == m.value
                   for m in mx_rules):
            return False
    return True


def is_internal_response(line: str) -> bool:
    """True for a response we generated ourselves (``[<code> [<c.s.d>] ]KumoMTA internal: ``
    or ``Nimbus internal: ``), which rules skip unless ``match_internal``."""
    return line.startswith(INTERNAL_PREFIXES) or _INTERNAL.match(line) is not None


def _merge_options(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    """Later wins per key, except the ``additional_*`` maps, which merge key by key."""
    for key, value in new.items():
        if key in MERGEABLE and key in into:
            into[key] = MappingProxyType({**into[key], **value})
        else:
            into[key] = value


def _provider_implied(prov: Provider, source: str,
                      selection: ThrottleSpec | None) -> dict[str, Any]:
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
                block = _merge_block(block, fragment)
    return block


def _matching_providers(shaping: Shaping, domain: str, mx_hosts: Sequence[str]) -> list[Provider]:
    # Providers only match DNS names, not e.g. the TSA hook queue "http://h:8008.tsa.kumomta".
    if not _DOMAIN_NAME.fullmatch(_host(domain)):
        return []
    return [p for p in shaping.providers.values() if provider_matches(p.matches, domain, mx_hosts)]


def resolve(shaping: Shaping, *, domain: str, source: str, site_name: str,
            mx_hosts: Sequence[str], site_of: Mapping[str, str]) -> ResolvedPath:
    """Merge the shaping blocks that apply to one egress path.

    domain: the routing/recipient domain. source: the egress source name.
    site_name: the ready queue's MX site (``factor_names``). mx_hosts: the domain's MX
    hosts (for provider matching). site_of: rollup block domain -> its site name.
    Order: default; matching providers in definition order (each followed by its
    implied ``provider_name`` and shared limits); their ``sources.<source>``; the site
    block; the ``mx_rollup=false`` domain block; site then domain ``sources.<source>``.
    """
    domain = _host(domain)
    options: dict[str, Any] = {}
    if shaping.default is not None:
        _merge_options(options, shaping.default.options)
    providers = _matching_providers(shaping, domain, mx_hosts)
    for prov in providers:
        _merge_options(options, prov.options)
        _merge_options(options, _provider_implied(prov, source, prov.source_selection_rate))
    for prov in providers:
        if source in prov.sources:
            _merge_options(options, prov.sources[source])
            rate = prov.source_selection_rates.get(source, prov.source_selection_rate)
            _merge_options(options, _provider_implied(prov, source, rate))
    site = _site_block(shaping, site_name, site_of)
    dom = shaping.domains.get(domain)
    for block in (site, dom):
        if block is not None:
            _merge_options(options, block.options)
    for block in (site, dom):
        if block is not None and source in block.sources:
            _merge_options(options, block.sources[source])
    rules = _applicable_rules(shaping, providers, site, dom)
    return ResolvedPath(config=apply_egress_options(options),
                        provider_name=providers[-1].name if providers else None,
                        providers=tuple(p.name for p in providers), rules=rules)


def _applicable_rules(shaping: Shaping, providers: Sequence[Provider], site: Block | None,
                      dom: Block | None) -> tuple[Rule, ...]:
    rules = list(shaping.default.automation) if shaping.default else []
    for prov in providers:
        rules.extend(prov.automation)
    for block in (site, dom):
        if block is not None:
            rules.extend(block.automation)
    return tuple(rules)


def match_rules(shaping: Shaping, *, domain: str, site_name: str, mx_hosts: Sequence[str],
                site_of: Mapping[str, str], response_line: str,
                is_internal: bool | None = None) -> list[Rule]:
    """The automation rules that fire for one delivery response.

    response_line: ``"<code> <c.s.d> <content>"`` on one line (``Response.single_line``).
    is_internal: whether we generated the response; None detects it from the text.
    Other arguments as ``resolve``. Returns matching rules in KumoMTA's order.
    """
    internal = is_internal_response(response_line) if is_internal is None else is_internal
    rules = shaping.automation_rules(domain=domain, site_name=site_name, mx_hosts=mx_hosts,
                                     site_of=site_of)
    return [rule for rule in rules if rule.matches(response_line, is_internal=internal)]


# --- loading ------------------------------------------------------------------------------

def _merge_block(acc: Block | None, new: Block) -> Block:
    if acc is None or new.replace_base:
        return Block(name=new.name, options=dict(new.options),
                     sources={k: dict(v) for k, v in new.sources.items()},
                     automation=new.automation, origin=new.origin)
    options = dict(acc.options)
    _merge_options(options, new.options)
    sources = {k: dict(v) for k, v in acc.sources.items()}
    for src, table in new.sources.items():
        _merge_options(sources.setdefault(src, {}), table)
    return Block(name=acc.name, options=options, sources=sources,
                 automation=acc.automation + new.automation, origin=acc.origin)


def _merge_provider(acc: Provider | None, new: Provider, *, replace_base: bool) -> Provider:
    if acc is None or replace_base:
        return new
    options = dict(acc.options)
    _merge_options(options, new.options)
    sources = {k: dict(v) for k, v in acc.sources.items()}
    for src, table in new.sources.items():
        _merge_options(sources.setdefault(src, {}), table)
    return Provider(
        name=acc.name, matches=acc.matches + new.matches, options=options,
        connection_limit=new.connection_limit or acc.connection_limit,
        max_message_rate=new.max_message_rate or acc.max_message_rate,
        source_selection_rate=new.source_selection_rate or acc.source_selection_rate,
        sources=sources,
        source_selection_rates={**acc.source_selection_rates, **new.source_selection_rates},
        automation=acc.automation + new.automation, origin=acc.origin)


def _error(where: str, key: str, reason: str) -> ConfigError:
    return ConfigError(f"{where} {key}: {reason}")


def _flag(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _error(where, key, f"expected true or false, got {value!r}")
    return value


def _table(where: str, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _error(where, key, f"expected a table, got {value!r}")
    return value


def _option(where: str, key: str, value: Any) -> Any:
    if isinstance(value, dict) and key not in EGRESS_OPTION_NAMES:
        raise _error(where, key, "not an egress path option; a domain name with dots must be "
                                 "quoted, as in [\"example.com\"]")
    return parse_egress_option(key, value, where=where)


def _regexes(where: str, value: Any) -> tuple[re.Pattern[str], ...]:
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, list) or not patterns or not all(
            isinstance(p, str) for p in patterns):
        raise _error(where, "regex", f"expected a string or a non-empty array of strings, "
                                     f"got {value!r}")
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise _error(where, "regex", f"invalid regular expression {pattern!r}: {exc}") from None
    return tuple(compiled)


def _action(where: str, item: Any) -> Action:
    if isinstance(item, str):
        try:
            kind = ActionKind(item)
        except ValueError:
            names = ", ".join(k.value for k in ActionKind)
            raise _error(where, "action",
                         f"unknown action {item!r} (expected one of {names})") from None
        if kind in (ActionKind.SET_CONFIG, ActionKind.SET_DOMAIN_CONFIG):
            raise _error(where, "action", f"write {item} as {{{item}={{name=..., value=...}}}}")
        return Action(kind=kind)
    if not isinstance(item, dict) or len(item) != 1:
        raise _error(where, "action", f"expected an action name or {{SetConfig={{name=..., "
                                      f"value=...}}}}, got {item!r}")
    ((key, body),) = item.items()
    if key not in (ActionKind.SET_CONFIG, ActionKind.SET_DOMAIN_CONFIG):
        raise _error(where, "action", f"unknown action {key!r} (only SetConfig and "
                                      f"SetDomainConfig take a table)")
    if not isinstance(body, dict) or set(body) != {"name", "value"} or not isinstance(
            body["name"], str):
        raise _error(where, "action",
                     f"{key} needs exactly name (a string) and value, got {body!r}")
    parsed = parse_egress_option(body["name"], body["value"], where=f"{where} action {key}")
    return Action(kind=ActionKind(key), name=body["name"], value=body["value"], parsed=parsed)


def _trigger(where: str, value: Any) -> ThrottleSpec | None:
    if value == "Immediate":
        return None
    if isinstance(value, dict) and set(value) == {"Threshold"} and isinstance(
            value["Threshold"], str):
        try:
            return ThrottleSpec.parse(value["Threshold"])
        except ValueError as exc:
            raise _error(where, "trigger", str(exc)) from None
    raise _error(where, "trigger",
                 f'expected "Immediate" or {{Threshold="N/period"}}, got {value!r}')


def _rule(where: str, raw: Any, *, scope: RuleScope, block: str) -> Rule:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {raw!r}")
    for key in raw:
        if key not in _RULE_KEYS:
            expected = ", ".join(sorted(_RULE_KEYS))
            raise _error(where, key, f"unknown rule field (expected {expected})")
    for key in ("regex", "action", "duration"):
        if key not in raw:
            raise _error(where, key, "required")
    actions = raw["action"] if isinstance(raw["action"], list) else [raw["action"]]
    if not actions:
        raise _error(where, "action", "at least one action is required")
    try:
        duration = parse_duration(raw["duration"])
    except ValueError as exc:
        raise _error(where, "duration", str(exc)) from None
    if duration <= 0:
        raise _error(where, "duration", "must be longer than zero")
    return Rule(regexes=_regexes(where, raw["regex"]),
                actions=tuple(_action(where, a) for a in actions),
                trigger=_trigger(where, raw.get("trigger", "Immediate")), duration=duration,
                match_internal=_flag(where, "match_internal", raw.get("match_internal", False)),
                scope=scope, block=block, origin=where)


def _parse_rules(path: str, label: str, value: Any, *, scope: RuleScope,
                 block: str) -> tuple[Rule, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{path}: {label}: expected an array of tables ([[...automation]])")
    return tuple(_rule(f"{path}: {label}[{i}]", raw, scope=scope, block=block)
                 for i, raw in enumerate(value, 1))


def _parse_sources(path: str, label: str, value: Any, *,
                   provider: bool) -> tuple[dict[str, dict[str, Any]], dict[str, ThrottleSpec]]:
    """``sources`` of a block: source -> parsed options (and provider selection rates)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {label} sources: expected a table of sources")
    sources: dict[str, dict[str, Any]] = {}
    rates: dict[str, ThrottleSpec] = {}
    for src, table in value.items():
        where = f'{path}: {label[:-1]}.sources."{src}"]'
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table of options, got {table!r}")
        sources[src] = {}
        for key, item in table.items():
            if provider and key == "provider_source_selection_rate":
                rates[src] = _spec(where, key, item, ThrottleSpec.parse)
            else:
                sources[src][key] = _option(where, key, item)
    return sources, rates


def _spec(where: str, key: str, value: Any, parse: Any) -> Any:
    if key != "provider_connection_limit" and not isinstance(value, str):
        raise _error(where, key, f"expected a throttle string such as '100/min', got {value!r}")
    try:
        return parse(value)
    except ValueError as exc:
        raise _error(where, key, str(exc)) from None


def _parse_block(path: str, name: str, table: Any) -> tuple[Block, bool]:
    """One file's ``["name"]`` table -> (fragment, mx_rollup)."""
    label = f'["{name}"]'
    where = f"{path}: {label}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    is_default = name == "default"
    options: dict[str, Any] = {}
    sources: dict[str, dict[str, Any]] = {}
    mx_rollup, replace_base = not is_default, False
    for key, value in table.items():
        if key in ("mx_rollup", "sources") and is_default:
            raise _error(where, key, "not allowed in the default block (KumoMTA ignores it)")
        if key == "mx_rollup":
            mx_rollup = _flag(where, key, value)
        elif key == "replace_base":
            replace_base = _flag(where, key, value)
        elif key == "sources":
            sources, _ = _parse_sources(path, label, value, provider=False)
        elif key != "automation":
            options[key] = _option(where, key, value)
    scope = (RuleScope.DEFAULT if is_default else
             RuleScope.SITE if mx_rollup else RuleScope.DOMAIN)
    domain = name if is_default else _host(name)
    rules = _parse_rules(path, f'["{name}".automation]', table.get("automation", []),
                         scope=scope, block=domain)
    return Block(name=domain, options=options, sources=sources, automation=rules,
                 replace_base=replace_base, origin=where), mx_rollup


def _parse_match(where: str, value: Any) -> tuple[ProviderMatch, ...]:
    if not isinstance(value, list):
        raise _error(where, "match", "expected an array such as [{MXSuffix=\".example.com\"}]")
    out = []
    for item in value:
        if not (isinstance(item, dict) and len(item) == 1):
            raise _error(where, "match", f"expected {{MXSuffix=..}}, {{DomainSuffix=..}} or "
                                         f"{{HostName=..}}, got {item!r}")
        ((kind, text),) = item.items()
        if kind not in _MATCH_KINDS or not isinstance(text, str) or not _host(text):
            raise _error(where, "match", f"expected {{MXSuffix=..}}, {{DomainSuffix=..}} or "
                                         f"{{HostName=..}} with a non-empty name, got {item!r}")
        out.append(ProviderMatch(kind=kind, value=_host(text)))
    return tuple(out)


def _parse_provider(path: str, name: str, table: Any) -> tuple[Provider, bool]:
    """One file's ``[provider."name"]`` table -> (fragment, replace_base)."""
    label = f'[provider."{name}"]'
    where = f"{path}: {label}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    fields: dict[str, Any] = {"options": {}}
    replace_base = False
    for key, value in table.items():
        if key == "match":
            fields["matches"] = _parse_match(where, value)
        elif key == "replace_base":
            replace_base = _flag(where, key, value)
        elif key == "sources":
            fields["sources"], fields["source_selection_rates"] = _parse_sources(
                path, label, value, provider=True)
        elif key == "provider_connection_limit":
            fields["connection_limit"] = _spec(where, key, value, LimitSpec.parse)
        elif key == "provider_max_message_rate":
            fields["max_message_rate"] = _spec(where, key, value, ThrottleSpec.parse)
        elif key == "provider_source_selection_rate":
            fields["source_selection_rate"] = _spec(where, key, value, ThrottleSpec.parse)
        elif key != "automation":
            fields["options"][key] = _option(where, key, value)
    rules = _parse_rules(path, f'[provider."{name}".automation]', table.get("automation", []),
                         scope=RuleScope.PROVIDER, block=name)
    return Provider(name=name, automation=rules, origin=where, **fields), replace_base


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomli.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomli.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


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

    @classmethod
    def load(cls, paths: Sequence[str | Path]) -> Shaping:
        """Load and merge shaping TOML files, later over earlier.

        paths: files in order (defaults first, local overrides, then a TSA overlay).
        Raises ConfigError naming file, table and key for anything invalid, and for a
        provider with no ``match`` once every file is merged.
        """
        default: Block | None = None
        domains: dict[str, Block] = {}
        rollups: list[Block] = []
        providers: dict[str, Provider] = {}
        for path in map(str, paths):
            tree = _read(path)
            for name, table in tree.items():
                if name == "provider":
                    if not isinstance(table, dict):
                        raise ConfigError(f"{path}: provider: expected [provider.\"name\"] tables")
                    for prov_name, prov_table in table.items():
                        prov, replace = _parse_provider(path, prov_name, prov_table)
                        providers[prov_name] = _merge_provider(providers.get(prov_name), prov,
                                                               replace_base=replace)
                    continue
                block, rollup = _parse_block(path, name, table)
                if name == "default":
                    default = _merge_block(default, block)
                elif rollup:
                    rollups.append(block)
                else:
                    domains[block.name] = _merge_block(domains.get(block.name), block)
        for prov in providers.values():
            if not prov.matches:
                raise _error(prov.origin, "match", "required: a provider without match rules "
                             "never applies (define match here or in an earlier file)")
        return cls(files=tuple(map(str, paths)), default=default,
                   domains=MappingProxyType(domains), rollups=tuple(rollups),
                   providers=MappingProxyType(providers))

    def rollup_domains(self) -> list[str]:
        """Domains of ``mx_rollup=true`` blocks: resolve their MX and pass ``site_of``."""
        return list(dict.fromkeys(block.name for block in self.rollups))

    def automation_rules(self, *, domain: str, site_name: str, mx_hosts: Sequence[str],
                         site_of: Mapping[str, str]) -> list[Rule]:
        """Every automation rule that applies to a destination, matching or not, in
        KumoMTA's order: default, matching providers, site, domain."""
        providers = _matching_providers(self, domain, mx_hosts)
        site = _site_block(self, site_name, site_of)
        return list(_applicable_rules(self, providers, site, self.domains.get(_host(domain))))
