"""A log hook a policy configures (``nimbus.configure_log_hook``): URL, record types, batching.

Exports:
    LogHook            one webhook (validated at construction)
    tsa_hooks(urls)    one hook per TSA base URL (``<url>/publish_log_v1``)
    TSA_RECORD_TYPES   the record types published to the TSA
    redact_url(url)    the URL with its userinfo password masked, for names and log lines

A hook URL may carry credentials in its userinfo (``https://user:pw@host/``, which
aiohttp sends as Basic auth); they are masked wherever the URL is shown: the TSA
hook's name (a key in the hook queue, a metrics label, a field of log lines), the
``url`` of ``log_hook_delivery_failed`` and validation errors. ``headers`` (maybe an
``Authorization``) are left out of ``repr``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit, urlunsplit

from engine.records import LogRecord, RecordType

__all__ = ["LogHook", "tsa_hooks", "TSA_RECORD_TYPES", "redact_url"]

TSA_RECORD_TYPES = frozenset(
    {RecordType.TRANSIENT_FAILURE, RecordType.BOUNCE, RecordType.EXPIRATION}
)


def redact_url(url: str) -> str:
    """``url`` with the password of its userinfo (RFC 3986 §3.2.1) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


@dataclass(frozen=True, slots=True, kw_only=True)
class LogHook:
    """One webhook.

    name: unique; the ``hook_name`` policy sees and the key of persisted rows.
    url: where batches are POSTed as a JSON array (``Content-Type: application/json``).
    record_types: type names to publish, or None for every type.
    batch_size: most records per POST. max_latency: seconds a partial batch waits.
    headers: extra request headers. timeout: seconds per POST.
    backoff_base / backoff_max: retry delay after the first failure / its cap (seconds).
    max_pending: rows kept for this hook before the oldest are dropped.
    """

    name: str
    url: str
    record_types: frozenset[str] | None = None
    batch_size: int = 100
    max_latency: float = 1.0
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = 10.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_pending: int = 1_000_000

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("log hook name must not be empty")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(
                f"log hook {self.name!r}: url must be http(s), got {redact_url(self.url)!r}"
            )
        if self.batch_size < 1 or self.max_pending < 1:
            raise ValueError(f"log hook {self.name!r}: batch_size and max_pending must be >= 1")
        if self.max_latency < 0 or self.timeout <= 0:
            raise ValueError(f"log hook {self.name!r}: max_latency >= 0 and timeout > 0")
        if not 0 < self.backoff_base <= self.backoff_max:
            raise ValueError(f"log hook {self.name!r}: need 0 < backoff_base <= backoff_max")
        if self.record_types is not None:
            object.__setattr__(self, "record_types", frozenset(str(t) for t in self.record_types))
        object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))

    @property
    def display_url(self) -> str:
        """The URL as log lines show it (userinfo password masked)."""
        return redact_url(self.url)

    def wants(self, record: LogRecord) -> bool:
        return self.record_types is None or str(record.type) in self.record_types


def tsa_hooks(urls: Iterable[str]) -> list[LogHook]:
    """One hook per TSA base URL, publishing the records automation rules match.

    KumoMTA's ``shaping.lua`` disables Reception, Delayed, Rejection, rebind and
    transfer records for TSA; rules act on failures, so Nimbus sends only those.
    """
    return [
        LogHook(
            name=f"tsa:{redact_url(url)}",
            url=url.rstrip("/") + "/publish_log_v1",
            record_types=TSA_RECORD_TYPES,
        )
        for url in urls
    ]
