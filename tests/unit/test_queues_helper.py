"""QueueHelper (queues.toml): queue-option merging, reception headers, tenants, errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from engine.config.settings import BUNDLED_POLICY_DIR, ConfigError
from engine.policy.events import Rejected
from engine.policy.helpers.queues import QueueHelper, merge_queue_options, parse_scheduling_header
from engine.policy.message import PolicyMessage
from engine.policy.queue_config import QueueConfig, queue_config_from_options

HOUR = 3600.0

LAYERED = """
default_tenant = "mytenant"

[tenant.'mytenant']
egress_pool = "tpool"
max_age = "5h"

[tenant.'other']

[queue.default]
max_age = "24h"
retry_interval = "10m"

[queue.'gmail.com']
max_age = "6h"

[queue.'gmail.com'.'mytenant']
egress_pool = "foo"

[queue.'gmail.com'.'mytenant'.'welcome']
egress_pool = "bar"
max_age = "1h"

[queue.'*.example.org']
max_age = "2h"
"""


def write(tmp_path: Path, text: str, name: str = "queues.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def helper(tmp_path: Path, text: str = LAYERED) -> QueueHelper:
    return QueueHelper.load(write(tmp_path, text))


def message(
    headers: str = "", *, meta: dict | None = None, recipient: str = "rcpt@gmail.com"
) -> PolicyMessage:
    data = (headers.replace("\n", "\r\n") + "Subject: hi\r\n\r\nbody\r\n").encode()
    return PolicyMessage("id1", "s@example.com", recipient, data, meta)


# -- merging ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "merged"),
    [
        ([], {}),
        ([{"max_age": "1d"}], {"max_age": "1d"}),
        ([{"max_age": "1d"}, {"max_age": "2h"}], {"max_age": "2h"}),
        ([{"max_age": "1d"}, {"egress_pool": "p"}], {"max_age": "1d", "egress_pool": "p"}),
        ([{"a": 1}, {}, {"a": 3, "b": 2}], {"a": 3, "b": 2}),
        (
            [{"protocol": {"smtp": {"mx_list": ["a"]}}}, {"protocol": {"smtp": {}}}],
            {"protocol": {"smtp": {}}},
        ),
    ],
)
def test_merge_queue_options_later_layer_replaces_key(layers, merged):
    """Later layers win key by key; a table value is replaced whole, not deep-merged."""
    assert merge_queue_options(layers) == merged


@pytest.mark.parametrize(
    ("domain", "tenant", "campaign", "max_age", "pool", "retry"),
    [
        ("foo.com", None, None, 24 * HOUR, None, 600.0),  # default only
        ("gmail.com", None, None, 6 * HOUR, None, 600.0),  # domain over default
        ("GMail.com", None, None, 6 * HOUR, None, 600.0),  # domain keys ignore case
        ("foo.com", "mytenant", None, 5 * HOUR, "tpool", 600.0),  # tenant over default
        ("gmail.com", "mytenant", None, 5 * HOUR, "foo", 600.0),  # tenant over domain; dom+tenant
        ("gmail.com", "mytenant", "welcome", 1 * HOUR, "bar", 600.0),  # campaign last
        ("gmail.com", "mytenant", "other", 5 * HOUR, "foo", 600.0),  # unknown campaign
        ("gmail.com", "other", "welcome", 6 * HOUR, None, 600.0),  # campaign needs its tenant
        ("mx.example.org", None, None, 2 * HOUR, None, 600.0),  # wildcard subdomain
        ("example.org", None, None, 24 * HOUR, None, 600.0),  # wildcard excludes apex
    ],
)
def test_queue_config_merge_order(tmp_path, domain, tenant, campaign, max_age, pool, retry):
    """Options merge default, domain, tenant, domain+tenant, campaign (KumoMTA order)."""
    cfg = helper(tmp_path).queue_config(domain, tenant, campaign, None)
    assert (cfg.max_age, cfg.egress_pool, cfg.retry_interval) == (max_age, pool, retry)


def test_queue_config_without_matches_is_default(tmp_path):
    """A file with no [queue] blocks yields the built-in QueueConfig defaults."""
    assert helper(tmp_path, "").queue_config("a.com", None, None, None) == QueueConfig()


@pytest.mark.parametrize("line", ['provider_name = "google"', 'max_message_rate = "100/min"'])
def test_queue_options_nimbus_does_not_act_on_are_refused(tmp_path, line):
    """provider_name and max_message_rate are parsed but read nowhere, so queues.toml
    refuses them with file, table and key rather than ignoring them."""
    key = line.split()[0]
    with pytest.raises(ConfigError) as info:
        helper(tmp_path, f"[queue.'gmail.com']\n{line}\n")
    assert str(info.value).endswith(
        f"queues.toml: [queue.'gmail.com'] key \"{key}\": not supported by Nimbus"
    )


def test_routing_domain_most_specific_wins(tmp_path):
    """routing_domain comes from the most specific matching [queue] block."""
    h = helper(
        tmp_path,
        """
        [queue.'a.com']
        routing_domain = "relay.example"
        [queue.'a.com'.'t']
        routing_domain = "t-relay.example"
    """,
    )
    assert [h.routing_domain("a.com", t, None) for t in (None, "t")] == [
        "relay.example",
        "t-relay.example",
    ]


# -- queue_config_from_options ----------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field", "value"),
    [
        ({"retry_interval": "5m"}, "retry_interval", 300.0),
        ({"max_retry_interval": "1h"}, "max_retry_interval", HOUR),
        ({"max_age": 60}, "max_age", 60.0),
        ({"egress_pool": "p"}, "egress_pool", "p"),
        (
            {"protocol": {"smtp": {"mx_list": ["mx.example:2525", "b"]}}},
            "mx_list",
            ("mx.example:2525", "b"),
        ),
        ({"protocol": {"smtp": {"mx_list": []}}}, "mx_list", None),
        ({"reap_interval": "10m"}, "reap_interval", 600.0),  # the default: changes nothing
        ({"refresh_interval": "5s"}, "refresh_interval", 5.0),
    ],
)
def test_queue_config_from_options_sets_field(options, field, value):
    """Each make_queue_config option sets its QueueConfig field."""
    assert getattr(queue_config_from_options(options, where="f: [q]"), field) == value


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_message_rate": "1_000/h"}, 'f: [q] key "max_message_rate": not supported by Nimbus'),
        ({"provider_name": "google"}, 'f: [q] key "provider_name": not supported by Nimbus'),
        ({"reap_interval": "1m"}, 'f: [q] key "reap_interval": not supported by Nimbus'),
        ({"max_agee": "1d"}, "f: [q] max_agee: unknown queue option"),
        ({"strategy": "TimerWheel"}, "f: [q] strategy: not supported by nimbus yet"),
        ({"max_age": "soon"}, "f: [q] max_age: "),
        ({"max_message_rate": "fast"}, "f: [q] max_message_rate: "),
        ({"max_message_rate": "0/s"}, "f: [q] max_message_rate: "),
        ({"protocol": {"maildir_path": "/tmp"}}, "f: [q] protocol: protocol 'maildir_path' is not"),
        (
            {"protocol": {"smtp": {"mx_list": [{"name": "a", "addr": "1.2.3.4"}]}}},
            "f: [q] protocol: mx_list: only 'host[:port]'",
        ),
        ({"egress_pool": ""}, "f: [q] egress_pool: expected a non-empty string"),
    ],
)
def test_queue_config_from_options_rejects(options, message):
    """Unknown keys, unsupported KumoMTA options and bad values name where and key."""
    with pytest.raises(ConfigError) as err:
        queue_config_from_options(options, where="f: [q]")
    assert str(err.value).startswith(message)


# -- reception --------------------------------------------------------------------------

HEADERS = """
tenant_header = "X-Tenant"
remove_tenant_header = true
campaign_header = "X-Campaign"
remove_campaign_header = false

[tenant.'acme']
"""


def test_apply_sets_tenant_and_campaign_from_headers(tmp_path):
    """The configured headers become meta tenant and campaign."""
    msg = message("X-Tenant: acme\nX-Campaign: spring\n")
    helper(tmp_path, HEADERS).apply(msg)
    assert (msg.get_meta("tenant"), msg.get_meta("campaign")) == ("acme", "spring")


@pytest.mark.parametrize(("header", "kept"), [("X-Tenant", False), ("X-Campaign", True)])
def test_apply_removes_headers_when_configured(tmp_path, header, kept):
    """remove_*_header drops every instance of that header; false keeps it."""
    msg = message("X-Tenant: acme\nX-Campaign: spring\nx-tenant: again\n")
    helper(tmp_path, HEADERS).apply(msg)
    assert (msg.get_first_named_header_value(header) is not None) is kept


def test_apply_first_tenant_header_wins(tmp_path):
    """With the tenant header repeated, the first value is used."""
    msg = message("X-Tenant: acme\nX-Tenant: other\n")
    helper(tmp_path, HEADERS).apply(msg)
    assert msg.get_meta("tenant") == "acme"


def test_apply_uses_default_tenant_without_header(tmp_path):
    """default_tenant applies when the tenant header is absent."""
    msg = message()
    helper(tmp_path, 'tenant_header = "X-Tenant"\ndefault_tenant = "d"\n[tenant.d]\n').apply(msg)
    assert msg.get_meta("tenant") == "d"


def test_apply_without_tenant_sets_no_meta(tmp_path):
    """No header and no default_tenant leave meta tenant unset."""
    msg = message()
    helper(tmp_path, HEADERS).apply(msg)
    assert msg.get_meta("tenant") is None


def test_apply_rejects_unknown_tenant(tmp_path):
    """A tenant with no [tenant] block is refused with exactly 500 5.7.1."""
    with pytest.raises(Rejected) as err:
        helper(tmp_path, HEADERS).apply(message("X-Tenant: nobody\n"))
    assert str(err.value.response) == (
        "500 5.7.1 tenant 'nobody' specified by 'X-Tenant' header "
        "is not defined in your queue config"
    )


def test_apply_rejects_tenant_when_no_tenant_blocks(tmp_path):
    """As in KumoMTA, a named tenant must be defined even when no [tenant] blocks exist."""
    with pytest.raises(Rejected) as err:
        helper(tmp_path, 'tenant_header = "X-Tenant"\n').apply(message("X-Tenant: t\n"))
    assert err.value.response.code == 500


AUTHZ = """
tenant_header = "X-Tenant"
[tenant.'secure']
require_authz = ["scott", "api"]
"""


@pytest.mark.parametrize(
    ("meta", "text"),
    [
        ({}, "500 5.7.1 tenant 'secure' requires authentication"),
        (
            {"authz_id": "mallory"},
            "500 5.7.1 authz_id 'mallory' is not authorized to send as tenant 'secure'",
        ),
        (
            {"http_auth": "eve"},
            "500 5.7.1 authz_id 'eve' is not authorized to send as tenant 'secure'",
        ),
    ],
)
def test_require_authz_rejects(tmp_path, meta, text):
    """require_authz refuses an unauthenticated or unlisted sender with 500."""
    with pytest.raises(Rejected) as err:
        helper(tmp_path, AUTHZ).apply(message("X-Tenant: secure\n", meta=meta))
    assert str(err.value.response) == text


@pytest.mark.parametrize(
    "meta", [{"authz_id": "scott"}, {"http_auth": "api"}, {"authn_id": "scott"}]
)
def test_require_authz_accepts_listed_identity(tmp_path, meta):
    """A listed SMTP AUTH or HTTP identity may send as the tenant."""
    msg = message("X-Tenant: secure\n", meta=meta)
    helper(tmp_path, AUTHZ).apply(msg)
    assert msg.get_meta("tenant") == "secure"


def test_apply_sets_routing_domain(tmp_path):
    """A routing_domain in the recipient's [queue] block becomes meta routing_domain."""
    msg = message(recipient="u@gmail.com")
    helper(tmp_path, "[queue.'gmail.com']\nrouting_domain = 'sink.test'\n").apply(msg)
    assert msg.get_meta("routing_domain") == "sink.test"


SCHEDULE = '{"dow":"Mon,Wed","tz":"America/Phoenix","start":"09:00:00","end":"17:00:00"}'


def test_scheduling_header_is_imported_and_removed(tmp_path):
    """The JSON scheduling header is applied (or kept on meta) and removed."""
    msg = message(f"X-Schedule: {SCHEDULE}\n")
    helper(tmp_path, 'scheduling_header = "X-Schedule"\n').apply(msg)
    assert msg.get_first_named_header_value("X-Schedule") is None
    assert (msg.get_meta("scheduling") or msg.get_meta("x_scheduling")) is not None


def test_scheduling_header_falls_back_to_meta(tmp_path):
    """A message without set_scheduling keeps the options on meta x_scheduling."""

    class Plain:  # the PolicyMessage surface apply() needs, minus set_scheduling
        def __init__(self, msg: PolicyMessage) -> None:
            self.msg = msg

        def __getattr__(self, name):
            if name == "set_scheduling":
                raise AttributeError(name)
            return getattr(self.msg, name)

    msg = message(f"X-Schedule: {SCHEDULE}\n")
    helper(tmp_path, 'scheduling_header = "X-Schedule"\n').apply(Plain(msg))
    assert msg.get_meta("x_scheduling") == json.loads(SCHEDULE)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "not JSON"),
        ("[1]", "expected a JSON object"),
        ('{"when": "now"}', "unknown key(s) when"),
        ('{"dow": "Mon"}', "dow, tz, start and end must be given together"),
    ],
)
def test_parse_scheduling_header_errors(text, reason):
    """A malformed scheduling header says what is wrong."""
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_scheduling_header(text)


def test_bad_scheduling_header_rejected(tmp_path):
    """A scheduling header that does not parse refuses the message with 500 5.6.0."""
    with pytest.raises(Rejected) as err:
        helper(tmp_path, 'scheduling_header = "X-Schedule"\n').apply(
            message("X-Schedule: tomorrow\n")
        )
    assert str(err.value.response).startswith("500 5.6.0 invalid X-Schedule header: not JSON")


@pytest.mark.parametrize(
    "text",
    [
        "[tenant.'t']\noverall_max_message_rate = \"1000/h\"\n",
        "[tenant.'t']\n[tenant.'t'.'c']\noverall_max_message_rate = \"10/min\"\n",
    ],
)
def test_overall_max_message_rate_is_refused(tmp_path, text):
    """Nothing applies tenant/campaign overall rates before the ready queue yet, so the
    key is refused (file, table, key) rather than parsed and ignored."""
    with pytest.raises(
        ConfigError, match='key "overall_max_message_rate": not supported by Nimbus'
    ):
        helper(tmp_path, text)


# -- load errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tenant_headr = 'X-T'\n", "queues.toml: tenant_headr: unknown key"),
        (
            "remove_tenant_header = 'yes'\n",
            "queues.toml: remove_tenant_header: expected true or false",
        ),
        ("[queue.default]\nmax_agee = '1d'\n", "queues.toml: [queue.default] max_agee: unknown"),
        ("[queue.'a.com']\nmax_age = 'x'\n", "queues.toml: [queue.'a.com'] max_age: "),
        (
            "[queue.'a.com'.'t']\nretry_intervl = '1m'\n",
            "queues.toml: [queue.'a.com'.t] retry_intervl: unknown queue option",
        ),
        (
            "[queue.'a.com'.'t'.'c']\negres_pool = 'p'\n",
            "queues.toml: [queue.'a.com'.t.c] egres_pool: unknown queue option",
        ),
        (
            "[queue.'a.com'.'t'.'c'.'x']\n",
            "queues.toml: [queue.'a.com'.t.c] x: unknown queue option",
        ),
        ("[queue.default.'t']\n", "queues.toml: [queue.default] t: unknown queue option"),
        (
            "[queue.'a.com']\noverall_max_message_rate = '1/s'\n",
            "queues.toml: [queue.'a.com'] overall_max_message_rate: only honoured in [tenant.*]",
        ),
        ("[tenant.'t']\negress_poool = 'p'\n", "queues.toml: [tenant.t] egress_poool: unknown key"),
        (
            "[tenant.'t']\nrequire_authz = 'scott'\n",
            "queues.toml: [tenant.t] require_authz: expected a list",
        ),
        (
            "[tenant.'t'.'c']\nmax_age = '1d'\n",
            "queues.toml: [tenant.t.c] max_age: only overall_max_message_rate is used here",
        ),
        ("default_tenant = 'ghost'\n", "queues.toml: default_tenant: tenant 'ghost' has no"),
        ("[queue.'A.com']\n[queue.'a.com']\n", "queues.toml: [queue] a.com: domain given twice"),
    ],
)
def test_load_errors_name_file_table_key(tmp_path, text, message):
    """A typo or bad value in queues.toml names the file, the table and the key."""
    with pytest.raises(ConfigError) as err:
        helper(tmp_path, text)
    assert str(err.value).startswith(str(tmp_path / message))


def test_load_json_file(tmp_path):
    """A .json file in the same shape loads like the TOML."""
    path = tmp_path / "queues.json"
    path.write_text(json.dumps({"queue": {"default": {"max_age": "1h"}}}))
    assert QueueHelper.load(path).queue_config("a.com", None, None).max_age == HOUR


def test_shipped_queues_toml_loads():
    """policy/queues.toml loads clean and uses only pools sources.toml defines."""
    from engine.policy.helpers.sources import SourcesHelper

    queues = QueueHelper.load(BUNDLED_POLICY_DIR / "queues.toml")
    sources = SourcesHelper.load(BUNDLED_POLICY_DIR / "sources.toml")
    sources.validate([], referenced_pools=queues.egress_pools())
    assert queues.queue_config("example.com", "default", None).max_age == 3 * 24 * HOUR
