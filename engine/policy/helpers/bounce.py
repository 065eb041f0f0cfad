"""Bounce classification (KumoMTA ``crates/bounce-classify``): an SMTP reply line to a class.

Exports:
    BounceClassifier              ordered (class, regex) rules with a small LRU cache
    BounceClassifier.load(paths, *, cache_size=1024) -> BounceClassifier
    BounceClassifier.from_rules(rules, *, cache_size=1024) -> BounceClassifier
    BounceClassifier.classify(line) -> str
    BounceClassifier.classify_response(response) -> str
    parse_rules(tree, *, path) -> list[(class, pattern)]   one file's rules, validated
    PREDEFINED_CLASSES            KumoMTA's class names; any other name is a custom class
    UNCATEGORIZED                 the class when no rule matches

Files are TOML (JSON when the name ends in ``.json``) holding one table::

    [rules]
    InvalidRecipient = ["^(451|550) [45]\\\\.1\\\\.[1234] "]
    BadDomain = ["^(451|550) [45]\\\\.1\\\\.10 "]

Every rule of every file, in file order (class by class, then regex by regex),
forms one list; the first rule whose regex is found anywhere in the line
(``re.search``) gives the class. As a TOML table cannot repeat a key, a class's
position in the file orders all its rules. The line is ``Response.single_line()``:
``"<code> <c.s.d> <content>"``. Patterns are Python ``re`` syntax, which accepts
the Rust ``regex`` patterns KumoMTA files use (inline flags such as ``(?i)`` must
lead the pattern).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from engine.config.settings import ConfigError
from engine.policy.helpers import load_document
from engine.records import Response

__all__ = ["BounceClassifier", "parse_rules", "PREDEFINED_CLASSES", "UNCATEGORIZED"]

UNCATEGORIZED = "Uncategorized"
PREDEFINED_CLASSES: tuple[str, ...] = (
    "InvalidRecipient",
    "DNSFailure",
    "SpamBlock",
    "SpamContent",
    "ProhibitedAttachment",
    "RelayDenied",
    "AutoReply",
    "TransientFailure",
    "Subscribe",
    "Unsubscribe",
    "ChallengeResponse",
    "BadConfiguration",
    "BadConnection",
    "BadDomain",
    "ContentRelated",
    "InactiveMailbox",
    "InvalidSender",
    "MessageExpired",
    "NoAnswerFromHost",
    "PolicyRelated",
    "ProtocolErrors",
    "QuotaIssues",
    "RelayingIssues",
    "RoutingErrors",
    "SpamRelated",
    "VirusRelated",
    "AuthenticationFailed",
    "TooManyRecipients",
    UNCATEGORIZED,
)


def parse_rules(tree: Mapping[str, Any], *, path: str) -> list[tuple[str, re.Pattern[str]]]:
    """Validate one parsed rules file and compile its rules in order.

    Raises ConfigError ``"<path>: [rules] <class>: <reason>"`` for a value that is
    not a list of strings or a regex that does not compile; unknown top-level keys
    and a missing ``[rules]`` table are errors too.
    """
    for key in tree:
        if key != "rules":
            raise ConfigError(f"{path}: {key}: unknown key (known keys: rules)")
    rules = tree.get("rules")
    if not isinstance(rules, Mapping):
        raise ConfigError(f"{path}: rules: expected a [rules] table")
    out: list[tuple[str, re.Pattern[str]]] = []
    for cls, patterns in rules.items():
        where = f"{path}: [rules] {cls}"
        if not cls.strip():
            raise ConfigError(f"{where}: class name must not be empty")
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"{where}: expected a list of regex strings, got {patterns!r}")
        for pattern in patterns:
            try:
                out.append((cls, re.compile(pattern)))
            except re.error as exc:
                raise ConfigError(f"{where}: bad regex {pattern!r}: {exc}") from None
    return out


class BounceClassifier:
    """Classifies reply lines by the first matching rule; remembers recent answers.

    The cache maps a line to its class, least recently used evicted first, so the
    same remote reply repeated across a queue costs one scan of the rules.
    """

    __slots__ = ("_rules", "_cache")

    def __init__(
        self, rules: Iterable[tuple[str, re.Pattern[str]]], *, cache_size: int = 1024
    ) -> None:
        self._rules = tuple(rules)
        # Rules never change for a classifier (a reload builds a new one), so answers need no
        # TTL: a bounded LRU is enough. cache_size 0 turns the cache off.
        self._cache: LRUCache[str, str] | None = LRUCache(cache_size) if cache_size > 0 else None

    @classmethod
    def load(
        cls, paths: str | Path | Iterable[str | Path], *, cache_size: int = 1024
    ) -> BounceClassifier:
        """Load rules files in order; raises ConfigError naming file, ``[rules]`` and class."""
        if isinstance(paths, (str, Path)):
            paths = [paths]
        rules: list[tuple[str, re.Pattern[str]]] = []
        for path in paths:
            rules.extend(parse_rules(load_document(path), path=str(path)))
        return cls(rules, cache_size=cache_size)

    @classmethod
    def from_rules(
        cls, rules: Iterable[tuple[str, str]], *, cache_size: int = 1024
    ) -> BounceClassifier:
        """Build from ``(class, regex)`` pairs in priority order (raises re.error)."""
        return cls([(c, re.compile(p)) for c, p in rules], cache_size=cache_size)

    @property
    def rules(self) -> tuple[tuple[str, re.Pattern[str]], ...]:
        return self._rules

    def classify(self, line: str) -> str:
        """The class of the first rule found in ``line``, else ``Uncategorized``."""
        cached = self._cache.get(line) if self._cache is not None else None
        if cached is not None:
            return cached
        result = next((cls for cls, rx in self._rules if rx.search(line)), UNCATEGORIZED)
        if self._cache is not None:
            self._cache[line] = result
        return result

    def classify_response(self, response: Response) -> str:
        """Classify ``response.single_line()``."""
        return self.classify(response.single_line())
