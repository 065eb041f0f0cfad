"""Smart-sink replies: which answer a recipient gets, decided purely from the responses file.

Exports:
    Responses            the parsed responses file; ``decide(recipient, rand=, rand2=)``
    Decision             code, text, delay; ``reply()`` is the wire form
    load_responses(path) -> Responses        (raises ConfigError)
    parse_responses(tree, source) -> Responses
    ACCEPT               the plain acceptance, ``250 2.0.0 OK``

The file has KumoMTA's smart-sink shape (``examples/smart-sink-docker/policy/responses.toml``)::

    [default]                 # percentages of recipients bounced / deferred; optional latency
    bounce = 10
    defer = 5
    latency = "20ms"          # or a range: ["50ms", "500ms"]

    [domain."gmail.com"]      # per-domain override (``["gmail.com"]`` at top level also works);
    bounce = 10               # keys left out are taken from [default]
    defer = 10

    [[defer."gmail.com"]]     # texts to choose from; [[defer.default]] / [[bounce.default]]
    code = 421                # serve domains without their own list
    msg = "4.7.28 ... - gsmtp"

Before the percentages, the local part can ask for an answer (KumoMTA's conventions):
``tempfail`` anywhere -> ``451 4.3.0``, ``permfail`` anywhere -> ``550 5.1.1``, and a
``NNN-`` prefix (``450-foo``, ``550-bar``) -> that code; a ``2NN-`` prefix is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.config.settings import ConfigError, read_toml
from engine.config.units import parse_duration

__all__ = ["Responses", "Decision", "Rule", "Reply", "load_responses", "parse_responses", "ACCEPT"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The answer to one RCPT.

    code: the SMTP reply code (250 accepts).
    text: the reply text after the code; lines separated by ``\\n`` for a multi-line reply.
    delay: seconds to wait before replying.
    """

    code: int
    text: str
    delay: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.code < 400

    def reply(self) -> str:
        """The reply as sent: ``"550 5.1.1 ..."``, multi-line as ``550-...\\r\\n550 ...``
        (RFC 5321 §4.2.1)."""
        lines = self.text.split("\n")
        head = [f"{self.code}-{line}" for line in lines[:-1]]
        return "\r\n".join([*head, f"{self.code} {lines[-1]}"])


ACCEPT = Decision(code=250, text="2.0.0 OK")


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """One configured refusal text: ``code`` and ``text`` (normalised ``msg``)."""

    code: int
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """Chances for one domain: ``bounce`` and ``defer`` in percent; latency (lo, hi) seconds."""

    bounce: float = 0.0
    defer: float = 0.0
    latency: tuple[float, float] = (0.0, 0.0)


# Built-in texts when neither the domain nor ``default`` lists any (KumoMTA's sink uses
# "boing!" / "later!").
_FALLBACK_BOUNCE = (Reply(code=550, text="5.0.0 boing!"),)
_FALLBACK_DEFER = (Reply(code=451, text="4.0.0 later!"),)
_PREFIX = re.compile(r"^([245])(\d\d)-")


@dataclass(frozen=True, slots=True, kw_only=True)
class Responses:
    """A parsed responses file.

    default: the rule for domains without their own.
    domains: per-domain rules (lower-case domain -> Rule).
    bounces / defers: reply lists per lower-case domain, ``"default"`` for the rest.
    source: the file it came from (for log lines).
    """

    default: Rule = Rule()
    domains: Mapping[str, Rule] = field(default_factory=dict)
    bounces: Mapping[str, tuple[Reply, ...]] = field(default_factory=dict)
    defers: Mapping[str, tuple[Reply, ...]] = field(default_factory=dict)
    source: str = ""

    def decide(self, recipient: str, *, rand: float, rand2: float, rand3: float = 0.0) -> Decision:
        """The answer for ``recipient``.

        rand: uniform in [0, 1); picks bounce (below ``bounce`` %), then defer (below
            ``bounce + defer`` %), else accept.
        rand2: uniform in [0, 1); picks the text from the matching list.
        rand3: uniform in [0, 1); picks the delay inside a latency range (0: its low end).
        Returns a Decision; its delay is the domain's latency, whatever the answer.
        """
        local, _, domain = recipient.rpartition("@")
        domain = domain.lower()
        rule = self.domains.get(domain, self.default)
        lo, hi = rule.latency
        delay = lo + (hi - lo) * rand3
        chosen = convention(local)
        if chosen is None:
            roll = rand * 100.0
            if roll < rule.bounce:
                chosen = _pick(self.bounces, domain, _FALLBACK_BOUNCE, rand2)
            elif roll < rule.bounce + rule.defer:
                chosen = _pick(self.defers, domain, _FALLBACK_DEFER, rand2)
            else:
                chosen = ACCEPT
        return Decision(code=chosen.code, text=chosen.text, delay=delay) if delay else chosen


def convention(local: str) -> Decision | None:
    """What the local part asks for (KumoMTA's smart sink), or None to use the file.

    ``tempfail`` anywhere -> 451 4.3.0; ``permfail`` anywhere -> 550 5.1.1; a ``NNN-``
    prefix -> NNN with the class's generic enhanced code (``2NN-``: accepted).
    """
    lowered = local.lower()
    if "tempfail" in lowered:
        return Decision(code=451, text="4.3.0 tempfail requested")
    if "permfail" in lowered:
        return Decision(code=550, text="5.1.1 permfail requested")
    m = _PREFIX.match(lowered)
    if m is None:
        return None
    if m.group(1) == "2":
        return ACCEPT
    return Decision(code=int(m.group(1) + m.group(2)), text=f"{m.group(1)}.0.0 you said {local}")


def _pick(
    lists: Mapping[str, tuple[Reply, ...]], domain: str, fallback: tuple[Reply, ...], rand2: float
) -> Decision:
    choices = lists.get(domain) or lists.get("default") or fallback
    choice = choices[min(int(rand2 * len(choices)), len(choices) - 1)]
    return Decision(code=choice.code, text=choice.text)


# --- loading ---------------------------------------------------------------------------

_RESERVED = ("default", "domain", "bounce", "defer")
_RULE_KEYS = ("bounce", "defer", "latency")


def load_responses(path: str) -> Responses:
    """Read and check a responses file. Raises ConfigError naming file, table and key."""
    return parse_responses(read_toml(path), path)


def parse_responses(tree: Mapping[str, Any], source: str) -> Responses:
    """Build Responses from a parsed TOML tree; ``source`` names it in errors."""
    default = _rule(tree.get("default", {}), Rule(), source, "[default]")
    domains: dict[str, Rule] = {}
    per_domain = _table(tree.get("domain", {}), source, "[domain]")
    for name, table in per_domain.items():
        domains[name.lower()] = _rule(table, default, source, f'[domain."{name}"]')
    for name, table in tree.items():
        if name in _RESERVED:
            continue
        if not isinstance(table, Mapping):
            raise ConfigError(
                f"{source}: {name}: unknown key (expected tables: default, "
                f"domain, bounce, defer, or a domain's table)"
            )
        domains[name.lower()] = _rule(table, default, source, f'["{name}"]')
    bounces = _reply_lists(tree.get("bounce", {}), source, "bounce")
    defers = _reply_lists(tree.get("defer", {}), source, "defer")
    return Responses(
        default=default, domains=domains, bounces=bounces, defers=defers, source=source
    )


def _table(value: Any, source: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {where} must be a table")
    return value


def _rule(value: Any, base: Rule, source: str, where: str) -> Rule:
    table = _table(value, source, where)
    for key in table:
        if key not in _RULE_KEYS:
            raise ConfigError(
                f"{source}: {where} {key}: unknown key (known keys: {', '.join(_RULE_KEYS)})"
            )
    bounce = _percent(table.get("bounce", base.bounce), source, where, "bounce")
    defer = _percent(table.get("defer", base.defer), source, where, "defer")
    if bounce + defer > 100:
        raise ConfigError(f"{source}: {where} bounce + defer: {bounce:g} + {defer:g} is over 100")
    latency = base.latency
    if "latency" in table:
        try:
            latency = parse_latency(table["latency"])
        except ValueError as exc:
            raise ConfigError(f"{source}: {where} latency: {exc}") from None
    return Rule(bounce=bounce, defer=defer, latency=latency)


def _percent(value: Any, source: str, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ConfigError(f"{source}: {where} {key}: expected a percentage 0-100, got {value!r}")
    return float(value)


def parse_latency(value: Any) -> tuple[float, float]:
    """``"200ms"`` -> (0.2, 0.2); ``["50ms", "500ms"]`` -> (0.05, 0.5). Raises ValueError."""
    if isinstance(value, list):
        if len(value) != 2:
            raise ValueError(f"expected a duration or [low, high], got {value!r}")
        lo, hi = parse_duration(value[0]), parse_duration(value[1])
        if lo > hi:
            raise ValueError(f"low end {value[0]!r} is above high end {value[1]!r}")
        return lo, hi
    one = parse_duration(value)
    return one, one


def _reply_lists(value: Any, source: str, kind: str) -> dict[str, tuple[Reply, ...]]:
    table = _table(value, source, f"[{kind}]")
    out: dict[str, tuple[Reply, ...]] = {}
    for name, items in table.items():
        where = f'[[{kind}."{name}"]]'
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{source}: {where} must be a non-empty array of tables")
        out[name.lower()] = tuple(
            _reply(item, source, f"{where} #{n}") for n, item in enumerate(items, 1)
        )
    return out


def _reply(item: Any, source: str, where: str) -> Reply:
    table = _table(item, source, where)
    for key in table:
        if key not in ("code", "msg"):
            raise ConfigError(f"{source}: {where} {key}: unknown key (known keys: code, msg)")
    code = table.get("code")
    if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
        raise ConfigError(f"{source}: {where} code: expected a refusal code 400-599, got {code!r}")
    msg = table.get("msg")
    if not isinstance(msg, str) or not msg.strip():
        raise ConfigError(f"{source}: {where} msg: expected a non-empty string, got {msg!r}")
    return Reply(code=code, text=normalise_text(code, msg))


def normalise_text(code: int, msg: str) -> str:
    """The reply text without code prefixes: real-world texts pasted from logs often carry
    them (``"550-5.1.1 ...\\r\\n550 5.1.1 ..."``); each line loses a leading ``NNN-``,
    ``NNN `` or ``NNN,`` equal to ``code``. Lines are joined with ``\\n``."""
    lines = [line.strip() for line in msg.replace("\r\n", "\n").split("\n")]
    prefix = str(code)
    out = []
    for line in lines:
        if line.startswith(prefix) and line[3:4] in ("-", " ", ","):
            line = line[4:].lstrip()
        if line:
            out.append(line)
    return "\n".join(out) or msg.strip()
