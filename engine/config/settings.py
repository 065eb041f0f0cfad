"""Node settings: built-in defaults < TOML file < environment < command-line flags.

Exports:
    Settings (and its sections SmtpSettings, HttpSettings, ...)   frozen dataclasses
    load_settings(config_path, env, overrides) -> Settings
    ConfigError                                                  names file, table and key

Every key ``[section] key`` can be set from the environment as
``NIMBUS_<SECTION>_<KEY>`` (``[spool] dir`` -> ``NIMBUS_SPOOL_DIR``); top-level
keys as ``NIMBUS_<KEY>``. A few names fixed by the runtime contract are aliases:
``NIMBUS_RELAY_HOSTS`` (smtp.relay_hosts), ``NIMBUS_HTTP_AUTH_DIR`` (http.auth_dir),
``NIMBUS_CONFIG`` (the TOML file itself). Unknown keys in the file are errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli

from engine.config.units import parse_duration, parse_hostport, parse_memory_limit, parse_size

__all__ = [
    "Settings",
    "SmtpSettings",
    "HttpSettings",
    "SpoolSettings",
    "SheddingSettings",
    "LogSettings",
    "PolicySettings",
    "SinkSettings",
    "DnsSettings",
    "DeliverySettings",
    "RedisSettings",
    "ClusterSettings",
    "TsaSettings",
    "DkimSettings",
    "SuppressionSettings",
    "NodeSettings",
    "load_settings",
    "dotted_tree",
    "read_toml",
    "ConfigError",
    "BUNDLED_POLICY_DIR",
    "LOG_LEVELS",
    "EVENT_LOOPS",
]

BUNDLED_POLICY_DIR = Path(__file__).resolve().parents[2] / "policy"

LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


class ConfigError(ValueError):
    """A setting is wrong; the message names the source (file or env), table and key."""


def _kind(kind: str, default: Any, doc: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"kind": kind, "doc": doc})
    return field(default=default, metadata={"kind": kind, "doc": doc})


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpSettings:
    listen: str = _kind("hostport", "0.0.0.0:2525", "SMTP listener host:port")
    hostname: str = _kind("str", "", "name in the banner and EHLO reply (default: node hostname)")
    relay_hosts: list[str] = _kind(
        "cidrs", ["127.0.0.1/32", "::1/128"], "CIDRs that may relay without AUTH"
    )
    max_message_size: int = _kind("size", 20_000_000, "largest accepted message (SIZE)")
    max_recipients: int = _kind("int", 100, "recipients per message (452 4.5.3 beyond)")
    max_connections: int = _kind("int", 1000, "concurrent SMTP sessions (421 4.7.0 beyond)")
    idle_timeout: float = _kind("duration", 300.0, "idle time per command before 421")
    data_timeout: float = _kind(
        "duration", 600.0, "longest a message body may take to arrive (RFC 5321 4.5.3.2.6)"
    )
    tls_certificate: str = _kind("str", "", "PEM certificate: enables STARTTLS and AUTH")
    tls_private_key: str = _kind("str", "", "PEM private key for tls_certificate")


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    listen: str = _kind("hostport", "0.0.0.0:8000", "HTTP listener host:port")
    auth_dir: str = _kind("str", "", "basic-auth users: file name = user, content = password")
    max_request_size: int = _kind("size", 20_000_000, "largest inject request body (413 beyond)")
    max_recipients: int = _kind(
        "int", 10_000, "recipients per inject request (413 beyond; at least 1)"
    )
    trusted_hosts: list[str] = _kind(
        "cidrs", ["127.0.0.1/32", "::1/128"], "CIDRs trusted for the admin API"
    )
    admin_auth_dir: str = _kind("str", "", "admin users (one file per user), besides trusted hosts")
    auth_failure_burst: int = _kind(
        "int", 10, "failed basic-auth attempts a peer may make at once, then 429 (0: no limit)"
    )
    auth_failure_refill: float = _kind(
        "duration", 1.0, "one more failed attempt is allowed per this long (token bucket)"
    )
    auth_failure_peers: int = _kind(
        "int", 10_000, "peers (IPv4 address, IPv6 /64) whose failures are tracked, LRU-bounded"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SpoolSettings:
    dir: str = _kind("str", "nimbus-data/spool", "durable spool directory")
    max_size: int = _kind("size", 0, "cap on spool size in bytes; 0 = until the disk is full")
    min_free_space: int = _kind("size", 64_000_000, "refuse new mail below this much free disk")
    commit_window: float = _kind(
        "duration",
        0.0,
        "extra wait to gather writes into one fsync "
        "(0: batch what arrived during the previous fsync)",
    )
    write_timeout: float = _kind(
        "duration",
        30.0,
        "longest a reception waits for its spool commit (then SMTP 451 4.3.0 / HTTP 503)",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SheddingSettings:
    min_free_disk: int = _kind(
        "size", 128_000_000, "shed below this much free space on the spool filesystem (0: off)"
    )
    min_free_inodes: int = _kind(
        "int", 1000, "shed below this many free inodes on the spool filesystem (0: off)"
    )
    max_memory: str = _kind(
        "memory",
        "90%",
        "shed above this working set: bytes (2GB) or % of the cgroup's memory.max (0: off)",
    )
    interval: float = _kind("duration", 1.0, "how often disk, memory and the spool are sampled")
    retry_after: float = _kind("duration", 30.0, "Retry-After of HTTP 503s while shedding")
    cgroup_dir: str = _kind(
        "str", "", "cgroup v2 directory to read memory from (empty: this process's own)"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    dir: str = _kind("str", "nimbus-data/logs", "NDJSON log-record segments")
    max_file_size: int = _kind("size", 100_000_000, "start a new segment after this many bytes")
    max_segment_duration: float = _kind("duration", 3600.0, "start a new segment after this long")
    level: str = _kind("level", "info", "diagnostic log level: debug, info, warning, error")


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicySettings:
    dir: str = _kind("str", str(BUNDLED_POLICY_DIR), "policy directory (init.py + TOML)")
    event_timeout: float = _kind("duration", 5.0, "longest a policy handler may run")
    handler_threads: int = _kind(
        "int", 8, "worker threads for plain (sync) policy handlers; a timed-out one holds its own"
    )
    reload_interval: float = _kind(
        "duration", 2.0, "how often to look for edited policy files (0: only on SIGHUP)"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkSettings:
    # MTA side: the chart's sink toggle.
    enabled: bool = _kind("bool", False, "MTA: deliver every message to endpoint")
    endpoint: str = _kind("str", "", "MTA: sink host:port")
    # The sink service (`nimbus sink`).
    listen: str = _kind("hostport", "0.0.0.0:2526", "sink service: SMTP listener")
    http_listen: str = _kind("hostport", "0.0.0.0:8001", "sink service: liveness and metrics")
    responses: str = _kind("str", "", "sink service: smart-mode TOML (empty: accept all)")


@dataclass(frozen=True, slots=True, kw_only=True)
class DkimSettings:
    workers: int = _kind(
        "int",
        1,
        "signing worker processes, started on the first signature "
        "(0: sign in a thread of the node)",
    )
    timeout: float = _kind("duration", 30.0, "longest one signing may take (451 4.3.0 beyond)")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    workers: int = _kind(
        "int",
        1,
        "engine worker processes of this node (0: the cgroup CPU quota rounded down, else "
        "the CPU count; 1, the default for now: one process, no supervisor)",
    )
    event_loop: str = _kind(
        "str",
        "auto",
        "auto (uvloop when installed: pip install 'nimbus-mta[fast]'), uvloop, or asyncio",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisSettings:
    url: str = _kind(
        "str",
        "",
        "shared throttle/TSA store, redis://host:port/db (empty: embedded, this node only)",
    )
    key_prefix: str = _kind("str", "nimbus", "prefix of every Redis key")
    timeout: float = _kind("duration", 2.0, "per-command timeout before the local fallback")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSettings:
    nodes: int = _kind(
        "int",
        1,
        "MTA nodes sharing the limits; while Redis is down each node "
        "enforces limit / nodes locally",
    )
    secret: str = _kind(
        "str",
        "",
        "shared secret nodes present to each other for xfer (prefer secret_file; "
        "empty: this node refuses transfers with 403)",
    )
    secret_file: str = _kind(
        "str", "", "file holding the cluster secret (a mounted Kubernetes Secret); wins over secret"
    )
    peers: list[str] = _kind(
        "list",
        [],
        "other nodes for scale-in transfers: http://host:port URLs, or DNS names "
        "(a headless Service: every address is a peer) on the HTTP port",
    )
    xfer_on_shutdown: bool = _kind(
        "bool", True, "at SIGTERM, after the drain, transfer the remaining spool to the peers"
    )
    xfer_deadline: float = _kind(
        "duration", 60.0, "longest the shutdown transfer may take; what is left stays spooled"
    )
    xfer_concurrency: int = _kind(
        "int", 16, "messages in flight to peers at once during a transfer"
    )
    xfer_timeout: float = _kind(
        "duration", 30.0, "longest one node-to-node transfer request may take"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TsaSettings:
    listen: str = _kind("hostport", "0.0.0.0:8008", "TSA service: HTTP listener")
    urls: list[str] = _kind("list", [], "MTA: TSA base URLs to publish log records to")
    resync_interval: float = _kind("duration", 30.0, "MTA: full resync of TSA actions")


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsSettings:
    nameservers: list[str] = _kind("list", [], "host[:port] list; empty = /etc/resolv.conf")
    timeout: float = _kind("duration", 3.0, "per-server try")
    lifetime: float = _kind("duration", 10.0, "whole lookup")
    cache_size: int = _kind("int", 100_000, "cached answers (TTL-honouring)")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverySettings:
    shutdown_deadline: float = _kind(
        "duration", 25.0, "in-flight deliveries get this long at SIGTERM"
    )
    allow_loopback_mx: bool = _kind("bool", False, "permit loopback/unspecified MX targets (tests)")
    tls_ca_file: str = _kind(
        "str", "", "PEM CA bundle for verified outbound TLS and MTA-STS fetches; empty = system"
    )
    mta_sts_port: int = _kind("int", 443, "MTA-STS policy host's HTTPS port (443; tests only)")
    mta_sts_timeout: float = _kind("duration", 10.0, "MTA-STS policy fetch, whole request")


@dataclass(frozen=True, slots=True, kw_only=True)
class SuppressionSettings:
    enabled: bool = _kind(
        "bool",
        False,
        "record hard bounces and complaints, and refuse suppressed recipients at reception "
        "(off: nothing is recorded or refused; the admin API still edits the list)",
    )
    classifications: list[str] = _kind(
        "list",
        ["InvalidRecipient", "InactiveMailbox", "BadDomain"],
        "bounce classifications of 5xx Bounce and OOB records that suppress the recipient",
    )
    feedback_types: list[str] = _kind(
        "list",
        ["abuse", "fraud", "virus", "other"],
        "ARF feedback types of Feedback records that suppress the recipient (empty: none)",
    )
    per_tenant: bool = _kind(
        "bool",
        False,
        "entries from bounces and complaints hold only for the record's tenant (meta tenant)",
    )
    bounce_expiry: float = _kind(
        "duration", 0.0, "how long a hard-bounce entry holds (0: until removed)"
    )
    complaint_expiry: float = _kind(
        "duration", 0.0, "how long a complaint entry holds (0: until removed)"
    )
    admin_expiry: float = _kind(
        "duration", 0.0, "how long an admin entry without its own duration holds (0: until removed)"
    )
    cache_size: int = _kind(
        "int", 100_000, "with Redis: recipients whose lookup is cached on the node (0: no cache)"
    )
    cache_ttl: float = _kind(
        "duration",
        10.0,
        "with Redis: how long a cached lookup is trusted (another node's new entry is "
        "seen within this)",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    node_id: str = _kind("str", "", "node identity in log records (default: hostname)")
    node: NodeSettings = field(default_factory=NodeSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    shedding: SheddingSettings = field(default_factory=SheddingSettings)
    log: LogSettings = field(default_factory=LogSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    sink: SinkSettings = field(default_factory=SinkSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    dkim: DkimSettings = field(default_factory=DkimSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    tsa: TsaSettings = field(default_factory=TsaSettings)
    suppression: SuppressionSettings = field(default_factory=SuppressionSettings)

    @property
    def effective_node_id(self) -> str:
        return self.node_id or _hostname()

    @property
    def effective_hostname(self) -> str:
        return self.smtp.hostname or _hostname()


@functools.cache
def _hostname() -> str:
    """The machine's host name, looked up once (it's on per-connection paths)."""
    return socket.gethostname()


_ENV_ALIASES = {
    "NIMBUS_RELAY_HOSTS": ("smtp", "relay_hosts"),
}


def _env_name(table: str, key: str) -> str:
    """The environment name of ``[table] key`` (an alias when it has one)."""
    for var, (section, name) in _ENV_ALIASES.items():
        if (section, name) == (table, key):
            return var
    return f"NIMBUS_{table.upper()}_{key.upper()}" if table else f"NIMBUS_{key.upper()}"


def _sections() -> dict[str, type]:
    # Every Settings field is a section dataclass built by its class as default_factory.
    sections: dict[str, type] = {}
    for f in dataclasses.fields(Settings):
        if isinstance(f.default_factory, type):
            sections[f.name] = f.default_factory
    return sections


def _convert(kind: str, value: Any) -> Any:
    """Convert a TOML or env value to the field's kind; raises ValueError with the reason."""
    if kind == "str":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"expected a string, got {value!r}")
        return str(value)
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            result = int(str(value).replace("_", "").replace(",", ""))
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
        if result < 0:
            raise ValueError(f"must not be negative, got {result}")
        return result
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if kind == "level":
        text = str(value).strip().lower()
        if text not in LOG_LEVELS:
            raise ValueError(f"unknown log level {value!r} (use one of {', '.join(LOG_LEVELS)})")
        return text
    if kind == "memory":
        text = str(value).strip()
        parse_memory_limit(text)
        return text
    if kind == "duration":
        return parse_duration(value)
    if kind == "size":
        return parse_size(value)
    if kind == "hostport":
        parse_hostport(str(value))
        return str(value)
    if kind in ("list", "cidrs"):
        items = value if isinstance(value, list) else [p for p in str(value).split(",")]
        items = [str(i).strip() for i in items if str(i).strip()]
        if kind == "cidrs":
            for item in items:
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"{item!r} is not a CIDR such as 10.0.0.0/8") from None
        return items
    raise AssertionError(f"unknown setting kind {kind}")


def _apply(target: Any, values: Mapping[str, Any], source: str, table: str) -> Any:
    """Return ``target`` with ``values`` applied; unknown keys and bad values raise ConfigError."""
    fields = {f.name: f for f in dataclasses.fields(target)}
    changes = {}
    for key, value in values.items():
        f = fields.get(key)
        where = f"{source}: [{table}] {key}" if table else f"{source}: {key}"
        # From the environment, also name the variable the user has to fix.
        var = f"; set by {_env_name(table, key)}" if source == "environment" else ""
        if f is None or "kind" not in f.metadata:
            known = ", ".join(sorted(n for n, g in fields.items() if "kind" in g.metadata))
            raise ConfigError(f"{where}: unknown key (known keys: {known})")
        try:
            changes[key] = _convert(f.metadata["kind"], value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}{var}") from None
    return dataclasses.replace(target, **changes)


def _unknown_section(name: str, source: str, sections: Mapping[str, type]) -> ConfigError:
    """A table that is no section (``[smtpp]``): name it and the closest known section,
    instead of calling it an unknown key of the top level."""
    close = difflib.get_close_matches(name, sorted(sections), n=1, cutoff=0.6)
    hint = f"did you mean [{close[0]}]? " if close else ""
    known = ", ".join(sorted(sections))
    return ConfigError(f"{source}: unknown section [{name}] ({hint}known sections: {known})")


def _layer(settings: Settings, tree: Mapping[str, Any], source: str) -> Settings:
    sections = _sections()
    for name, value in tree.items():
        if name not in sections and isinstance(value, Mapping):
            raise _unknown_section(name, source, sections)
    top = {k: v for k, v in tree.items() if k not in sections}
    settings = _apply(settings, top, source, "")
    for name in sections:
        if name in tree:
            if not isinstance(tree[name], Mapping):
                raise ConfigError(f"{source}: [{name}] must be a table")
            section = _apply(getattr(settings, name), tree[name], source, name)
            settings = dataclasses.replace(settings, **{name: section})
    return settings


def _env_tree(env: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    sections = _sections()
    for f in dataclasses.fields(Settings):
        if f.name not in sections and f"NIMBUS_{f.name.upper()}" in env:
            tree[f.name] = env[f"NIMBUS_{f.name.upper()}"]
    for name, cls in sections.items():
        for f in dataclasses.fields(cls):
            var = f"NIMBUS_{name.upper()}_{f.name.upper()}"
            if var in env:
                tree.setdefault(name, {})[f.name] = env[var]
    for var, (section, key) in _ENV_ALIASES.items():
        if var in env:
            tree.setdefault(section, {})[key] = env[var]
    return tree


def dotted_tree(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``{"smtp.listen": x, "node_id": y}`` -> ``{"smtp": {"listen": x}, "node_id": y}``."""
    tree: dict[str, Any] = {}
    for key, value in settings.items():
        section, _, name = key.rpartition(".")
        if section:
            tree.setdefault(section, {})[name] = value
        else:
            tree[name] = value
    return tree


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file (tomli: TOML 1.1). Raises ConfigError ``"<path>: ..."`` when it is
    unreadable or malformed; the one reader every config and policy file goes through."""
    try:
        with open(path, "rb") as fh:
            return tomli.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomli.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def load_settings(
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the node's settings.

    config_path: a TOML file, or None to use ``NIMBUS_CONFIG`` from env (or none).
    env: the environment (default ``os.environ``).
    overrides: from flags, as a tree ``{"smtp": {"listen": ...}, "node_id": ...}``.
    Raises ConfigError naming the file (or ``environment``/``flags``), table and key.
    """
    env = os.environ if env is None else env
    settings = Settings()
    path = config_path or env.get("NIMBUS_CONFIG")
    if path:
        settings = _layer(settings, read_toml(path), path)
    settings = _layer(settings, _env_tree(env), "environment")
    if overrides:
        settings = _layer(settings, overrides, "flags")
    if settings.sink.enabled:
        try:
            parse_hostport(settings.sink.endpoint)
        except ValueError as exc:
            raise ConfigError(f"[sink] endpoint: sink is enabled but {exc}") from None
    if settings.spool.write_timeout <= 0:
        raise ConfigError("[spool] write_timeout: must be more than 0s")
    if settings.http.max_recipients < 1:
        raise ConfigError("[http] max_recipients: must be at least 1")
    http = settings.http
    if http.auth_failure_burst and not (http.auth_failure_refill > 0 and http.auth_failure_peers):
        raise ConfigError(
            "[http] auth_failure_refill and auth_failure_peers must be above 0 "
            "when auth_failure_burst is set"
        )
    if bool(settings.smtp.tls_certificate) != bool(settings.smtp.tls_private_key):
        raise ConfigError("[smtp] tls_certificate and tls_private_key must be set together")
    if not 1 <= settings.delivery.mta_sts_port <= 65535:
        raise ConfigError(
            f"[delivery] mta_sts_port: must be 1-65535, got {settings.delivery.mta_sts_port}"
        )
    if settings.node.event_loop not in EVENT_LOOPS:
        raise ConfigError(
            f"[node] event_loop: must be one of {', '.join(EVENT_LOOPS)}, "
            f"got {settings.node.event_loop!r}"
        )
    cluster = settings.cluster
    if cluster.xfer_concurrency < 1:
        raise ConfigError("[cluster] xfer_concurrency: must be at least 1")
    if cluster.xfer_timeout <= 0:
        raise ConfigError("[cluster] xfer_timeout: must be more than 0s")
    if cluster.secret_file and not os.access(cluster.secret_file, os.R_OK):
        raise ConfigError(f"[cluster] secret_file: cannot read {cluster.secret_file!r}")
    if settings.suppression.cache_size and settings.suppression.cache_ttl <= 0:
        raise ConfigError("[suppression] cache_ttl: must be more than 0s when cache_size is set")
    ca_file = settings.delivery.tls_ca_file
    if ca_file and not os.access(ca_file, os.R_OK):
        raise ConfigError(f"[delivery] tls_ca_file: cannot read {ca_file!r}")
    return settings
