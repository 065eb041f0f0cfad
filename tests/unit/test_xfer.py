"""The pure parts of engine/xfer: the wire format, answer verdicts, peers, the secret,
and the admin request."""

from __future__ import annotations

import dataclasses
import json

import pytest

from engine.admin.entries import Criteria
from engine.admin.requests import AdminInputError, parse_xfer, parse_xfer_cancel
from engine.config.settings import ClusterSettings, ConfigError
from engine.records import Message
from engine.xfer.peers import PeerLoads, classify_entry, peer_urls
from engine.xfer.secret import check, load_secret
from engine.xfer.wire import (
    Verdict,
    WireError,
    decode,
    encode,
    target_of,
    verdict,
    xfer_queue_name,
)

MSG = Message(
    id="0123456789abcdef0123456789abcdef",
    sender="",
    recipient="b@dst.test",
    queue="camp:tenant@dst.test",
    meta={"tenant": "tenant", "n": [1, 2]},
    created=1_700_000_000.25,
    due=1_700_003_600.5,
    num_attempts=3,
)
DATA = b"Subject: x\r\n\r\n\xff binary \x00 ok\r\n"


def test_encode_decode_round_trip_keeps_everything():
    got = decode(encode(MSG, DATA, from_node="mta-1"))
    assert got.from_node == "mta-1" and got.data == DATA
    assert got.msg == dataclasses.replace(MSG, size=len(DATA))
    m = got.msg
    assert (m.id, m.sender, m.recipient, m.queue, m.meta) == (
        MSG.id,
        "",
        MSG.recipient,
        MSG.queue,
        MSG.meta,
    )
    assert (m.created, m.due, m.num_attempts, m.size) == (MSG.created, MSG.due, 3, len(DATA))


def _with(**changes: object) -> bytes:
    body = encode(MSG, DATA, from_node="mta-1")
    line, _, data = body.partition(b"\n")
    head = json.loads(line)
    for key, value in changes.items():
        if value is KeyError:
            del head[key]
        else:
            head[key] = value
    return json.dumps(head).encode() + b"\n" + data


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"no newline at all", "no envelope line"),
        (b"{not json\nbody", "not JSON"),
        (b"[1]\nbody", "not a JSON object"),
        (_with(v=2), "unsupported version"),
        (_with(id=KeyError), "id: missing"),
        (_with(id=""), "id: must be"),
        (_with(id="a\nb"), "id: must be"),
        (_with(meta="x"), "meta: wrong type"),
        (_with(size=1), "size: envelope says 1"),
        (_with(sha256="00"), "sha256"),
        (_with(num_attempts=-1), "num_attempts"),
        (_with(num_attempts=True), "num_attempts: wrong type"),
        (_with(due="soon"), "due: wrong type"),
        (_with(recipient=""), "must not be empty"),
        (_with(from_node=KeyError), "from_node: missing"),
    ],
)
def test_decode_names_what_is_wrong(body, reason):
    with pytest.raises(WireError, match=reason):
        decode(body)


def test_a_cut_body_fails_its_digest():
    body = encode(MSG, DATA, from_node="mta-1")
    with pytest.raises(WireError, match="size"):
        decode(body[:-2])


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (200, {"duplicate": False}, Verdict.MOVED),
        (200, None, Verdict.MOVED),
        (200, {"duplicate": True}, Verdict.DUPLICATE),
        (None, None, Verdict.TRY_LATER),
        (503, None, Verdict.TRY_LATER),
        (500, None, Verdict.TRY_LATER),
        (429, None, Verdict.TRY_LATER),
        (408, None, Verdict.TRY_LATER),
        (409, None, Verdict.SELF),
        (413, None, Verdict.MESSAGE_REFUSED),
        (422, None, Verdict.MESSAGE_REFUSED),
        (401, None, Verdict.PEER_REFUSED),
        (403, None, Verdict.PEER_REFUSED),
        (404, None, Verdict.PEER_REFUSED),
        (415, None, Verdict.PEER_REFUSED),
    ],
)
def test_only_a_200_lets_the_sender_delete(status, body, expected):
    assert verdict(status, body) == expected


def test_xfer_queue_names_are_kumomtas():
    name = xfer_queue_name("http://10.0.0.2:8000")
    assert name == "http://10.0.0.2:8000/.xfer.kumomta.internal"
    assert target_of(name) == "http://10.0.0.2:8000"
    assert target_of("dst.test") is None
    assert target_of("garbage.xfer.kumomta.internal") is None


@pytest.mark.parametrize(
    "entry, expected",
    [
        ("http://10.0.0.2:8000/", ("http://10.0.0.2:8000", None)),
        ("https://mta-1.example:8443", ("https://mta-1.example:8443", None)),
        ("10.0.0.3", ("http://10.0.0.3:8000", None)),
        ("10.0.0.3:9000", ("http://10.0.0.3:9000", None)),
        ("fd00::1", ("http://[fd00::1]:8000", None)),
        ("nimbus-mta-headless", (None, ("nimbus-mta-headless", 8000))),
        ("nimbus-mta-headless.ns.svc:8001", (None, ("nimbus-mta-headless.ns.svc", 8001))),
    ],
)
def test_peer_entries(entry, expected):
    assert classify_entry(entry, 8000) == expected


@pytest.mark.parametrize("entry", ["ftp://x:1", "http://x:1/path", "host:port", "a b", "x:99999"])
def test_bad_peer_entries(entry):
    with pytest.raises(ValueError):
        classify_entry(entry, 8000)


async def test_a_name_is_every_address_it_resolves_to():
    async def resolve(host: str) -> list[str]:
        if host == "gone":
            raise OSError("NXDOMAIN")
        return ["10.0.0.1", "10.0.0.2", "10.0.0.1"]

    urls = await peer_urls(["svc", "gone", "http://10.0.0.2:8000", " "], 8000, resolve=resolve)
    assert urls == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]


def test_pick_prefers_the_least_loaded_and_skips_resting_and_dropped():
    loads = PeerLoads(["a", "b", "c"])
    picks = {loads.pick(0.0) for _ in range(6)}
    assert picks == {"a", "b", "c"}  # unknown loads: round-robin
    loads.queued = {"a": 100, "b": 5, "c": 50}
    assert loads.pick(0.0) == "b"
    loads.in_flight = {"b": 60}
    assert loads.pick(0.0) == "c"
    loads.resting["c"] = 10.0
    assert loads.pick(0.0) == "b"
    assert loads.pick(11.0) == "c"
    loads.dropped |= {"b", "c"}
    assert loads.pick(11.0) == "a"
    loads.dropped.add("a")
    assert loads.pick(11.0) is None and not loads.usable()


def test_secret_checks():
    secret = "x" * 20
    assert check(f"Bearer {secret}", secret) is None
    assert check(f"bearer  {secret}", secret) is None
    assert check(None, secret)[0] == 401
    assert check("", secret)[0] == 401
    assert check(f"Basic {secret}", secret) == (403, "wrong cluster secret")
    assert check("Bearer nope", secret) == (403, "wrong cluster secret")
    assert check(f"Bearer {secret}", None)[0] == 403


def test_load_secret_prefers_the_file(tmp_path):
    path = tmp_path / "secret"
    path.write_text("file-secret-0123456789\n")
    both = ClusterSettings(secret="inline-secret-0123456789", secret_file=str(path))
    assert load_secret(both) == "file-secret-0123456789"
    assert load_secret(ClusterSettings(secret="inline-secret-0123456789")) == (
        "inline-secret-0123456789"
    )
    assert load_secret(ClusterSettings()) is None
    with pytest.raises(ConfigError, match=r"\[cluster\] secret: must be at least 16"):
        load_secret(ClusterSettings(secret="short"))
    with pytest.raises(ConfigError, match=r"\[cluster\] secret_file: cannot read"):
        load_secret(ClusterSettings(secret_file=str(tmp_path / "missing")))


def test_parse_xfer_takes_kumomtas_request():
    req = parse_xfer(
        {
            "domain": "d.test",
            "routing_domain": "r.test",
            "campaign": "c",
            "tenant": "t",
            "reason": "Scaling down",
            "target": "http://10.0.0.2:8000/",
        }
    )
    assert req.target == "http://10.0.0.2:8000" and req.reason == "Scaling down"
    assert req.criteria == Criteria(
        domain="d.test", routing_domain="r.test", campaign="c", tenant="t"
    )
    names = parse_xfer({"queue_names": ["a", "b"], "reason": "r", "target": "http://h:1"})
    assert names.criteria.queue_names == ("a", "b")
    assert parse_xfer({"everything": True, "reason": "r", "target": "http://h:1"}).criteria == (
        Criteria()
    )
    assert parse_xfer_cancel({"queue_name": "q", "reason": "r"}) == ("q", "r")
    with pytest.raises(AdminInputError, match="reason"):
        parse_xfer_cancel({"queue_name": "q"})
