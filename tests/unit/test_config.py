"""Node settings: defaults, TOML layering, environment names, precedence and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.settings import BUNDLED_POLICY_DIR, ConfigError, Settings, load_settings
from engine.config.units import MemoryLimit, parse_memory_limit


def write(tmp_path: Path, text: str) -> str:
    """Write ``text`` as a TOML file and return its path."""
    path = tmp_path / "nimbus.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("smtp", "listen", "0.0.0.0:2525"),
        ("smtp", "relay_hosts", ["127.0.0.1/32", "::1/128"]),
        ("smtp", "max_message_size", 20_000_000),
        ("smtp", "max_recipients", 100),
        ("smtp", "idle_timeout", 300.0),
        ("http", "listen", "0.0.0.0:8000"),
        ("http", "auth_dir", ""),
        ("spool", "dir", "nimbus-data/spool"),
        ("spool", "max_size", 0),
        ("log", "dir", "nimbus-data/logs"),
        ("policy", "dir", str(BUNDLED_POLICY_DIR)),
        ("policy", "event_timeout", 5.0),
        ("sink", "enabled", False),
        ("sink", "endpoint", ""),
        ("delivery", "allow_loopback_mx", False),
    ],
)
def test_defaults(section, key, value):
    """With no file, environment or overrides every setting has its built-in default."""
    settings = load_settings(None, env={})
    assert getattr(getattr(settings, section), key) == value


def test_defaults_equal_settings_constructor():
    """load_settings with nothing set equals Settings()."""
    assert load_settings(None, env={}) == Settings()


def test_file_values_applied(tmp_path):
    """Values in the TOML file replace the defaults, converted to their kinds."""
    path = write(
        tmp_path,
        """
node_id = "node-a"
[smtp]
listen = "127.0.0.1:25"
max_message_size = "10MB"
idle_timeout = "2m"
relay_hosts = ["10.0.0.0/8"]
[spool]
dir = "/var/spool/nimbus"
""",
    )
    s = load_settings(path, env={})
    assert (
        s.node_id,
        s.smtp.listen,
        s.smtp.max_message_size,
        s.smtp.idle_timeout,
        s.smtp.relay_hosts,
        s.spool.dir,
    ) == ("node-a", "127.0.0.1:25", 10_000_000, 120.0, ["10.0.0.0/8"], "/var/spool/nimbus")


def test_file_leaves_unset_keys_at_default(tmp_path):
    """Keys the file does not mention keep their defaults."""
    s = load_settings(write(tmp_path, "[smtp]\nmax_recipients = 5\n"), env={})
    assert s.smtp.listen == "0.0.0.0:2525" and s.smtp.max_recipients == 5


def test_config_path_from_nimbus_config_env(tmp_path):
    """With no path argument the file named by NIMBUS_CONFIG is read."""
    path = write(tmp_path, "[smtp]\nmax_recipients = 7\n")
    assert load_settings(None, env={"NIMBUS_CONFIG": path}).smtp.max_recipients == 7


@pytest.mark.parametrize(
    ("var", "value", "section", "key", "expected"),
    [
        ("NIMBUS_SMTP_LISTEN", "127.0.0.1:2626", "smtp", "listen", "127.0.0.1:2626"),
        ("NIMBUS_HTTP_LISTEN", "127.0.0.1:8080", "http", "listen", "127.0.0.1:8080"),
        ("NIMBUS_SPOOL_DIR", "/data/spool", "spool", "dir", "/data/spool"),
        ("NIMBUS_LOG_DIR", "/data/logs", "log", "dir", "/data/logs"),
        ("NIMBUS_POLICY_DIR", "/etc/nimbus/policy", "policy", "dir", "/etc/nimbus/policy"),
        ("NIMBUS_HTTP_AUTH_DIR", "/etc/nimbus/users", "http", "auth_dir", "/etc/nimbus/users"),
        (
            "NIMBUS_RELAY_HOSTS",
            "10.0.0.0/8, 192.168.0.0/16",
            "smtp",
            "relay_hosts",
            ["10.0.0.0/8", "192.168.0.0/16"],
        ),
        ("NIMBUS_SINK_ENABLED", "true", "sink", "enabled", True),
        ("NIMBUS_SINK_ENDPOINT", "sink:2525", "sink", "endpoint", "sink:2525"),
        ("NIMBUS_NODE_ID", "node-7", None, "node_id", "node-7"),
    ],
)
def test_environment_names(var, value, section, key, expected):
    """Each contract environment variable sets its setting."""
    env = {var: value}
    if var == "NIMBUS_SINK_ENABLED":
        env["NIMBUS_SINK_ENDPOINT"] = "sink:2525"
    s = load_settings(None, env=env)
    target = s if section is None else getattr(s, section)
    assert getattr(target, key) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("yes", True),
        ("on", True),
        ("TRUE", True),
        ("0", False),
        ("no", False),
        ("off", False),
        ("false", False),
        ("", False),
    ],
)
def test_environment_bool_spellings(value, expected):
    """Boolean environment values accept the usual spellings."""
    env = {"NIMBUS_DELIVERY_ALLOW_LOOPBACK_MX": value}
    assert load_settings(None, env=env).delivery.allow_loopback_mx is expected


@pytest.mark.parametrize(
    ("file_value", "env_value", "override", "expected"),
    [
        (None, None, None, 100),
        (10, None, None, 10),
        (10, "20", None, 20),
        (10, "20", 30, 30),
        (None, "20", None, 20),
        (None, None, 30, 30),
        (10, None, 30, 30),
    ],
)
def test_precedence(tmp_path, file_value, env_value, override, expected):
    """Defaults < file < environment < overrides."""
    path = write(tmp_path, f"[smtp]\nmax_recipients = {file_value}\n") if file_value else None
    env = {"NIMBUS_SMTP_MAX_RECIPIENTS": env_value} if env_value else {}
    overrides = {"smtp": {"max_recipients": override}} if override else None
    assert load_settings(path, env=env, overrides=overrides).smtp.max_recipients == expected


def test_unknown_key_in_file_names_file_table_and_key(tmp_path):
    """An unknown key in a table raises ConfigError naming the file, the table and the key."""
    path = write(tmp_path, "[smtp]\nlisten_port = 25\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    message = str(exc.value)
    assert path in message and "[smtp]" in message and "listen_port" in message


def test_unknown_table_in_file_is_error(tmp_path):
    """An unknown top-level table raises ConfigError naming the file and the table."""
    path = write(tmp_path, '[smtpd]\nlisten = "0.0.0.0:25"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    assert path in str(exc.value) and "smtpd" in str(exc.value)


@pytest.mark.parametrize(
    ("toml", "table", "key"),
    [
        ('[smtp]\nmax_recipients = "lots"\n', "[smtp]", "max_recipients"),
        ('[smtp]\nrelay_hosts = ["10.0.0.0/8", "not-a-cidr"]\n', "[smtp]", "relay_hosts"),
        ('[smtp]\nlisten = "0.0.0.0"\n', "[smtp]", "listen"),
        ('[smtp]\nmax_message_size = "huge"\n', "[smtp]", "max_message_size"),
        ('[smtp]\nidle_timeout = "5 parsecs"\n', "[smtp]", "idle_timeout"),
        ("[smtp]\nmax_connections = -1\n", "[smtp]", "max_connections"),
        ('[sink]\nenabled = "maybe"\n', "[sink]", "enabled"),
        ('[http]\ntrusted_hosts = ["300.1.1.1/8"]\n', "[http]", "trusted_hosts"),
    ],
)
def test_bad_value_names_file_table_and_key(tmp_path, toml, table, key):
    """A value of the wrong kind raises ConfigError naming the file, the table and the key."""
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    message = str(exc.value)
    assert path in message and table in message and key in message


def test_bad_value_in_environment_names_environment():
    """A bad environment value raises ConfigError naming the environment, table and key."""
    with pytest.raises(ConfigError, match=r"environment: \[smtp\] max_recipients"):
        load_settings(None, env={"NIMBUS_SMTP_MAX_RECIPIENTS": "lots"})


def test_bad_relay_hosts_from_environment():
    """A bad CIDR in NIMBUS_RELAY_HOSTS raises ConfigError naming relay_hosts."""
    with pytest.raises(ConfigError, match="relay_hosts"):
        load_settings(None, env={"NIMBUS_RELAY_HOSTS": "10.0.0.0/8,bogus"})


def test_section_not_a_table_is_error(tmp_path):
    """A section name given a scalar value raises ConfigError."""
    with pytest.raises(ConfigError, match=r"\[smtp\] must be a table"):
        load_settings(write(tmp_path, "smtp = 5\n"), env={})


def test_invalid_toml_names_file(tmp_path):
    """A file that is not valid TOML raises ConfigError naming the file."""
    path = write(tmp_path, "[smtp\n")
    with pytest.raises(ConfigError, match="invalid TOML") as exc:
        load_settings(path, env={})
    assert path in str(exc.value)


def test_missing_file_names_file(tmp_path):
    """A config path that does not exist raises ConfigError naming it."""
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    assert path in str(exc.value)


@pytest.mark.parametrize("endpoint", ["", "sink-without-port"])
def test_sink_enabled_without_endpoint_is_error(endpoint):
    """Enabling the sink without a host:port endpoint raises ConfigError."""
    env = {"NIMBUS_SINK_ENABLED": "1", "NIMBUS_SINK_ENDPOINT": endpoint}
    with pytest.raises(ConfigError, match="sink"):
        load_settings(None, env=env)


def test_sink_endpoint_without_enabled_is_accepted():
    """An endpoint alone, with the sink disabled, is not validated and not an error."""
    assert load_settings(None, env={"NIMBUS_SINK_ENDPOINT": ""}).sink.enabled is False


@pytest.mark.parametrize(
    "toml",
    [
        '[smtp]\ntls_certificate = "/etc/tls/cert.pem"\n',
        '[smtp]\ntls_private_key = "/etc/tls/key.pem"\n',
    ],
)
def test_tls_certificate_and_key_must_be_set_together(tmp_path, toml):
    """A TLS certificate without a key (or the reverse) raises ConfigError."""
    with pytest.raises(ConfigError, match="tls_certificate"):
        load_settings(write(tmp_path, toml), env={})


def test_tls_certificate_with_key_is_accepted(tmp_path):
    """A TLS certificate together with its key is accepted."""
    path = write(tmp_path, '[smtp]\ntls_certificate = "c.pem"\ntls_private_key = "k.pem"\n')
    s = load_settings(path, env={})
    assert (s.smtp.tls_certificate, s.smtp.tls_private_key) == ("c.pem", "k.pem")


def test_override_unknown_key_names_flags():
    """An unknown key in overrides raises ConfigError naming flags as the source."""
    with pytest.raises(ConfigError, match=r"flags: \[smtp\] nope"):
        load_settings(None, env={}, overrides={"smtp": {"nope": 1}})


def test_dkim_settings_from_environment():
    """NIMBUS_DKIM_WORKERS and NIMBUS_DKIM_TIMEOUT set the signing service's size and limit."""
    from engine.config.settings import load_settings

    s = load_settings(env={"NIMBUS_DKIM_WORKERS": "0", "NIMBUS_DKIM_TIMEOUT": "5s"})
    assert (s.dkim.workers, s.dkim.timeout) == (0, 5.0)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"NIMBUS_SPOOL_WRITE_TIMEOUT": "0s"}, "[spool] write_timeout: must be more than 0s"),
        ({"NIMBUS_HTTP_MAX_RECIPIENTS": "0"}, "[http] max_recipients: must be at least 1"),
        ({"NIMBUS_HTTP_MAX_RECIPIENTS": "-5"}, "[http] max_recipients: must not be negative"),
    ],
)
def test_accept_bounds_are_validated(env, named):
    """spool.write_timeout and http.max_recipients refuse values that would disable them."""
    with pytest.raises(ConfigError) as exc:
        load_settings(env=env)
    assert named in str(exc.value)


def test_accept_bounds_have_documented_defaults():
    """A reception waits 30s for its commit; an inject takes up to 10,000 recipients."""
    settings = load_settings(env={})
    assert settings.spool.write_timeout == 30.0
    assert settings.http.max_recipients == 10_000


@pytest.mark.parametrize(
    "toml, message",
    [
        (
            "[smtpp]\nlisten = '127.0.0.1:1'\n",
            r"unknown section \[smtpp\] \(did you mean \[smtp\]\?",
        ),
        ("[sheding]\ninterval = 1\n", r"unknown section \[sheding\] \(did you mean \[shedding\]\?"),
        ("[zzz]\nx = 1\n", r"unknown section \[zzz\] \(known sections: cluster, "),
        ("nodeid = 'x'\n", r"nodeid: unknown key \(known keys: node_id\)"),
    ],
)
def test_unknown_section_names_file_section_and_closest(tmp_path, toml, message):
    """A table that is no section is named as a section, with the closest known one."""
    path = tmp_path / "nimbus.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=f"^{path}: " + message):
        load_settings(str(path), env={})


@pytest.mark.parametrize(
    "value, expected", [("debug", "debug"), ("WARNING", "warning"), (" info ", "info")]
)
def test_log_level_accepts_the_four_levels(value, expected):
    """log.level is one of debug, info, warning, error (any case)."""
    assert load_settings(env={"NIMBUS_LOG_LEVEL": value}).log.level == expected


def test_unknown_log_level_names_the_variable_and_the_choices():
    """An unknown NIMBUS_LOG_LEVEL is a ConfigError naming the variable and the levels."""
    with pytest.raises(
        ConfigError,
        match=r"\[log\] level: unknown log level 'verbose' .*; set by NIMBUS_LOG_LEVEL$",
    ):
        load_settings(env={"NIMBUS_LOG_LEVEL": "verbose"})


@pytest.mark.parametrize(
    "value, limit",
    [
        ("90%", MemoryLimit(percent=90.0)),
        ("2GB", MemoryLimit(bytes=2_000_000_000)),
        ("0", MemoryLimit()),
        (0, MemoryLimit()),
    ],
)
def test_memory_limit_is_a_size_or_a_percentage(value, limit):
    """shedding.max_memory: bytes, a percentage of memory.max, or 0 (off)."""
    assert parse_memory_limit(value) == limit


@pytest.mark.parametrize("value", ["0%", "101%", "lots", "-1"])
def test_bad_memory_limit_is_refused(value):
    """A memory threshold that is neither a size nor a percentage in (0, 100] is an error."""
    with pytest.raises(ConfigError, match=r"\[shedding\] max_memory"):
        load_settings(env={"NIMBUS_SHEDDING_MAX_MEMORY": value})
