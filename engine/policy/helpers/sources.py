"""The sources.toml helper (KumoMTA ``assets/policy-extras/sources.lua``): egress
sources and weighted pools for the ``get_egress_source`` / ``get_egress_pool`` events.

Exports:
    SourcesHelper                 a loaded sources.toml
    SourcesHelper.load(path) -> SourcesHelper        ConfigError names file/table/key
    SourcesHelper.source(name) -> EgressSource | None
    SourcesHelper.pool(name) -> EgressPool | None
    SourcesHelper.validate(referenced_sources, *, referenced_pools=()) -> None
    SourcesHelper.warmup                 source name -> WarmupSchedule (``warmup`` tables)
    SourcesHelper.validate_providers(known) -> None   warm-up provider names exist in shaping

File format (KumoMTA's)::

    [source."ip-1"]                  # any make_egress_source key nimbus implements
    source_address = "10.0.0.1"
    ehlo_domain = "mta1.example.com"

    [pool."BestReputation"."ip-1"]   # weight defaults to 1; 0 keeps the entry but
    weight = 2                       # the picker never selects it

    [source."ip-2".warmup]           # IP warm-up (engine/policy/helpers/warmup.py)
    start = 2025-06-02
    volumes = [500, 1000, 2000]

Source keys: ``source_address`` (an IP literal), ``ehlo_domain``, ``remote_port``
(only once ``EgressSource`` carries it) and ``ttl`` (a duration; the file is read
once, so there is nothing to expire unless ``EgressSource`` carries it). The proxy
and auto-suspend keys (``ha_proxy_*``, ``socks5_proxy_*``, ``suspend_when_*``) are
refused as "not supported by nimbus yet" rather than ignored. ``warmup`` is a
Nimbus addition (KumoMTA has no warm-up; its issues #326 and #594): the table's format is
in ``engine.policy.helpers.warmup``. ``unspecified`` is
the built-in source and pool (the kernel picks the address); it may be named in a
pool without being defined, and cannot be redefined.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config.settings import ConfigError
from engine.config.units import parse_duration
from engine.policy.egress import DEFAULT_POOL, DEFAULT_SOURCE, EgressPool, EgressSource
from engine.policy.helpers import load_document, table_name
from engine.policy.helpers.warmup import parse_warmup
from engine.policy.warmup import WarmupSchedule

__all__ = ["SourcesHelper"]

_UNSUPPORTED = frozenset(
    {
        "ha_proxy_server",
        "ha_proxy_source_address",
        "socks5_proxy_server",
        "socks5_proxy_source_address",
        "socks5_proxy_username",
        "socks5_proxy_password",
        "suspend_when_unplumbed",
        "suspend_when_proxy_unhealthy",
    }
)
_BUILT_IN = DEFAULT_SOURCE.name  # "unspecified", for both the source and the pool


def _ip(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError:
        raise ValueError(f"expected an IP address such as '10.0.0.1', got {value!r}") from None


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a port 1-65535, got {value!r}")
    return value


_SOURCE_KEYS = {
    "source_address": _ip,
    "ehlo_domain": _name,
    "remote_port": _port,
    "ttl": parse_duration,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SourcesHelper:
    """A loaded sources.toml.

    path: the file, named in errors. sources: ``[source.*]`` by name.
    pools: ``[pool.*]`` by name, entries ``(source, weight)`` in file order.
    warmup: warm-up schedules by source name (``[source.<name>.warmup]``).
    """

    path: str
    sources: Mapping[str, EgressSource] = field(default_factory=dict)
    pools: Mapping[str, EgressPool] = field(default_factory=dict)
    warmup: Mapping[str, WarmupSchedule] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> SourcesHelper:
        """Read and validate a sources.toml (or .json); raises ConfigError naming file/table/key."""
        return cls.from_tree(load_document(path), path=str(path))

    @classmethod
    def from_tree(cls, tree: Mapping[str, Any], *, path: str) -> SourcesHelper:
        """Validate an already-parsed document; ``path`` is used in error messages."""
        for key in tree:
            if key not in ("source", "pool"):
                raise ConfigError(f"{path}: {key}: unknown key (known keys: pool, source)")
        source_tables = _tables(tree.get("source", {}), path, "source")
        sources = {name: _parse_source(body, path, name) for name, body in source_tables.items()}
        warmup = {
            name: parse_warmup(body["warmup"], path=path, source=name)
            for name, body in source_tables.items()
            if "warmup" in body
        }
        pools = {
            name: _parse_pool(body, path, name, sources)
            for name, body in _tables(tree.get("pool", {}), path, "pool").items()
        }
        return cls(path=path, sources=sources, pools=pools, warmup=warmup)

    def source(self, name: str) -> EgressSource | None:
        """The ``get_egress_source`` answer: the named source, the built-in, or None."""
        if name == _BUILT_IN:
            return DEFAULT_SOURCE
        return self.sources.get(name)

    def pool(self, name: str) -> EgressPool | None:
        """The ``get_egress_pool`` answer: the named pool, the built-in, or None."""
        if name == _BUILT_IN:
            return DEFAULT_POOL
        return self.pools.get(name)

    def validate(
        self, referenced_sources: Iterable[str], *, referenced_pools: Iterable[str] = ()
    ) -> None:
        """Check that names used elsewhere (shaping, queues.toml) are defined here.

        Raises ConfigError naming this file and every undefined source or pool.
        """
        for kind, names, defined in (
            ("source", referenced_sources, self.sources),
            ("pool", referenced_pools, self.pools),
        ):
            missing = sorted({n for n in names if n != _BUILT_IN and n not in defined})
            if missing:
                raise ConfigError(
                    f"{self.path}: [{kind}] {', '.join(missing)}: referenced but "
                    f"not defined (defined: {', '.join(sorted(defined)) or 'none'})"
                )

    def validate_providers(self, known: Iterable[str]) -> None:
        """Check that every warm-up provider table names a provider of shaping.toml.

        Raises ConfigError naming this file, the table and the known providers.
        """
        names = set(known)
        for source, schedule in self.warmup.items():
            for provider in schedule.providers:
                if provider not in names:
                    table = table_name("source", source, "warmup", "provider", provider)
                    raise ConfigError(
                        f"{self.path}: [{table}]: no such provider in shaping "
                        f"(known: {', '.join(sorted(names)) or 'none'})"
                    )


def _tables(value: Any, path: str, table: str) -> Mapping[str, Mapping[str, Any]]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: {table}: expected a table")
    for name, body in value.items():
        if not isinstance(body, Mapping):
            raise ConfigError(f"{path}: [{table}] {name}: expected a table, got {body!r}")
        if name == _BUILT_IN:
            raise ConfigError(
                f"{path}: [{table}] {name}: '{_BUILT_IN}' is built in and cannot be configured"
            )
    return value


def _parse_source(body: Mapping[str, Any], path: str, name: str) -> EgressSource:
    where = f"{path}: [{table_name('source', name)}]"
    carried = {f.name for f in dataclasses.fields(EgressSource)}
    kw: dict[str, Any] = {}
    for key, value in body.items():
        if key == "warmup":  # parsed by parse_warmup
            continue
        if key == "name":
            if value != name:
                raise ConfigError(f"{where} name: must match the table name {name!r} if given")
            continue
        if key in _UNSUPPORTED:
            raise ConfigError(f"{where} {key}: not supported by nimbus yet")
        convert = _SOURCE_KEYS.get(key)
        if convert is None:
            known = ", ".join(sorted({*_SOURCE_KEYS, "warmup"}))
            raise ConfigError(f"{where} {key}: unknown key (known keys: {known})")
        try:
            converted = convert(value)
        except ValueError as exc:
            raise ConfigError(f"{where} {key}: {exc}") from None
        if key in carried:
            kw[key] = converted
        elif key != "ttl":  # ttl only bounds a cache; the file is static once loaded
            raise ConfigError(f"{where} {key}: not supported by nimbus yet")
    return EgressSource(name=name, **kw)


def _parse_pool(
    body: Mapping[str, Any], path: str, name: str, sources: Mapping[str, EgressSource]
) -> EgressPool:
    where = f"{path}: [{table_name('pool', name)}]"
    entries = []
    for source, entry in body.items():
        if not isinstance(entry, Mapping):
            raise ConfigError(
                f"{where} {source}: expected a table such as "
                f"[{table_name('pool', name, source)}] weight = 1"
            )
        if source != _BUILT_IN and source not in sources:
            defined = ", ".join(sorted(sources)) or "none"
            raise ConfigError(
                f"{where} {source}: source is not defined in [source] (defined: {defined})"
            )
        entry_where = f"{path}: [{table_name('pool', name, source)}]"
        for key in entry:
            if key != "weight":
                raise ConfigError(f"{entry_where} {key}: unknown key (known keys: weight)")
        weight = entry.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise ConfigError(f"{entry_where} weight: expected an integer >= 0, got {weight!r}")
        entries.append((source, weight))
    return EgressPool(name=name, entries=tuple(entries))
