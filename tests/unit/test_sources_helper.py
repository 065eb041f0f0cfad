"""SourcesHelper (sources.toml): sources, weighted pools, validation and errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.config.settings import BUNDLED_POLICY_DIR, ConfigError
from engine.policy.egress import DEFAULT_POOL, DEFAULT_SOURCE, EgressPool, EgressSource
from engine.policy.helpers.sources import SourcesHelper

SOURCES = """
[source."ip-1"]
source_address = "10.0.0.1"
ehlo_domain = "mta1.example.com"

[source."ip-2"]
source_address = "2001:db8::2"

[source."ip-3"]
source_address = "10.0.0.3"
ttl = "5m"

[pool."BestReputation"."ip-1"]

[pool."Medium"."ip-2"]
weight = 2

[pool."Medium"."ip-3"]
weight = 1

[pool."Medium"."ip-1"]
weight = 0

[pool."Warm"."unspecified"]
weight = 3
"""


def load(tmp_path: Path, text: str = SOURCES) -> SourcesHelper:
    path = tmp_path / "sources.toml"
    path.write_text(textwrap.dedent(text))
    return SourcesHelper.load(path)


def test_source_fields(tmp_path):
    """A [source] block becomes an EgressSource with its address and EHLO name."""
    assert load(tmp_path).source("ip-1") == EgressSource(
        name="ip-1", source_address="10.0.0.1", ehlo_domain="mta1.example.com"
    )


def test_source_ipv6_address(tmp_path):
    """An IPv6 source_address is accepted."""
    assert load(tmp_path).source("ip-2").source_address == "2001:db8::2"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing", None),
        ("unspecified", DEFAULT_SOURCE),
    ],
)
def test_source_lookup_missing_and_builtin(tmp_path, name, expected):
    """An undefined source is None; 'unspecified' is the built-in source."""
    assert load(tmp_path).source(name) == expected


@pytest.mark.parametrize(
    ("name", "entries"),
    [
        ("BestReputation", (("ip-1", 1),)),  # weight defaults to 1
        ("Medium", (("ip-2", 2), ("ip-3", 1), ("ip-1", 0))),  # file order; 0 kept
        ("Warm", (("unspecified", 3),)),  # built-in source allowed
    ],
)
def test_pool_entries_in_file_order(tmp_path, name, entries):
    """Pools list (source, weight) in file order, keeping weight-0 entries for the picker."""
    assert load(tmp_path).pool(name) == EgressPool(name=name, entries=entries)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing", None),
        ("unspecified", DEFAULT_POOL),
    ],
)
def test_pool_lookup_missing_and_builtin(tmp_path, name, expected):
    """An undefined pool is None; 'unspecified' is the built-in pool."""
    assert load(tmp_path).pool(name) == expected


def test_validate_accepts_defined_and_builtin(tmp_path):
    """validate passes when every referenced source and pool is defined or built in."""
    load(tmp_path).validate(["ip-1", "unspecified"], referenced_pools=["Medium", "unspecified"])


@pytest.mark.parametrize(
    ("sources", "pools", "message"),
    [
        (["ip-1", "ip-9", "ip-8"], [], "[source] ip-8, ip-9: referenced but not defined"),
        ([], ["Nope"], "[pool] Nope: referenced but not defined"),
    ],
)
def test_validate_names_undefined(tmp_path, sources, pools, message):
    """validate raises ConfigError naming the file and every undefined name."""
    with pytest.raises(ConfigError) as err:
        load(tmp_path).validate(sources, referenced_pools=pools)
    assert str(err.value).startswith(f"{tmp_path / 'sources.toml'}: {message}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[sources."a"]\n', "sources: unknown key"),
        ('[source."a"]\nsource_adress = "10.0.0.1"\n', "[source.a] source_adress: unknown key"),
        (
            '[source."a"]\nsource_address = "mta.example"\n',
            "[source.a] source_address: expected an IP address",
        ),
        ('[source."a"]\nehlo_domain = ""\n', "[source.a] ehlo_domain: expected a non-empty string"),
        ('[source."a"]\nttl = "soon"\n', "[source.a] ttl: "),
        ('[source."a"]\nremote_port = 70000\n', "[source.a] remote_port: expected a port"),
        ('[source."a"]\nname = "b"\n', "[source.a] name: must match the table name"),
        (
            '[source."a"]\nha_proxy_server = "10.0.0.9:5000"\n',
            "[source.a] ha_proxy_server: not supported by nimbus yet",
        ),
        (
            '[source."a"]\nsocks5_proxy_server = "10.0.0.9:1080"\n',
            "[source.a] socks5_proxy_server: not supported by nimbus yet",
        ),
        ('[source."unspecified"]\n', "[source] unspecified: 'unspecified' is built in"),
        ('[source."a"]\n[pool."P"."b"]\n', "[pool.P] b: source is not defined in [source]"),
        (
            '[source."a"]\n[pool."P"."a"]\nweight = -1\n',
            "[pool.P.a] weight: expected an integer >= 0",
        ),
        ('[source."a"]\n[pool."P"."a"]\nweight = 1.5\n', "[pool.P.a] weight: expected an integer"),
        ('[source."a"]\n[pool."P"."a"]\nwieght = 1\n', "[pool.P.a] wieght: unknown key"),
        ('[source."a"]\n[pool."P"]\na = 1\n', "[pool.P] a: expected a table"),
    ],
)
def test_load_errors_name_file_table_key(tmp_path, text, message):
    """A typo or bad value in sources.toml names the file, the table and the key."""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert str(err.value).startswith(f"{tmp_path / 'sources.toml'}: {message}")


def test_remote_port_follows_egress_source(tmp_path):
    """remote_port loads only once EgressSource carries it; until then it is refused."""
    text = '[source."a"]\nremote_port = 2525\n'
    if "remote_port" in EgressSource.__dataclass_fields__:
        assert load(tmp_path, text).source("a").remote_port == 2525
    else:
        with pytest.raises(ConfigError, match="remote_port: not supported by nimbus yet"):
            load(tmp_path, text)


def test_shipped_sources_toml_loads():
    """policy/sources.toml loads clean and its pools name defined sources."""
    helper = SourcesHelper.load(BUNDLED_POLICY_DIR / "sources.toml")
    for pool in helper.pools.values():
        helper.validate([name for name, _ in pool.entries])
    assert helper.pool("default") is not None
