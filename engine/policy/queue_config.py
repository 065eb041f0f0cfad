"""Scheduled-queue configuration and the retry/expiry decisions made from it.

Exports:
    QueueConfig                                    make_queue_config's fields we honour
    QUEUE_OPTION_NAMES                             every make_queue_config key we accept
    queue_config_from_options(options, *, where) -> QueueConfig
        KumoMTA-style options (``{"max_age": "3d", ...}``) validated into a QueueConfig
    retry_delay(cfg, num_attempts, rand) -> float  backoff with jitter (pure)
    next_attempt(cfg, created, now, num_attempts, rand) -> float | None
        the next due time, or None when the message must expire (pure)

Backoff is KumoMTA's (crates/kumod/src/queue/queue.rs): ``retry_interval * 2^n``
with n the zero-based number of attempts so far, capped at ``max_retry_interval``,
with jitter uniform in +/- half of min(retry_interval/20, 60 s). A message
expires when its age plus the next delay passes ``max_age``.

Options follow ``kumo.make_queue_config`` (crates/kumod/src/queue/config.rs,
``deny_unknown_fields``): durations are humantime strings (``"20m"``) or seconds;
``protocol = {smtp = {mx_list = ["host[:port]", ...]}}`` sets ``mx_list``. KumoMTA
keys that tune only its internal data structures (``strategy``,
``timerwheel_tick_interval``, ``refresh_strategy``, ``shrink_policy``) and other
protocols are refused with "not supported by nimbus yet" rather than ignored.
Fields parsed but not acted on (REFUSED_QUEUE_FIELDS: ``max_message_rate``,
``provider_name``, ``reap_interval``) are refused with ``key "<name>": not supported
by Nimbus`` unless they hold their default, from TOML and from policy answers
(``check_queue_config``). ``refresh_interval`` is how long routing caches the answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.config.backoff import backoff_delay
from engine.config.settings import ConfigError
from engine.config.throttle_spec import ThrottleSpec
from engine.config.units import parse_duration, parse_hostport

__all__ = [
    "QueueConfig",
    "QUEUE_OPTION_NAMES",
    "queue_config_from_options",
    "check_queue_config",
    "REFUSED_QUEUE_FIELDS",
    "retry_delay",
    "next_attempt",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    """Per scheduled queue.

    retry_interval: first retry delay (seconds).
    max_retry_interval: cap on the delay, or None for no cap.
    max_age: a message older than this expires (551 5.4.7).
    egress_pool: pool name, or None for ``unspecified``.
    mx_list: explicit smarthosts ``host[:port]`` instead of MX lookup, or None.
    max_message_rate: ThrottleSpec text (``"100/min"``) limiting the move from the
        scheduled to the ready queue, or None for no limit.
    provider_name: explicit provider for metrics rollups, or None (derived from site).
    reap_interval: idle time after which the scheduled queue is dropped from memory.
    refresh_interval: how often ``get_queue_config`` is asked again for this queue.
    """

    retry_interval: float = 20 * 60.0
    max_retry_interval: float | None = None
    max_age: float = 7 * 86400.0
    egress_pool: str | None = None
    mx_list: tuple[str, ...] | None = None
    max_message_rate: str | None = None
    provider_name: str | None = None
    reap_interval: float = 10 * 60.0
    refresh_interval: float = 60.0


def retry_delay(cfg: QueueConfig, num_attempts: int, rand: float) -> float:
    """Delay before the next attempt.

    num_attempts: attempts made so far (>= 1 after a failure); n = num_attempts - 1.
    rand: a uniform sample in [0, 1) supplying the jitter.
    """
    cap = math.inf if cfg.max_retry_interval is None else cfg.max_retry_interval
    # Unjittered: KumoMTA's jitter below is additive, not backoff_delay's equal jitter.
    delay = backoff_delay(num_attempts, base=cfg.retry_interval, cap=cap)
    jitter_span = min(cfg.retry_interval / 20.0, 60.0)
    return max(0.0, delay + (rand - 0.5) * jitter_span)


def next_attempt(
    cfg: QueueConfig, created: float, now: float, num_attempts: int, rand: float
) -> float | None:
    """The next due time after a transient failure, or None if the message expires first."""
    due = now + retry_delay(cfg, num_attempts, rand)
    if due - created > cfg.max_age:
        return None
    return due


# -- options -> QueueConfig ------------------------------------------------------


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _throttle_spec(value: Any) -> str:
    ThrottleSpec.parse(_string(value))  # KumoMTA's grammar; ValueError says what is wrong
    return value


def _protocol(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, Mapping) or len(value) != 1:
        raise ValueError('expected a table with one key, such as {smtp = {mx_list = ["host:25"]}}')
    ((kind, body),) = value.items()
    if kind != "smtp":
        raise ValueError(f"protocol {kind!r} is not supported by nimbus yet (only smtp)")
    if not isinstance(body, Mapping) or set(body) - {"mx_list"}:
        raise ValueError("smtp takes only mx_list")
    hosts = body.get("mx_list", [])
    if not isinstance(hosts, list):
        raise ValueError(f"mx_list: expected a list of 'host[:port]', got {hosts!r}")
    for host in hosts:
        if not isinstance(host, str):
            raise ValueError(
                f"mx_list: only 'host[:port]' strings are supported by nimbus yet, got {host!r}"
            )
        parse_hostport(host, default_port=25)
    return tuple(hosts) or None


def _duration(value: Any) -> float:
    return parse_duration(value)


_OPTIONS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    # option name: (QueueConfig field, converter raising ValueError)
    "retry_interval": ("retry_interval", _duration),
    "max_retry_interval": ("max_retry_interval", _duration),
    "max_age": ("max_age", _duration),
    "egress_pool": ("egress_pool", _string),
    "max_message_rate": ("max_message_rate", _throttle_spec),
    "protocol": ("mx_list", _protocol),
    "provider_name": ("provider_name", _string),
    "reap_interval": ("reap_interval", _duration),
    "refresh_interval": ("refresh_interval", _duration),
}
_UNSUPPORTED = frozenset(
    {"strategy", "timerwheel_tick_interval", "refresh_strategy", "shrink_policy"}
)
QUEUE_OPTION_NAMES: frozenset[str] = frozenset(_OPTIONS) | _UNSUPPORTED
REFUSED_QUEUE_FIELDS: frozenset[str] = frozenset(
    {"max_message_rate", "provider_name", "reap_interval"}
)
"""Parsed for KumoMTA compatibility but read nowhere: only their defaults are accepted
(the scheduled queue is one heap, so there is nothing to reap; no scheduled->ready rate
or queue-level provider yet)."""
_DEFAULT = QueueConfig()


def check_queue_config(cfg: QueueConfig, *, where: str) -> None:
    """Raise ConfigError for a REFUSED_QUEUE_FIELDS field that is not its default."""
    for name in sorted(REFUSED_QUEUE_FIELDS):
        if getattr(cfg, name) != getattr(_DEFAULT, name):
            raise ConfigError(f'{where} key "{name}": not supported by Nimbus')


def queue_config_from_options(options: Mapping[str, Any], *, where: str) -> QueueConfig:
    """Build a QueueConfig from ``make_queue_config`` options; unset keys keep defaults.

    options: option name -> raw TOML/JSON value (``{"max_age": "3d"}``).
    where: the context for errors, ``"<file>: [<table>]"``; the key is appended.
    Raises ConfigError ``"<where> <key>: <reason>"`` for an unknown key, a KumoMTA
    option nimbus does not implement, or a bad value.
    """
    changes: dict[str, Any] = {}
    for key, value in options.items():
        if key in _UNSUPPORTED:
            raise ConfigError(f"{where} {key}: not supported by nimbus yet")
        spec = _OPTIONS.get(key)
        if spec is None:
            known = ", ".join(sorted(_OPTIONS))
            raise ConfigError(f"{where} {key}: unknown queue option (known: {known})")
        field_name, convert = spec
        try:
            changes[field_name] = convert(value)
        except ValueError as exc:
            raise ConfigError(f"{where} {key}: {exc}") from None
    cfg = QueueConfig(**changes)
    check_queue_config(cfg, where=where)
    return cfg
