"""JSON body limits: decode_json and check_json (engine.reception.json_body)."""

from __future__ import annotations

import pytest

from engine.reception.inject.request import RequestInvalid, parse_request
from engine.reception.json_body import MAX_DEPTH, BodyInvalid, check_json, decode_json


@pytest.mark.parametrize(
    "raw, field, reason",
    [
        (b"[" * 100_000 + b"]" * 100_000, "", "nested deeper"),
        (
            b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
            "[0]" * (MAX_DEPTH - 1) + "[0]",
            "nested",
        ),
        (b'{"a": "\\ud800"}', "a", "surrogate"),
        (b'{"\\udfff": 1}', "\udfff", "surrogate"),
        (b'[1, {"b": ["ok", "x\\udc00y"]}]', "[1].b[1]", "surrogate"),
        (b"NaN", "", "NaN is not a JSON number"),
        (b"[-Infinity]", "", "-Infinity"),
        (b"1" * 5000, "", "malformed JSON"),
        (b"\xff\xfe{", "", "malformed JSON"),
        (b"{", "", "malformed JSON"),
    ],
)
def test_rejected(raw: bytes, field: str, reason: str) -> None:
    with pytest.raises(BodyInvalid) as caught:
        decode_json(raw)
    assert caught.value.field == field
    assert reason in caught.value.reason


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "raw, value",
    [
        (b'{"a": "\\ud83d\\ude00"}', {"a": "\U0001f600"}),  # a surrogate pair is one character
        (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, nested(MAX_DEPTH)),
        (b'"caf\xc3\xa9"', "café"),
        (b"null", None),
    ],
)
def test_accepted(raw: bytes, value: object) -> None:
    assert decode_json(raw) == value


def test_check_reports_the_first_offender_in_document_order() -> None:
    with pytest.raises(BodyInvalid) as caught:
        check_json({"a": ["ok", "\ud800"], "b": "\udc00"})
    assert caught.value.field == "a[1]"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"content": "Subject: \udc00\r\n\r\nx"}, "content"),
        ({"substitutions": {"name": "\ud800"}}, "substitutions.name"),
        (
            {"recipients": [{"email": "a@b.test", "metadata": {"k": "\ud800"}}]},
            "recipients[0].metadata.k",
        ),
    ],
)
def test_parse_request_names_the_field_of_a_lone_surrogate(body: dict, field: str) -> None:
    base = {"envelope_sender": "", "content": "x", "recipients": [{"email": "a@b.test"}]}
    with pytest.raises(RequestInvalid) as caught:
        parse_request({**base, **body})
    assert caught.value.field == field
