"""Smart-sink decisions: local-part conventions, percentages, texts, latency, file errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli

from engine.config.settings import ConfigError
from sink.responses import (
    ACCEPT,
    Decision,
    Responses,
    load_responses,
    normalise_text,
    parse_latency,
    parse_responses,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "sink" / "responses.example.toml"

SMART = """
[default]
bounce = 10
defer = 5

[domain."gmail.com"]
bounce = 20
defer = 30
latency = "200ms"

["aol.com"]
defer = 50

[[bounce.default]]
code = 550
msg = "5.1.1 default bounce"

[[defer.default]]
code = 451
msg = "4.3.0 default defer"

[[bounce."gmail.com"]]
code = 550
msg = "5.1.1 The email account that you tried to reach does not exist. - gsmtp"

[[bounce."gmail.com"]]
code = 552
msg = "5.2.2 The email account that you tried to reach is over quota. - gsmtp"

[[defer."gmail.com"]]
code = 421
msg = "4.7.28 Our system has detected an unusual rate of unsolicited mail. - gsmtp"

[[defer."aol.com"]]
code = 421
msg = "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred"
"""


def smart() -> Responses:
    return parse_responses(tomli.loads(SMART), "responses.toml")


def errors(text: str) -> str:
    """The ConfigError message for a responses file with ``text``."""
    with pytest.raises(ConfigError) as info:
        parse_responses(tomli.loads(text), "r.toml")
    return str(info.value)


@pytest.mark.parametrize(
    ("recipient", "reply"),
    [
        ("tempfail@x.test", "451 4.3.0 tempfail requested"),
        ("please-tempfail-me@x.test", "451 4.3.0 tempfail requested"),
        ("TempFail@x.test", "451 4.3.0 tempfail requested"),
        ("permfail@x.test", "550 5.1.1 permfail requested"),
        ("450-foo@x.test", "450 4.0.0 you said 450-foo"),
        ("421-bar@x.test", "421 4.0.0 you said 421-bar"),
        ("550-baz@x.test", "550 5.0.0 you said 550-baz"),
        ("250-ok@gmail.com", "250 2.0.0 OK"),
    ],
)
def test_local_part_conventions(recipient, reply):
    """The local part's request wins over the percentages (rand=0 would bounce everything)."""
    assert smart().decide(recipient, rand=0.0, rand2=0.0).reply() == reply


@pytest.mark.parametrize(
    ("recipient", "rand", "code"),
    [
        ("u@other.test", 0.0, 550),  # default: bounce 10 %
        ("u@other.test", 0.0999, 550),
        ("u@other.test", 0.10, 451),  # then defer 5 %
        ("u@other.test", 0.1499, 451),
        ("u@other.test", 0.15, 250),  # then accept
        ("u@other.test", 0.9999, 250),
        ("u@gmail.com", 0.19, 550),  # gmail.com: bounce 20 %, defer 30 %
        ("u@gmail.com", 0.49, 421),
        ("u@gmail.com", 0.50, 250),
        ("u@aol.com", 0.05, 550),  # aol.com: defer 50 %, bounce inherited (10 %)
        ("u@aol.com", 0.55, 421),
        ("u@aol.com", 0.60, 250),
        ("u@GMAIL.com", 0.19, 550),  # domains match case-insensitively
    ],
)
def test_percentages(recipient, rand, code):
    """rand below bounce % bounces, below bounce + defer % defers, else accepts."""
    assert smart().decide(recipient, rand=rand, rand2=0.0).code == code


@pytest.mark.parametrize(
    ("rand2", "text"),
    [
        (0.0, "5.1.1 The email account that you tried to reach does not exist. - gsmtp"),
        (0.49, "5.1.1 The email account that you tried to reach does not exist. - gsmtp"),
        (0.5, "5.2.2 The email account that you tried to reach is over quota. - gsmtp"),
        (0.9999, "5.2.2 The email account that you tried to reach is over quota. - gsmtp"),
    ],
)
def test_text_choice_from_domain_list(rand2, text):
    """rand2 picks the text uniformly from the domain's list."""
    assert smart().decide("u@gmail.com", rand=0.0, rand2=rand2).text == text


def test_domain_without_list_uses_default_list():
    """aol.com has no bounce list: its bounces use [[bounce.default]]."""
    decision = smart().decide("u@aol.com", rand=0.0, rand2=0.0)
    assert decision.reply() == "550 5.1.1 default bounce"


def test_builtin_texts_when_no_lists():
    """Without any lists, KumoMTA's built-in "boing!" / "later!" texts answer."""
    responses = parse_responses({"default": {"bounce": 50, "defer": 50}}, "r.toml")
    assert responses.decide("u@x.test", rand=0.1, rand2=0.0).reply() == "550 5.0.0 boing!"
    assert responses.decide("u@x.test", rand=0.9, rand2=0.0).reply() == "451 4.0.0 later!"


def test_empty_file_accepts_everything():
    """An empty responses file accepts every recipient with no delay."""
    assert parse_responses({}, "r.toml").decide("u@x.test", rand=0.0, rand2=0.0) == ACCEPT


def test_latency_applies_to_every_answer():
    """A domain's latency delays accepts, refusals and convention replies alike."""
    responses = smart()
    cases = (("u@gmail.com", 0.9), ("u@gmail.com", 0.0), ("tempfail@gmail.com", 0.9))
    for recipient, rand in cases:
        assert responses.decide(recipient, rand=rand, rand2=0.0).delay == pytest.approx(0.2)
    assert responses.decide("u@other.test", rand=0.9, rand2=0.0).delay == 0.0


def test_latency_range_picked_by_rand3():
    """A [low, high] latency is interpolated by rand3."""
    responses = parse_responses({"default": {"latency": ["50ms", "450ms"]}}, "r.toml")
    assert responses.decide("u@x.test", rand=0.9, rand2=0.0).delay == pytest.approx(0.05)
    assert responses.decide("u@x.test", rand=0.9, rand2=0.0, rand3=0.5).delay == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("200ms", (0.2, 0.2)),
        ("1s", (1.0, 1.0)),
        (0.5, (0.5, 0.5)),
        (["50ms", "500ms"], (0.05, 0.5)),
        (["1s", "1s"], (1.0, 1.0)),
    ],
)
def test_parse_latency(value, expected):
    """A duration, a number of seconds, or a [low, high] pair."""
    assert parse_latency(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["soon", ["1s"], ["2s", "1s"], -1, ["1s", "2s", "3s"]])
def test_parse_latency_rejects(value):
    """Unknown units, wrong list lengths, reversed ranges and negatives are errors."""
    with pytest.raises(ValueError):
        parse_latency(value)


@pytest.mark.parametrize(
    ("code", "msg", "text"),
    [
        (550, "5.1.1 no such user", "5.1.1 no such user"),
        (421, "421 Max message per connection reached", "Max message per connection reached"),
        (
            550,
            "550-5.1.1 line one\r\n550-5.1.1 line two\r\n550,5.1.1 line three",
            "5.1.1 line one\n5.1.1 line two\n5.1.1 line three",
        ),
        (554, "5.7.9 policy reasons", "5.7.9 policy reasons"),
    ],
)
def test_normalise_text(code, msg, text):
    """Code prefixes pasted from logs are removed; lines are kept."""
    assert normalise_text(code, msg) == text


def test_multiline_reply_wire_form():
    """A multi-line text is sent as NNN- continuation lines and a final NNN line."""
    decision = Decision(code=550, text="5.1.1 one\n5.1.1 two")
    assert decision.reply() == "550-5.1.1 one\r\n550 5.1.1 two"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[default]\nbounce = 101", ["r.toml", "[default]", "bounce", "101"]),
        ("[default]\nbounce = 'ten'", ["r.toml", "[default]", "bounce"]),
        ("[default]\nbounce = 60\ndefer = 50", ["r.toml", "[default]", "bounce + defer"]),
        ("[default]\nbouncy = 1", ["r.toml", "[default]", "bouncy", "unknown key"]),
        ('[domain."gmail.com"]\ndefer = -1', ["r.toml", '[domain."gmail.com"]', "defer"]),
        ('["aol.com"]\nlatency = "soon"', ["r.toml", '["aol.com"]', "latency"]),
        ('[[bounce."gmail.com"]]\ncode = 250\nmsg = "x"', ['[[bounce."gmail.com"]] #1', "code"]),
        (
            '[[defer.default]]\ncode = 451\nmsg = "a"\n[[defer.default]]\ncode = 451',
            ['[[defer."default"]] #2', "msg"],
        ),
        ('[[defer.default]]\ncode = 451\nmsg = "a"\ntext = "b"', ["#1", "text", "unknown key"]),
        ('[bounce]\n"gmail.com" = 5', ['[[bounce."gmail.com"]]', "array of tables"]),
        ("stray = 1", ["r.toml", "stray", "unknown key"]),
    ],
)
def test_config_errors_name_file_table_key(text, names):
    """Every validation error names the file, the table and the key."""
    message = errors(text)
    for name in names:
        assert name in message, message


def test_load_reports_bad_toml(tmp_path):
    """Invalid TOML is a ConfigError naming the file."""
    path = tmp_path / "responses.toml"
    path.write_text("[default\n")
    with pytest.raises(ConfigError, match="responses.toml: invalid TOML"):
        load_responses(str(path))


def test_load_reports_missing_file(tmp_path):
    """A missing file is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="nope.toml: cannot read"):
        load_responses(str(tmp_path / "nope.toml"))


def test_example_file_loads():
    """The shipped example parses and covers the big mailbox providers."""
    responses = load_responses(str(EXAMPLE))
    for domain in (
        "gmail.com",
        "yahoo.com",
        "aol.com",
        "outlook.com",
        "hotmail.com",
        "comcast.net",
    ):
        assert domain in responses.domains
        assert responses.defers[domain] and responses.bounces[domain]
    assert responses.defers["default"] and responses.bounces["default"]
    codes = {r.code for r in responses.defers["gmail.com"]}
    assert 421 in codes
    assert any("TSS04" in r.text for r in responses.defers["aol.com"])
    assert any("S3150" in r.text for r in responses.bounces["outlook.com"])
    assert any("RL0000" in r.text for r in responses.defers["comcast.net"])
