"""The message object policy handlers receive (KumoMTA's Message API, in Python).

Exports:
    PolicyMessage   id/sender/recipient, meta get/set, raw data, header access and edits
    check_meta_value(key, value)
                    raise TypeError/ValueError naming the key and the part of ``value`` that
                    is not JSON (the spool stores meta as JSON; KumoMTA's meta is a JSON object)
    check_meta(meta) the same for every key of a meta dict (a handler may edit ``msg.meta``
                    in place, past set_meta)

It wraps a message under construction at reception: handlers may change meta
(``queue``, ``tenant``, ``campaign``, ``routing_domain``, ``x_*``) and headers.
The spool stores what it holds when the handler returns.
"""

from __future__ import annotations

import email.header
import email.utils
import math
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from engine.policy.conformance import fix, parse_labels, problems
from engine.policy.scheduling import Scheduling
from engine.records import Json

if TYPE_CHECKING:  # for annotations only: the crypto loads when a policy signs (dkim_sign)
    from engine.dkim.signer import Signer

__all__ = ["PolicyMessage", "check_meta", "check_meta_value"]

_HEADER_END = re.compile(rb"\r?\n\r?\n")


class PolicyMessage:
    """A message being received; headers are edited in place on the raw bytes.

    id: the spool id. sender / recipient: envelope addresses.
    data: the whole message, CRLF line endings. meta: JSON-able metadata.
    """

    __slots__ = ("_id", "_sender", "_recipient", "_data", "_meta", "_dkim", "_lines")

    def __init__(
        self,
        id: str,
        sender: str,
        recipient: str,
        data: bytes,
        meta: Mapping[str, Json] | None = None,
    ) -> None:
        self._id = id
        self._sender = sender
        self._recipient = recipient
        self._data = data
        self._lines: list[bytes] | None = None
        self._meta: dict[str, Json] = dict(meta or {})
        self._dkim: list[Signer] = []

    def id(self) -> str:
        return self._id

    def sender(self) -> str:
        return self._sender

    def recipient(self) -> str:
        return self._recipient

    def set_recipient(self, recipient: str) -> None:
        self._recipient = recipient

    def set_sender(self, sender: str) -> None:
        self._sender = sender

    def get_meta(self, key: str, default: Json = None) -> Json:
        return self._meta.get(key, default)

    def set_meta(self, key: str, value: Json) -> None:
        """Set meta ``key``. Raises TypeError (a key that is not a str, a value that is
        not JSON: a set, bytes, an object) or ValueError (NaN, infinity), naming the key:
        checked here so the policy author sees the line that set it, not a spool error."""
        if not isinstance(key, str):
            raise TypeError(f"set_meta: the key must be a str, not {type(key).__name__}")
        check_meta_value(key, value)
        self._meta[key] = value

    @property
    def meta(self) -> dict[str, Json]:
        return self._meta

    def get_data(self) -> bytes:
        return self._data

    def set_data(self, data: bytes) -> None:
        self._data = data
        self._lines = None

    # -- DKIM --------------------------------------------------------------------

    def dkim_sign(self, signer: object) -> None:
        """Ask for a DKIM signature by ``signer`` (an ``engine.dkim.signer.Signer``).

        Only recorded here, so handlers stay cheap: the engine signs the final bytes
        after the reception event returns, then spools them. Raises TypeError for
        anything that is not a Signer.
        """
        from engine.dkim.signer import Signer  # here: importing a message must not load the crypto

        if not isinstance(signer, Signer):
            raise TypeError(
                f"dkim_sign takes an engine.dkim.signer.Signer, not {type(signer).__name__}"
            )
        self._dkim.append(signer)

    def dkim_requests(self) -> tuple[Signer, ...]:
        """The Signers recorded by ``dkim_sign``, in call order."""
        return tuple(self._dkim)

    # -- headers ---------------------------------------------------------------

    def _split(self) -> tuple[bytes, bytes]:
        m = _HEADER_END.search(self._data)
        if m is None:
            return self._data, b""
        return self._data[: m.start()], self._data[m.start() :]

    def _header_lines(self) -> list[bytes]:
        """The header block as logical lines (folded continuations kept), parsed once
        per version of the data: policies read several headers per message."""
        if self._lines is not None:
            return self._lines
        head, _ = self._split()
        lines: list[bytes] = []
        for raw in head.split(b"\n"):
            raw = raw.rstrip(b"\r")
            if raw[:1] in (b" ", b"\t") and lines:
                lines[-1] += b"\r\n" + raw
            elif raw:
                lines.append(raw)
        self._lines = lines  # callers build new lists from it; never mutated in place
        return lines

    def get_all_named_header_values(self, name: str) -> list[str]:
        wanted = name.lower().encode()
        out = []
        for line in self._header_lines():
            key, sep, value = line.partition(b":")
            if sep and key.strip().lower() == wanted:
                out.append(_decode(value))
        return out

    def get_first_named_header_value(self, name: str) -> str | None:
        values = self.get_all_named_header_values(name)
        return values[0] if values else None

    def remove_all_named_headers(self, name: str) -> None:
        wanted = name.lower().encode()
        self._rebuild(
            [ln for ln in self._header_lines() if ln.partition(b":")[0].strip().lower() != wanted]
        )

    def append_header(self, name: str, value: str) -> None:
        self._rebuild(self._header_lines() + [_encode(name, value)])

    def prepend_header(self, name: str, value: str) -> None:
        self._rebuild([_encode(name, value)] + self._header_lines())

    def _rebuild(self, lines: list[bytes]) -> None:
        _, rest = self._split()
        if not rest:
            rest = b"\r\n\r\n"
        self._data = b"\r\n".join(lines) + rest
        self._lines = None

    def get_all_headers(self) -> list[tuple[str, str]]:
        """Every header as (name, decoded value), in order."""
        out = []
        for line in self._header_lines():
            key, sep, value = line.partition(b":")
            if sep:
                out.append((key.decode("utf-8", "replace").strip(), _decode(value)))
        return out

    def _address_header(self, name: str) -> tuple[str, str] | None:
        # Parse the raw value first, then decode only the display name: a decoded
        # "Müller, Hans" would otherwise split at its comma.
        wanted = name.lower().encode()
        for line in self._header_lines():
            key, sep, value = line.partition(b":")
            if sep and key.strip().lower() == wanted:
                raw = value.decode("utf-8", "replace").replace("\r\n", "")
                display, address = email.utils.parseaddr(raw)
                return _decode(display.encode("utf-8")), address
        return None

    def from_header(self) -> tuple[str, str] | None:
        """The From header parsed as (display name, address), or None."""
        return self._address_header("From")

    def to_header(self) -> tuple[str, str] | None:
        """The To header parsed as (display name, address), or None (first mailbox)."""
        return self._address_header("To")

    def remove_x_headers(self, names: list[str] | None = None) -> None:
        """Drop ``X-*`` headers: all of them, or only those named (case-insensitive)."""
        wanted = None if names is None else {n.lower().encode() for n in names}

        def keep(line: bytes) -> bool:
            name = line.partition(b":")[0].strip().lower()
            if not name.startswith(b"x-"):
                return True
            return wanted is not None and name not in wanted

        self._rebuild([ln for ln in self._header_lines() if keep(ln)])

    def import_x_headers(self, names: list[str] | None = None) -> None:
        """Copy ``X-*`` headers (all, or those named) into meta: lowercase, '-' -> '_'."""
        wanted = None if names is None else {n.lower() for n in names}
        for name, value in self.get_all_headers():
            lower = name.lower()
            if lower.startswith("x-") and (wanted is None or lower in wanted):
                self._meta[lower.replace("-", "_")] = value

    def check_fix_conformance(self, checks: str = "", fixes: str = "") -> str | None:
        """KumoMTA's conformance check: apply ``fixes`` (labels joined by '|'), then report
        problems among ``checks`` that remain, as an error string (None when clean)."""
        check_set, fix_set = parse_labels(checks), parse_labels(fixes)
        if fix_set and problems(self._data) & fix_set:
            # All requested fixes: one fix can expose another (re-encoding makes a MIME part).
            self._lines = None
            self._data = fix(
                self._data,
                fix_set,
                now=time.time(),
                hostname=str(self._meta.get("hostname") or "localhost"),
            )
        remaining = problems(self._data) & check_set
        if remaining:
            return "message fails conformance checks: " + ", ".join(sorted(remaining))
        return None

    def set_scheduling(self, options: Mapping[str, Json] | None) -> None:
        """Constrain delivery: first_attempt, expires, and a dow/tz/start/end window.
        ``None`` clears it. Raises ValueError naming the bad key."""
        if options is None:
            self._meta.pop("scheduling", None)
            return
        self._meta["scheduling"] = Scheduling.from_options(options).to_json()

    def get_scheduling(self) -> Scheduling | None:
        raw = self._meta.get("scheduling")
        return Scheduling.from_options(raw) if isinstance(raw, Mapping) else None


def check_meta(meta: Mapping[str, object]) -> None:
    """Raise TypeError/ValueError naming the first key whose value (or which key itself)
    is not JSON."""
    for key, value in meta.items():
        if not isinstance(key, str):
            raise TypeError(f"meta has a {type(key).__name__} key {key!r}; meta keys are str")
        if value is None or type(value) in _SCALARS:  # nearly every value: no deeper look
            continue
        check_meta_value(key, value)


_SCALARS = frozenset({str, int, bool})


def check_meta_value(key: str, value: object) -> None:
    """Raise TypeError/ValueError unless ``value`` is JSON: str, int, float (finite), bool,
    None, list/tuple of JSON, dict with str keys of JSON. The message names ``key`` and
    where inside the value the bad part is (``x_tags[1]``, ``x_map["a"]``)."""
    problem = _json_problem(value, f"meta {key!r}")
    if problem is not None:
        raise problem


def _json_problem(value: object, where: str) -> TypeError | ValueError | None:
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return ValueError(f"{where} is {value}, which JSON cannot represent")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _json_problem(item, f"{where}[{i}]")
            if problem is not None:
                return problem
        return None
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                return TypeError(f"{where} has a {type(k).__name__} key {k!r}; JSON keys are str")
            problem = _json_problem(item, f"{where}[{k!r}]")
            if problem is not None:
                return problem
        return None
    return TypeError(
        f"{where} is a {type(value).__name__}, not a JSON value "
        "(str, int, float, bool, None, list, or dict with str keys)"
    )


def _decode(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").replace("\r\n", "").strip()
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (ValueError, LookupError):
        return text


def _encode(name: str, value: str) -> bytes:
    if value.isascii():
        return f"{name}: {value}".encode()
    # Fold with CRLF: the default linesep would put bare LFs in the header block.
    encoded = email.header.Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}".encode()
