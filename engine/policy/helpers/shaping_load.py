"""Shaping file loading: KumoMTA ``shaping.toml`` files -> merged, validated Shaping.

Exports:
    load_shaping(paths) -> Shaping    TOML files merged in order, validated at load

Format (``shared/reference/kumomta-shaping-tsa.md`` §1; KumoMTA
``crates/kumo-api-types/src/shaping.rs``): ``["default"]``, ``["domain"]`` blocks
(``mx_rollup`` true by default: the block applies to the domain's MX *site*, so every
domain with the same MX hosts shares it; ``mx_rollup=false`` keys it by the literal
name), ``["d".sources."src"]``, ``[provider."n"]`` with ``match=[{MXSuffix=..}, ...]``
and ``[[<block>.automation]]`` rules. Later files merge into earlier ones block by
block: the three ``additional_*`` maps merge key by key, every other key is replaced
whole; ``replace_base=true`` drops what earlier files said for that block. Everything
is validated at load; errors are ConfigError naming file, table and key. Resolution
of the merged data is in ``shaping``.

KumoMTA quirks fixed here:
    * A configured suffix's trailing dot is stripped too (only the MX host's was), so
      ``MXSuffix=".barracudanetworks.com."`` matches; suffixes and hosts are compared
      lowercased.
    * ``provider_max_message_rate`` from a later file is merged (``ProviderEntry::
      merge_from`` dropped it, and ``replace_base`` kept the old one).
    * A provider that still has no ``match`` after all files are merged is a
      ConfigError (its rules would never fire: the community ``provider."gmail"``
      block, whose base is called ``google``). A later file may add rules to a
      provider defined, with ``match``, in an earlier file.
    * ``sources`` in ``["default"]`` (ignored by KumoMTA) and ``mx_rollup`` in
      ``["default"]`` are errors rather than silently meaningless.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from engine.config.settings import ConfigError, read_toml
from engine.config.throttle_spec import LimitSpec, ThrottleSpec
from engine.config.units import parse_duration
from engine.policy.egress_options import (
    EGRESS_OPTION_NAMES,
    parse_egress_option,
)
from engine.policy.helpers.shaping import (
    Action,
    ActionKind,
    Block,
    Provider,
    ProviderMatch,
    Rule,
    RuleScope,
    Shaping,
    merge_block,
    merge_options,
    normalize_host,
)

__all__ = ["load_shaping"]

_MATCH_KINDS = ("MXSuffix", "DomainSuffix", "HostName")
_RULE_KEYS = {"regex", "action", "trigger", "duration", "match_internal"}


def _merge_provider(acc: Provider | None, new: Provider, *, replace_base: bool) -> Provider:
    if acc is None or replace_base:
        return new
    options = dict(acc.options)
    merge_options(options, new.options)
    sources = {k: dict(v) for k, v in acc.sources.items()}
    for src, table in new.sources.items():
        merge_options(sources.setdefault(src, {}), table)
    return Provider(
        name=acc.name,
        matches=acc.matches + new.matches,
        options=options,
        connection_limit=new.connection_limit or acc.connection_limit,
        max_message_rate=new.max_message_rate or acc.max_message_rate,
        source_selection_rate=new.source_selection_rate or acc.source_selection_rate,
        sources=sources,
        source_selection_rates={**acc.source_selection_rates, **new.source_selection_rates},
        automation=acc.automation + new.automation,
        origin=acc.origin,
    )


def _error(where: str, key: str, reason: str) -> ConfigError:
    return ConfigError(f"{where} {key}: {reason}")


def _flag(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _error(where, key, f"expected true or false, got {value!r}")
    return value


def _option(where: str, key: str, value: Any) -> Any:
    if isinstance(value, dict) and key not in EGRESS_OPTION_NAMES:
        raise _error(
            where,
            key,
            "not an egress path option; a domain name with dots must be "
            'quoted, as in ["example.com"]',
        )
    return parse_egress_option(key, value, where=where)


def _regexes(where: str, value: Any) -> tuple[re.Pattern[str], ...]:
    patterns = [value] if isinstance(value, str) else value
    if (
        not isinstance(patterns, list)
        or not patterns
        or not all(isinstance(p, str) for p in patterns)
    ):
        raise _error(
            where, "regex", f"expected a string or a non-empty array of strings, got {value!r}"
        )
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
            raise _error(
                where, "action", f"unknown action {item!r} (expected one of {names})"
            ) from None
        if kind in (ActionKind.SET_CONFIG, ActionKind.SET_DOMAIN_CONFIG):
            raise _error(where, "action", f"write {item} as {{{item}={{name=..., value=...}}}}")
        return Action(kind=kind)
    if not isinstance(item, dict) or len(item) != 1:
        raise _error(
            where,
            "action",
            f"expected an action name or {{SetConfig={{name=..., value=...}}}}, got {item!r}",
        )
    ((key, body),) = item.items()
    if key not in (ActionKind.SET_CONFIG, ActionKind.SET_DOMAIN_CONFIG):
        raise _error(
            where,
            "action",
            f"unknown action {key!r} (only SetConfig and SetDomainConfig take a table)",
        )
    if (
        not isinstance(body, dict)
        or set(body) != {"name", "value"}
        or not isinstance(body["name"], str)
    ):
        raise _error(
            where, "action", f"{key} needs exactly name (a string) and value, got {body!r}"
        )
    parsed = parse_egress_option(body["name"], body["value"], where=f"{where} action {key}")
    return Action(kind=ActionKind(key), name=body["name"], value=body["value"], parsed=parsed)


def _trigger(where: str, value: Any) -> ThrottleSpec | None:
    if value == "Immediate":
        return None
    if (
        isinstance(value, dict)
        and set(value) == {"Threshold"}
        and isinstance(value["Threshold"], str)
    ):
        try:
            return ThrottleSpec.parse(value["Threshold"])
        except ValueError as exc:
            raise _error(where, "trigger", str(exc)) from None
    raise _error(
        where, "trigger", f'expected "Immediate" or {{Threshold="N/period"}}, got {value!r}'
    )


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
    return Rule(
        regexes=_regexes(where, raw["regex"]),
        actions=tuple(_action(where, a) for a in actions),
        trigger=_trigger(where, raw.get("trigger", "Immediate")),
        duration=duration,
        match_internal=_flag(where, "match_internal", raw.get("match_internal", False)),
        scope=scope,
        block=block,
        origin=where,
    )


def _parse_rules(
    path: str, label: str, value: Any, *, scope: RuleScope, block: str
) -> tuple[Rule, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{path}: {label}: expected an array of tables ([[...automation]])")
    return tuple(
        _rule(f"{path}: {label}[{i}]", raw, scope=scope, block=block)
        for i, raw in enumerate(value, 1)
    )


def _parse_sources(
    path: str, label: str, value: Any, *, provider: bool
) -> tuple[dict[str, dict[str, Any]], dict[str, ThrottleSpec]]:
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
    scope = RuleScope.DEFAULT if is_default else RuleScope.SITE if mx_rollup else RuleScope.DOMAIN
    domain = name if is_default else normalize_host(name)
    rules = _parse_rules(
        path, f'["{name}".automation]', table.get("automation", []), scope=scope, block=domain
    )
    return Block(
        name=domain,
        options=options,
        sources=sources,
        automation=rules,
        replace_base=replace_base,
        origin=where,
    ), mx_rollup


def _parse_match(where: str, value: Any) -> tuple[ProviderMatch, ...]:
    if not isinstance(value, list):
        raise _error(where, "match", 'expected an array such as [{MXSuffix=".example.com"}]')
    out = []
    for item in value:
        if not (isinstance(item, dict) and len(item) == 1):
            raise _error(
                where,
                "match",
                f"expected {{MXSuffix=..}}, {{DomainSuffix=..}} or {{HostName=..}}, got {item!r}",
            )
        ((kind, text),) = item.items()
        if kind not in _MATCH_KINDS or not isinstance(text, str) or not normalize_host(text):
            raise _error(
                where,
                "match",
                f"expected {{MXSuffix=..}}, {{DomainSuffix=..}} or "
                f"{{HostName=..}} with a non-empty name, got {item!r}",
            )
        out.append(ProviderMatch(kind=kind, value=normalize_host(text)))
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
                path, label, value, provider=True
            )
        elif key == "provider_connection_limit":
            fields["connection_limit"] = _spec(where, key, value, LimitSpec.parse)
        elif key == "provider_max_message_rate":
            fields["max_message_rate"] = _spec(where, key, value, ThrottleSpec.parse)
        elif key == "provider_source_selection_rate":
            fields["source_selection_rate"] = _spec(where, key, value, ThrottleSpec.parse)
        elif key != "automation":
            fields["options"][key] = _option(where, key, value)
    rules = _parse_rules(
        path,
        f'[provider."{name}".automation]',
        table.get("automation", []),
        scope=RuleScope.PROVIDER,
        block=name,
    )
    return Provider(name=name, automation=rules, origin=where, **fields), replace_base


def load_shaping(paths: Sequence[str | Path]) -> Shaping:
    """Load and merge shaping TOML files, later over earlier.

    paths: files in order (defaults first, local overrides, then a TSA overlay).
    Raises ConfigError naming file, table and key for anything invalid (a refused
    option: "not supported by Nimbus"), and for a provider with no ``match`` once every
    file is merged.
    """
    default: Block | None = None
    domains: dict[str, Block] = {}
    rollups: list[Block] = []
    providers: dict[str, Provider] = {}
    for path in map(str, paths):
        tree = read_toml(path)
        for name, table in tree.items():
            if name == "provider":
                if not isinstance(table, dict):
                    raise ConfigError(f'{path}: provider: expected [provider."name"] tables')
                for prov_name, prov_table in table.items():
                    prov, replace = _parse_provider(path, prov_name, prov_table)
                    providers[prov_name] = _merge_provider(
                        providers.get(prov_name), prov, replace_base=replace
                    )
                continue
            block, rollup = _parse_block(path, name, table)
            if name == "default":
                default = merge_block(default, block)
            elif rollup:
                rollups.append(block)
            else:
                domains[block.name] = merge_block(domains.get(block.name), block)
    for prov in providers.values():
        if not prov.matches:
            raise _error(
                prov.origin,
                "match",
                "required: a provider without match rules "
                "never applies (define match here or in an earlier file)",
            )
    return Shaping(
        files=tuple(map(str, paths)),
        default=default,
        domains=MappingProxyType(domains),
        rollups=tuple(rollups),
        providers=MappingProxyType(providers),
    )
