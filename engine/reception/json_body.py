"""JSON request bodies: decoding under the limits every HTTP route shares (inject, admin).

Exports:
    decode_json(raw) -> Json     the body's JSON value, or BodyInvalid
    check_json(value)            the limits below, for a value decoded elsewhere
    BodyInvalid                  ``field`` (JSON path, ``""`` = the body) and ``reason``
    MAX_DEPTH                    deepest nesting of arrays and objects accepted

The limits, each a 400 instead of an exception deeper in the node:
- nesting deeper than MAX_DEPTH (``json.loads`` recurses: a body of 100,000 ``[``
  raised RecursionError; a value a little less deep would raise it later, when
  the meta is serialized or a template walks it);
- lone surrogates (``"\\ud800"`` is valid JSON, RFC 8259 §8.2, but no UTF-8 can
  carry it, so building the message raised UnicodeEncodeError);
- ``NaN`` / ``Infinity`` (not JSON, RFC 8259 §6; ``json.dumps`` would write them
  back into log records) and integers longer than Python converts (ValueError).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from engine.records import Json

__all__ = ["MAX_DEPTH", "BodyInvalid", "check_json", "decode_json"]

MAX_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


class BodyInvalid(ValueError):
    """The body is not JSON within the limits.

    field: JSON path of the offending value (``recipients[2].email``); ``""`` is the body.
    reason: what is wrong, for the ``error`` member of the 400 answer.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field or 'body'}: {reason}")
        self.field = field
        self.reason = reason


def _no_constant(name: str) -> float:
    raise BodyInvalid("", f"malformed JSON: {name} is not a JSON number (RFC 8259 §6)")


def decode_json(raw: bytes) -> Json:
    """``raw`` as a JSON value (UTF-8, RFC 8259 §8.1), checked by check_json."""
    try:
        value: Json = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise BodyInvalid("", f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except BodyInvalid:
        raise
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise BodyInvalid("", f"malformed JSON: {exc}") from None
    check_json(value)
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_text(text: str, path: str) -> None:
    if not text.isascii() and _SURROGATE.search(text):
        raise BodyInvalid(path, "contains a lone UTF-16 surrogate (not encodable as UTF-8)")


def check_json(value: Json) -> None:
    """Raise BodyInvalid naming the first value nested deeper than MAX_DEPTH or holding
    a lone surrogate (in a string or an object key). Iterative: any depth is safe."""
    stack: list[tuple[Json, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item, path)
            continue
        if isinstance(item, Mapping | Sequence) and depth >= MAX_DEPTH:
            raise BodyInvalid(path, f"nested deeper than {MAX_DEPTH} levels")
        children: list[tuple[Json, str, int]] = []
        if isinstance(item, Mapping):
            for key, child in item.items():
                where = _join(path, str(key))
                _check_text(str(key), where)
                children.append((child, where, depth + 1))
        elif isinstance(item, Sequence):
            children = [(child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item)]
        stack.extend(reversed(children))  # popped in document order
