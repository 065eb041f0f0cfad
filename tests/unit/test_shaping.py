"""Traffic shaping: egress path options, shaping.toml loading, merging, resolution, rules."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from engine.config.settings import BUNDLED_POLICY_DIR, ConfigError
from engine.config.throttle_spec import LimitSpec, ThrottleSpec
from engine.policy.egress import EgressPathConfig, IpLookupStrategy, KeySource, TlsMode
from engine.policy.egress_options import egress_path_from_options
from engine.policy.helpers.shaping import (
    ActionKind,
    ProviderMatch,
    RuleScope,
    Shaping,
    is_internal_response,
    match_rules,
    provider_matches,
    resolve,
)
from engine.policy.helpers.shaping_load import load_shaping

WHERE = 'f.toml: ["d"]'


@pytest.fixture
def load(tmp_path: Path):
    """Write each TOML text to its own file (file1.toml, file2.toml, ...) and load them."""

    def loader(*texts: str) -> Shaping:
        paths = []
        for i, text in enumerate(texts, 1):
            path = tmp_path / f"file{i}.toml"
            path.write_text(textwrap.dedent(text))
            paths.append(path)
        return load_shaping(paths)

    return loader


def path_for(
    shaping: Shaping,
    domain: str = "example.com",
    *,
    source: str = "src",
    site: str = "",
    mx: tuple[str, ...] = (),
    site_of: dict | None = None,
):
    return resolve(
        shaping, domain=domain, source=source, site_name=site, mx_hosts=mx, site_of=site_of or {}
    )


# --- egress path options ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "attr", "expected"),
    [
        ({"connection_limit": 5}, "connection_limit", 5),
        ({"connection_limit": "1,000"}, "connection_limit", 1000),
        ({"connection_limit": "local:5"}, "connection_limit_local", True),
        ({"max_message_rate": "100/s"}, "max_message_rate", ThrottleSpec(limit=100, period=1)),
        (
            {"max_connection_rate": "local:10/min"},
            "max_connection_rate",
            ThrottleSpec(limit=10, period=60, local=True),
        ),
        (
            {"source_selection_rate": "500/d,max_burst=1"},
            "source_selection_rate",
            ThrottleSpec(limit=500, period=86400, max_burst=1),
        ),
        (
            {"additional_connection_limits": {"x": "local:3"}},
            "additional_connection_limits",
            {"x": LimitSpec(limit=3, local=True)},
        ),
        (
            {"additional_message_rate_throttles": {"x": "5/h"}},
            "additional_message_rate_throttles",
            {"x": ThrottleSpec(limit=5, period=3600)},
        ),
        ({"enable_tls": "RequiredInsecure"}, "enable_tls", TlsMode.REQUIRED_INSECURE),
        ({"ip_lookup_strategy": "Ipv4Only"}, "ip_lookup_strategy", IpLookupStrategy.IPV4_ONLY),
        ({"idle_timeout": "60s"}, "idle_timeout", 60.0),
        ({"data_timeout": "2 minutes"}, "data_timeout", 120.0),
        ({"connect_timeout": 15}, "connect_timeout", 15.0),
        ({"remember_broken_tls": "3 days"}, "remember_broken_tls", 259200.0),
        ({"max_deliveries_per_connection": "1_000"}, "max_deliveries_per_connection", 1000),
        ({"enable_dane": True}, "enable_dane", True),
        ({"prohibited_hosts": ["10.0.0.0/8", "::1"]}, "prohibited_hosts", ("10.0.0.0/8", "::1")),
        ({"skip_hosts": ["192.0.2.1"]}, "skip_hosts", ("192.0.2.1",)),
        (
            {"smtp_auth_plain_password": {"key_data": "pw"}},
            "smtp_auth_plain_password",
            KeySource(key_data="pw"),
        ),
        (
            {"smtp_auth_plain_password": "/etc/pw"},
            "smtp_auth_plain_password",
            KeySource(path="/etc/pw"),
        ),
        ({"smtp_port": 2525}, "smtp_port", 2525),
    ],
)
def test_egress_options_parse(options, attr, expected):
    """Each option is converted to its typed EgressPathConfig field."""
    assert getattr(egress_path_from_options(options, where=WHERE), attr) == expected


def test_egress_options_default_is_code_default():
    """No options gives KumoMTA's code defaults."""
    assert egress_path_from_options({}, where=WHERE) == EgressPathConfig()


def test_egress_config_derived_shutdown_timeout():
    """Unset system_shutdown_timeout is the sum of the per-message timeouts."""
    cfg = egress_path_from_options({"data_timeout": "30s", "data_dot_timeout": "60s"}, where=WHERE)
    assert cfg.effective_system_shutdown_timeout == 300 + 300 + 30 + 60


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"conection_limit": 5}, "unknown egress path option.*'connection_limit'"),
        ({"suspended": True}, "unknown egress path option"),
        ({"connection_limit": 0}, "1 or larger"),
        ({"connection_limit": True}, "expected a limit"),
        ({"max_message_rate": "100/fortnight"}, "unknown period"),
        ({"max_message_rate": 100}, "throttle string"),
        ({"enable_tls": "Sometimes"}, "expected one of Opportunistic"),
        ({"enable_dane": "yes"}, "true or false"),
        ({"idle_timeout": "soon"}, "duration"),
        ({"max_deliveries_per_connection": 0}, "1 or larger"),
        ({"max_ready": -1}, "negative"),
        ({"smtp_port": 70000}, "port"),
        ({"prohibited_hosts": "127.0.0.1"}, "list of CIDRs"),
        ({"prohibited_hosts": ["nope"]}, "not an IP address or CIDR"),
        ({"additional_connection_limits": {"x": 0}}, "'x'.*1 or larger"),
        (
            {"smtp_auth_plain_password": {"key_data": "a", "vault_mount": "m", "vault_path": "p"}},
            "exactly one",
        ),
        ({"tls_certificate": {"file": "x"}}, "unknown key source"),
    ],
)
def test_egress_options_reject(options, reason):
    """A bad key or value is a ConfigError naming where, the key and the reason."""
    key = next(iter(options))
    with pytest.raises(ConfigError, match=re.escape(f"{WHERE} {key}: ") + f".*{reason}"):
        egress_path_from_options(options, where=WHERE)


def test_key_source_repr_hides_secrets():
    """Inline key data never appears in a repr (and so never in a log line)."""
    assert "hunter2" not in repr(KeySource(key_data="hunter2"))


# --- provider matching ------------------------------------------------------------------


def _m(kind: str, value: str) -> ProviderMatch:
    return ProviderMatch(kind=kind, value=value.lower().rstrip("."))


@pytest.mark.parametrize(
    ("matches", "domain", "mx", "expected"),
    [
        (
            [_m("MXSuffix", ".google.com")],
            "gmail.com",
            ["gmail-smtp-in.l.google.com.", "alt1.gmail-smtp-in.l.google.com"],
            True,
        ),
        (
            [_m("MXSuffix", ".google.com")],
            "mixed.com",
            ["aspmx.l.google.com", "mx.other.net"],
            False,
        ),
        (
            [_m("MXSuffix", ".google.com"), _m("MXSuffix", ".googlemail.com")],
            "corp.com",
            ["aspmx.l.google.com", "aspmx2.googlemail.com"],
            True,
        ),
        ([_m("MXSuffix", ".google.com")], "x.com", ["ASPMX.L.GOOGLE.COM."], True),
        ([_m("MXSuffix", ".google.com")], "x.com", ["google.com"], False),
        ([_m("HostName", "mta5.am0.yahoodns.net")], "yahoo.com", ["mta5.am0.yahoodns.net."], True),
        (
            [_m("HostName", "mta5.am0.yahoodns.net")],
            "yahoo.com",
            ["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net"],
            False,
        ),
        (
            [_m("HostName", "mta5.am0.yahoodns.net"), _m("MXSuffix", ".yahoodns.net")],
            "yahoo.com",
            ["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net"],
            True,
        ),
        (
            [_m("DomainSuffix", ".outlook.com"), _m("MXSuffix", ".nomatch.test")],
            "eu.outlook.com",
            ["mx.elsewhere.net"],
            True,
        ),
        ([_m("DomainSuffix", ".outlook.com")], "outlook.com", ["x.outlook.com"], False),
        ([_m("DomainSuffix", ".outlook.com")], "x.outlook.com.", [], True),
        (
            [_m("MXSuffix", ".barracudanetworks.com.")],
            "corp.com",
            ["d1.ess.barracudanetworks.com."],
            True,
        ),
        ([_m("MXSuffix", ".google.com")], "nomx.com", [], False),
        ([], "gmail.com", ["gmail-smtp-in.l.google.com"], False),
    ],
)
def test_provider_matches(matches, domain, mx, expected):
    """DomainSuffix wins outright; otherwise every MX host must match an MX rule."""
    assert provider_matches(matches, domain, mx) is expected


def test_provider_suffix_with_trailing_dot_matches_after_load(load):
    """KumoMTA quirk fixed: a configured suffix ending in '.' still matches MX hosts."""
    shaping = load("""
        [provider."barracuda"]
        match = [{MXSuffix = ".barracudanetworks.com."}]
        max_deliveries_per_connection = 15
    """)
    resolved = path_for(shaping, "corp.com", mx=("d1.ess.barracudanetworks.com.",))
    assert resolved.provider_name == "barracuda"


# --- 7-step resolution order ------------------------------------------------------------


def _steps_toml(steps: set[int]) -> str:
    """A shaping file where each present step sets ehlo_domain to its own name."""
    parts = []
    if 1 in steps:
        parts.append('["default"]\nehlo_domain = "step1"\n')
    if steps & {2, 3}:
        parts.append(
            '[provider."p"]\nmatch = [{MXSuffix = ".mx.test"}]\n'
            + ('ehlo_domain = "step2"\n' if 2 in steps else "")
        )
    if 3 in steps:
        parts.append('[provider."p".sources."src"]\nehlo_domain = "step3"\n')
    if 4 in steps:
        parts.append('["sitemate.com"]\nehlo_domain = "step4"\n')
    if steps & {5, 7}:
        parts.append(
            '["example.com"]\nmx_rollup = false\n'
            + ('ehlo_domain = "step5"\n' if 5 in steps else "")
        )
    if 6 in steps:
        parts.append('["sitemate.com".sources."src"]\nehlo_domain = "step6"\n')
    if 7 in steps:
        parts.append('["example.com".sources."src"]\nehlo_domain = "step7"\n')
    return "".join(parts)


@pytest.mark.parametrize(
    ("steps", "winner"),
    [
        ((), None),
        ((1,), "step1"),
        ((1, 2), "step2"),
        ((1, 2, 3), "step3"),
        ((1, 2, 3, 4), "step4"),
        ((1, 2, 3, 4, 5), "step5"),
        ((1, 2, 3, 4, 5, 6), "step6"),
        ((1, 2, 3, 4, 5, 6, 7), "step7"),
        ((1, 4), "step4"),
        ((2, 5), "step5"),
        ((4, 5), "step5"),
        ((5, 6), "step6"),
        ((3, 4), "step4"),
        ((6, 7), "step7"),
        ((7, 1, 2, 3), "step7"),
    ],
)
def test_resolution_order(load, steps, winner):
    """default < provider < provider source < site < domain < site source < domain source."""
    shaping = load(_steps_toml(set(steps)))
    resolved = path_for(
        shaping,
        "example.com",
        site="mx.site.test",
        mx=("a.mx.test",),
        site_of={"sitemate.com": "mx.site.test"},
    )
    assert resolved.config.ehlo_domain == winner


def test_resolution_sources_only_for_their_source(load):
    """A sources."src" block does not apply to another egress source."""
    shaping = load(_steps_toml({1, 2, 3, 4, 5, 6, 7}))
    resolved = path_for(
        shaping,
        "example.com",
        source="other",
        site="mx.site.test",
        mx=("a.mx.test",),
        site_of={"sitemate.com": "mx.site.test"},
    )
    assert resolved.config.ehlo_domain == "step5"


def test_unset_options_keep_code_defaults(load):
    """Options no block sets keep KumoMTA's code defaults."""
    shaping = load('["default"]\nconnection_limit = 10\n')
    config = path_for(shaping).config
    assert (config.connection_limit, config.max_deliveries_per_connection) == (10, 1024)


# --- site rollup --------------------------------------------------------------------------


def test_site_block_applies_to_other_domain_with_same_site(load):
    """A rollup block applies to any domain whose MX site is the block domain's site."""
    shaping = load('["gmail.com"]\nconnection_limit = 7\n')
    site = "(alt1|alt2)?.gmail-smtp-in.l.google.com"
    resolved = path_for(shaping, "googlemail.com", site=site, site_of={"gmail.com": site})
    assert resolved.config.connection_limit == 7


def test_site_block_not_applied_to_other_site(load):
    """A rollup block does not apply to a domain on another site."""
    shaping = load('["gmail.com"]\nconnection_limit = 7\n')
    resolved = path_for(
        shaping,
        "other.com",
        site="mx.other.com",
        site_of={"gmail.com": "gmail-smtp-in.l.google.com"},
    )
    assert resolved.config.connection_limit == 32


def test_rollup_block_without_site_applies_nowhere(load):
    """A rollup block whose domain has no site (DNS failed, null MX) is skipped."""
    shaping = load('["gmail.com"]\nconnection_limit = 7\n')
    assert path_for(shaping, "gmail.com", site="s").config.connection_limit == 32


def test_rollup_domains_lists_each_once(load):
    """rollup_domains lists every mx_rollup=true block domain once, in load order."""
    shaping = load('["b.com"]\n["a.com"]\n["c.com"]\nmx_rollup = false\n', '["b.com"]\n')
    assert shaping.rollup_domains() == ["b.com", "a.com"]


def test_mx_rollup_false_keys_by_literal_name(load):
    """An mx_rollup=false block applies to its own name whatever the site."""
    shaping = load(
        '["http://127.0.0.1:8008.tsa.kumomta"]\nmx_rollup = false\nconnection_limit = "local:5"\n'
    )
    config = path_for(shaping, "http://127.0.0.1:8008.tsa.kumomta", site="whatever").config
    assert (config.connection_limit, config.connection_limit_local) == (5, True)


def test_providers_skip_non_dns_names(load):
    """Provider rules only consider DNS names, not hook queues such as the TSA URL."""
    shaping = load('[provider."all"]\nmatch = [{DomainSuffix = "kumomta"}]\nconnection_limit = 1\n')
    assert path_for(shaping, "http://127.0.0.1:8008.tsa.kumomta").provider_name is None


# --- provider limits --------------------------------------------------------------------


def test_provider_limits_become_named_per_source_limits(load):
    """provider_* keys become additional limits named by provider and source."""
    shaping = load("""
        [provider."Office 365"]
        match = [{DomainSuffix = ".outlook.com"}]
        provider_connection_limit = 10
        provider_max_message_rate = "120/s"
        [provider."Office 365".sources."new-source"]
        provider_source_selection_rate = "500/d,max_burst=1"
    """)
    plain = path_for(shaping, "x.outlook.com", source="ip-1").config
    assert dict(plain.additional_connection_limits) == {
        "shaping-provider-Office 365-ip-1-limit": LimitSpec(limit=10)
    }
    assert dict(plain.additional_message_rate_throttles) == {
        "shaping-provider-Office 365-ip-1-rate": ThrottleSpec(limit=120, period=1)
    }
    assert dict(plain.additional_source_selection_rates) == {}
    sourced = path_for(shaping, "x.outlook.com", source="new-source").config
    assert dict(sourced.additional_source_selection_rates) == {
        "shaping-provider-Office 365-new-source-selection-rate": ThrottleSpec(
            limit=500, period=86400, max_burst=1
        )
    }
    assert sourced.provider_name == "Office 365"


def test_provider_max_message_rate_merges_from_later_file(load):
    """KumoMTA quirk fixed: a later file's provider_max_message_rate is not dropped."""
    shaping = load(
        '[provider."g"]\nmatch = [{MXSuffix = ".g.test"}]\nprovider_max_message_rate = "10/s"\n',
        '[provider."g"]\nprovider_max_message_rate = "5/s"\n',
    )
    config = path_for(shaping, "d.com", source="s", mx=("mx.g.test",)).config
    assert dict(config.additional_message_rate_throttles) == {
        "shaping-provider-g-s-rate": ThrottleSpec(limit=5, period=1)
    }


def test_provider_rules_added_by_later_file(load):
    """A later file may add automation rules to a provider matched in an earlier file."""
    shaping = load(
        '[provider."g"]\nmatch = [{MXSuffix = ".g.test"}]\n',
        '[[provider."g".automation]]\nregex = "x"\naction = "Suspend"\nduration = "1h"\n',
    )
    assert len(shaping.providers["g"].automation) == 1


def test_provider_without_match_rejected(load):
    """A provider that has no match after all files (community "gmail") is a ConfigError."""
    with pytest.raises(ConfigError, match=r'file1\.toml: \[provider\."gmail"\] match: required'):
        load('[[provider."gmail".automation]]\nregex = "x"\naction = "Suspend"\nduration = "1h"\n')


# --- merging across files -----------------------------------------------------------------


def test_merge_replaces_plain_keys(load):
    """A later file's plain option replaces the earlier value."""
    shaping = load(
        '["default"]\nconnection_limit = 10\nmax_ready = 5\n', '["default"]\nconnection_limit = 3\n'
    )
    config = path_for(shaping).config
    assert (config.connection_limit, config.max_ready) == (3, 5)


@pytest.mark.parametrize(
    "key",
    [
        "additional_connection_limits",
        "additional_message_rate_throttles",
        "additional_source_selection_rates",
    ],
)
def test_merge_additional_maps_key_by_key(load, key):
    """The three additional_* maps merge key by key across files."""
    value = (lambda v: v) if key == "additional_connection_limits" else (lambda v: f'"{v}/h"')
    shaping = load(
        f'["example.com"]\nmx_rollup = false\n{key} = {{first = {value(10)}}}\n',
        f'["example.com"]\nmx_rollup = false\n{key} = {{second = {value(32)}}}\n',
    )
    assert set(getattr(path_for(shaping).config, key)) == {"first", "second"}


def test_merge_non_additional_table_replaced(load):
    """Other table-valued options (a key source) are replaced whole, not merged."""
    shaping = load(
        '["default"]\nsmtp_auth_plain_password = "/run/secrets/pw"\n',
        '["default"]\nsmtp_auth_plain_password = {key_data = "k"}\n',
    )
    assert path_for(shaping).config.smtp_auth_plain_password == KeySource(key_data="k")


def test_replace_base_discards_earlier_block(load):
    """replace_base=true drops what earlier files said for that block, additional maps too."""
    shaping = load(
        '["example.com"]\nmx_rollup = false\nconnection_limit = 3\n'
        "additional_connection_limits = {first = 10}\n",
        '["example.com"]\nmx_rollup = false\nreplace_base = true\nmax_ready = 7\n'
        "additional_connection_limits = {second = 32}\n",
    )
    config = path_for(shaping).config
    assert (config.connection_limit, config.max_ready) == (32, 7)
    assert set(config.additional_connection_limits) == {"second"}


def test_replace_base_only_for_that_block(load):
    """replace_base in one block leaves other blocks' earlier settings alone."""
    shaping = load(
        '["default"]\nmax_ready = 9\n["example.com"]\nmx_rollup = false\nconnection_limit = 3\n',
        '["example.com"]\nmx_rollup = false\nreplace_base = true\n',
    )
    config = path_for(shaping).config
    assert (config.connection_limit, config.max_ready) == (32, 9)


def test_replace_base_does_not_wipe_default_at_resolution(load):
    """KumoMTA quirk fixed: replace_base never discards default or provider settings."""
    shaping = load(
        '["default"]\nmax_ready = 9\n["example.com"]\nmx_rollup = false\n'
        "replace_base = true\nconnection_limit = 3\n"
    )
    config = path_for(shaping).config
    assert (config.connection_limit, config.max_ready) == (3, 9)


def test_merge_sources_and_rules(load):
    """Sources merge per source and automation rules accumulate across files."""
    rule = '[["default".automation]]\nregex = "{}"\naction = "Suspend"\nduration = "1h"\n'
    block = '["example.com"]\nmx_rollup = false\n["example.com".sources."s"]\n'
    shaping = load(
        block + "max_ready = 4\n" + rule.format("a"),
        block + "connection_limit = 2\n" + rule.format("b"),
    )
    config = path_for(shaping, source="s").config
    assert (config.max_ready, config.connection_limit) == (4, 2)
    assert [r.regexes[0].pattern for r in shaping.default.automation] == ["a", "b"]


# --- automation rules -------------------------------------------------------------------


def test_rule_parsed(load):
    """A full rule parses into regexes, actions, trigger, duration and flags."""
    shaping = load("""
        [["default".automation]]
        regex = ['''Messages from \\d+ deferred''', "busy"]
        action = [{SetConfig = {name = "max_message_rate", value = "1/minute"}},
                  {SetConfig = {name = "connection_limit", value = 1}}, "Suspend"]
        trigger = {Threshold = "2/hr"}
        duration = "90m"
        match_internal = true
    """)
    (rule,) = shaping.default.automation
    assert [rx.pattern for rx in rule.regexes] == [r"Messages from \d+ deferred", "busy"]
    assert [a.kind for a in rule.actions] == [
        ActionKind.SET_CONFIG,
        ActionKind.SET_CONFIG,
        ActionKind.SUSPEND,
    ]
    assert rule.actions[0].parsed == ThrottleSpec(limit=1, period=60)
    assert rule.actions[1].parsed == LimitSpec(limit=1)
    assert (rule.trigger, rule.duration, rule.match_internal) == (
        ThrottleSpec(limit=2, period=3600),
        5400.0,
        True,
    )
    assert (rule.scope, rule.rollup) == (RuleScope.DEFAULT, True)


@pytest.mark.parametrize(
    ("action", "kind"),
    [
        ('"Suspend"', ActionKind.SUSPEND),
        ('"SuspendTenant"', ActionKind.SUSPEND_TENANT),
        ('"SuspendCampaign"', ActionKind.SUSPEND_CAMPAIGN),
        ('"Bounce"', ActionKind.BOUNCE),
        ('"BounceTenant"', ActionKind.BOUNCE_TENANT),
        ('"BounceCampaign"', ActionKind.BOUNCE_CAMPAIGN),
        (
            '{SetDomainConfig = {name = "enable_tls", value = "Disabled"}}',
            ActionKind.SET_DOMAIN_CONFIG,
        ),
    ],
)
def test_rule_action_kinds(load, action, kind):
    """Each KumoMTA action name parses to its kind."""
    shaping = load(f'[["default".automation]]\nregex = "x"\naction = {action}\nduration = "1h"\n')
    assert shaping.default.automation[0].actions[0].kind is kind


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [
        ('"2 hours"', 7200.0),
        ('"90m"', 5400.0),
        ('"30 days"', 2592000.0),
        ("600", 600.0),
        ('"1 hour 30 minutes"', 5400.0),
    ],
)
def test_rule_duration_forms(load, duration, seconds):
    """Rule durations accept humantime strings and plain seconds."""
    shaping = load(
        f'[["default".automation]]\nregex = "x"\naction = "Suspend"\nduration = {duration}\n'
    )
    assert shaping.default.automation[0].duration == seconds


RULE_TABLE = '["gmail.com".automation][2]'


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        ('action = "Suspend"\nduration = "1h"', "regex", "required"),
        ('regex = "x"\nduration = "1h"', "action", "required"),
        ('regex = "x"\naction = "Suspend"', "duration", "required"),
        (
            'regex = "x("\naction = "Suspend"\nduration = "1h"',
            "regex",
            "invalid regular expression",
        ),
        ('regex = ["ok", "[z"]\naction = "Suspend"\nduration = "1h"', "regex", "invalid regular"),
        ('regex = []\naction = "Suspend"\nduration = "1h"', "regex", "non-empty array"),
        ('regex = 5\naction = "Suspend"\nduration = "1h"', "regex", "expected a string"),
        ('regex = "x"\naction = "Pause"\nduration = "1h"', "action", "unknown action 'Pause'"),
        ('regex = "x"\naction = []\nduration = "1h"', "action", "at least one"),
        ('regex = "x"\naction = "SetConfig"\nduration = "1h"', "action", "name=..., value="),
        ('regex = "x"\naction = {Suspend = {}}\nduration = "1h"', "action", "unknown action"),
        (
            'regex = "x"\naction = {SetConfig = {name = "connection_limit"}}\nduration = "1h"',
            "action",
            "exactly name",
        ),
        (
            'regex = "x"\naction = {SetConfig = {name = "conection_limit", value = 1}}\n'
            'duration = "1h"',
            "action SetConfig conection_limit",
            "unknown egress path option",
        ),
        (
            'regex = "x"\naction = {SetConfig = {name = "max_message_rate", value = "fast"}}\n'
            'duration = "1h"',
            "action SetConfig max_message_rate",
            "limit/period",
        ),
        ('regex = "x"\naction = "Suspend"\nduration = "soon"', "duration", "duration"),
        ('regex = "x"\naction = "Suspend"\nduration = "0s"', "duration", "longer than zero"),
        (
            'regex = "x"\naction = "Suspend"\nduration = "1h"\ntrigger = "Later"',
            "trigger",
            "Immediate",
        ),
        (
            'regex = "x"\naction = "Suspend"\nduration = "1h"\ntrigger = {Threshold = "2/fortnight"}',
            "trigger",
            "unknown period",
        ),
        (
            'regex = "x"\naction = "Suspend"\nduration = "1h"\nmatch_internal = "yes"',
            "match_internal",
            "true or false",
        ),
        (
            'regex = "x"\naction = "Suspend"\nduration = "1h"\nfilter = "y"',
            "filter",
            "unknown rule field",
        ),
    ],
)
def test_rule_invalid(load, body, key, reason):
    """Each invalid rule field is a ConfigError naming file, table (with index) and key."""
    good = '[["gmail.com".automation]]\nregex = "ok"\naction = "Suspend"\nduration = "1h"\n'
    with pytest.raises(ConfigError) as info:
        load(good + '[["gmail.com".automation]]\n' + body + "\n")
    assert f"file1.toml: {RULE_TABLE} {key}: " in str(info.value)
    assert reason in str(info.value)


def test_rule_error_names_file(load):
    """The error names the file that holds the bad rule (the second of two)."""
    with pytest.raises(ConfigError, match=r"file2\.toml: \[provider\.\"g\"\.automation\]\[1\]"):
        load(
            '[provider."g"]\nmatch = [{MXSuffix = ".g.test"}]\n',
            '[[provider."g".automation]]\nregex = "("\naction = "Suspend"\nduration = "1h"\n',
        )


# --- load-time errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '["gmail.com"]\nconection_limit = 5\n',
            r'file1\.toml: \["gmail\.com"\] conection_limit: unknown egress path option',
        ),
        (
            "[gmail.com]\nconnection_limit = 5\n",
            r'file1\.toml: \["gmail"\] com: not an egress path option; .*quoted',
        ),
        (
            '["gmail.com".sources."ip-1"]\nmax_message_rate = "lots"\n',
            r'file1\.toml: \["gmail\.com"\.sources\."ip-1"\] max_message_rate: ',
        ),
        (
            '[provider."p"]\nmatch = [{MXSuffix = ".p.test"}]\nprovider_connection_limit = 0\n',
            r'file1\.toml: \[provider\."p"\] provider_connection_limit: .*1 or larger',
        ),
        (
            '[provider."p"]\nmatch = [{MxSuffix = ".p.test"}]\n',
            r'file1\.toml: \[provider\."p"\] match: expected',
        ),
        ('[provider."p"]\nmatch = [{MXSuffix = ""}]\n', r'\[provider\."p"\] match: .*non-empty'),
        (
            '[provider."p"]\nmatch = [{MXSuffix = ".p.test"}]\nmx_rollup = false\n',
            r'\[provider\."p"\] mx_rollup: unknown egress path option',
        ),
        (
            '[provider."p".sources."s"]\nprovider_connection_limit = 3\n',
            r'\[provider\."p"\.sources\."s"\] provider_connection_limit: unknown',
        ),
        ('["default"]\nmx_rollup = true\n', r'\["default"\] mx_rollup: not allowed'),
        ('["default".sources."s"]\nconnection_limit = 1\n', r'\["default"\] sources: not allowed'),
        ('["d.com"]\nmx_rollup = "no"\n', r'\["d\.com"\] mx_rollup: expected true or false'),
        ('["d.com"]\nreplace_base = 1\n', r'\["d\.com"\] replace_base: expected true or false'),
        ('["d.com"]\nautomation = "x"\n', r'\["d\.com"\.automation\]: expected an array'),
        ("x = 1\n", r'file1\.toml: \["x"\]: expected a table'),
        ('["d.com"\n', r"file1\.toml: invalid TOML"),
    ],
)
def test_load_errors_name_file_table_key(load, text, message):
    """Every load error is a ConfigError naming file, table and key."""
    with pytest.raises(ConfigError, match=message):
        load(text)


def test_load_missing_file(tmp_path):
    """A missing file is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="nope.toml: cannot read"):
        load_shaping([tmp_path / "nope.toml"])


# --- rule matching ----------------------------------------------------------------------

RULES = """
    [["default".automation]]
    regex = "deferred"
    action = "Suspend"
    duration = "1h"

    [provider."p"]
    match = [{MXSuffix = ".p.test"}]
    [[provider."p".automation]]
    regex = "deferred"
    action = "Bounce"
    duration = "1h"
    match_internal = true

    ["site.com"]
    [["site.com".automation]]
    regex = "deferred"
    action = "SuspendTenant"
    duration = "1h"

    ["example.com"]
    mx_rollup = false
    [["example.com".automation]]
    regex = "^451 4\\\\.7\\\\.0 "
    action = "SuspendCampaign"
    duration = "1h"
"""


def _matched(shaping: Shaping, line: str, **kw) -> list[ActionKind]:
    rules = match_rules(
        shaping,
        domain="example.com",
        site_name="mx.site",
        mx_hosts=["a.p.test"],
        site_of={"site.com": "mx.site"},
        response_line=line,
        **kw,
    )
    return [r.actions[0].kind for r in rules]


def test_match_rules_order(load):
    """Matching rules come in KumoMTA's order: default, provider, site, domain."""
    shaping = load(RULES)
    assert _matched(shaping, "451 4.7.0 deferred") == [
        ActionKind.SUSPEND,
        ActionKind.BOUNCE,
        ActionKind.SUSPEND_TENANT,
        ActionKind.SUSPEND_CAMPAIGN,
    ]


def test_match_rules_regex_must_match(load):
    """Rules whose regexes find nothing do not fire."""
    assert _matched(load(RULES), "250 2.0.0 ok") == []


@pytest.mark.parametrize(
    "line",
    [
        "451 4.4.1 KumoMTA internal: deferred",
        "451 Nimbus internal: deferred",
        "Nimbus internal: deferred",
    ],
)
def test_match_rules_skip_internal_unless_match_internal(load, line):
    """Our own internal responses only match rules with match_internal = true."""
    assert _matched(load(RULES), line) == [ActionKind.BOUNCE]


def test_match_rules_explicit_internal_flag(load):
    """An explicit is_internal overrides detection from the text."""
    assert _matched(load(RULES), "451 4.7.0 deferred", is_internal=True) == [ActionKind.BOUNCE]


@pytest.mark.parametrize(
    ("line", "internal"),
    [
        ("451 4.4.1 KumoMTA internal: x", True),
        ("451 Nimbus internal: x", True),
        ("KumoMTA internal: x", True),
        ("451 4.4.1 upstream said KumoMTA internal: x", False),
        ("421 4.7.0 [TSS04] deferred", False),
    ],
)
def test_is_internal_response(line, internal):
    """Internal responses are recognised by their prefix after the code."""
    assert is_internal_response(line) is internal


def test_rule_rollup_by_scope(load):
    """Default and site rules roll up to the site; provider and domain rules do not."""
    shaping = load(RULES)
    rules = shaping.automation_rules(
        domain="example.com",
        site_name="mx.site",
        mx_hosts=["a.p.test"],
        site_of={"site.com": "mx.site"},
    )
    assert [(r.scope, r.rollup) for r in rules] == [
        (RuleScope.DEFAULT, True),
        (RuleScope.PROVIDER, False),
        (RuleScope.SITE, True),
        (RuleScope.DOMAIN, False),
    ]


def test_rule_fingerprint_ignores_origin(load):
    """The same rule declared in two places has the same fingerprint."""
    body = 'regex = "x"\naction = "Suspend"\nduration = "1h"\n'
    shaping = load('[["default".automation]]\n' + body + '[["a.com".automation]]\n' + body)
    (a,) = shaping.default.automation
    (b,) = shaping.rollups[0].automation
    assert a.fingerprint() == b.fingerprint() and a.origin != b.origin


# --- the bundled policy/shaping.toml ----------------------------------------------------

BUNDLED = BUNDLED_POLICY_DIR / "shaping.toml"
GMAIL_MX = (
    "gmail-smtp-in.l.google.com.",
    "alt1.gmail-smtp-in.l.google.com.",
    "alt2.gmail-smtp-in.l.google.com.",
)


def test_bundled_shaping_loads():
    """policy/shaping.toml loads clean, with every provider matchable."""
    shaping = load_shaping([BUNDLED])
    assert {"google", "yahoo", "outlook", "office365", "apple", "comcast", "mimecast"} <= set(
        shaping.providers
    )


def test_bundled_gmail_resolves_to_google():
    """gmail.com resolves to the google provider's limits over the default block."""
    resolved = resolve(
        load_shaping([BUNDLED]),
        domain="gmail.com",
        source="ip-1",
        site_name="(alt1|alt2)?.gmail-smtp-in.l.google.com",
        mx_hosts=GMAIL_MX,
        site_of={},
    )
    config = resolved.config
    assert resolved.provider_name == config.provider_name == "google"
    assert (config.max_deliveries_per_connection, config.connection_limit) == (50, 10)
    assert dict(config.additional_connection_limits) == {
        "shaping-provider-google-ip-1-limit": LimitSpec(limit=5)
    }
    assert (config.max_connection_rate, config.idle_timeout) == (
        ThrottleSpec(limit=100, period=60),
        60.0,
    )


@pytest.mark.parametrize(
    ("domain", "mx", "provider"),
    [
        (
            "corp.example",
            ("aspmx.l.google.com", "alt1.aspmx.l.google.com", "aspmx2.googlemail.com"),
            "google",
        ),
        ("yahoo.com", ("mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net"), "yahoo"),
        ("aol.com", ("mx-aol.mail.gm0.yahoodns.net",), "yahoo"),
        ("hotmail.com", ("hotmail-com.olc.protection.outlook.com",), "outlook"),
        ("contoso.com", ("contoso-com.mail.protection.outlook.com",), "office365"),
        ("icloud.com", ("mx01.mail.icloud.com", "mx02.mail.icloud.com"), "apple"),
        ("comcast.net", ("mx1a1.comcast.net", "mx2c1.comcast.net"), "comcast"),
        ("web.de", ("mx-ha03.web.de", "mx-ha02.web.de"), "gmx-webde"),
        ("orange.fr", ("smtp-in.orange.fr",), "orange"),
        ("corp.example", ("eu-smtp-inbound-1.mimecast.com",), "mimecast"),
        ("small.example", ("mx.small.example",), None),
    ],
)
def test_bundled_provider_mx_suffixes(domain, mx, provider):
    """The bundled provider suffixes match real MX host names of each provider."""
    resolved = resolve(
        load_shaping([BUNDLED]), domain=domain, source="s", site_name="x", mx_hosts=mx, site_of={}
    )
    assert resolved.provider_name == provider


@pytest.mark.parametrize(
    ("domain", "mx", "line", "kinds"),
    [
        (
            "gmail.com",
            GMAIL_MX,
            "421 4.7.28 Our system has detected an unusual rate",
            [ActionKind.SUSPEND],
        ),
        (
            "yahoo.com",
            ("mta5.am0.yahoodns.net",),
            "421 4.7.0 [TSS04] Messages from 192.0.2.1 "
            "temporarily deferred due to unexpected volume or user complaints",
            [ActionKind.SET_CONFIG, ActionKind.SUSPEND],
        ),
        (
            "hotmail.com",
            ("hotmail-com.olc.protection.outlook.com",),
            "421 4.3.2 The mail server [192.0.2.1] has exceeded the maximum number of connections",
            [ActionKind.SET_CONFIG],
        ),
        ("comcast.net", ("mx1a1.comcast.net",), "421 RL0000 rate limited", [ActionKind.SET_CONFIG]),
    ],
)
def test_bundled_rules_fire(domain, mx, line, kinds):
    """The bundled automation rules match the provider replies they were written for."""
    rules = match_rules(
        load_shaping([BUNDLED]),
        domain=domain,
        site_name="x",
        mx_hosts=mx,
        site_of={},
        response_line=line,
    )
    assert [r.actions[0].kind for r in rules] == kinds
