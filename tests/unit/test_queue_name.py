"""Queue naming: QueueName str/parse, scheduled_queue_name and ready_queue_name."""

from __future__ import annotations

import pytest

from engine.queues.naming import QueueName, ready_queue_name, scheduled_queue_name

FORMS = [
    ("campaign:tenant@d", QueueName(domain="d", tenant="tenant", campaign="campaign")),
    (
        "campaign:tenant@d!rd",
        QueueName(domain="d", tenant="tenant", campaign="campaign", routing_domain="rd"),
    ),
    ("tenant@d", QueueName(domain="d", tenant="tenant")),
    ("tenant@d!rd", QueueName(domain="d", tenant="tenant", routing_domain="rd")),
    ("campaign:@d", QueueName(domain="d", campaign="campaign")),
    ("campaign:@d!rd", QueueName(domain="d", campaign="campaign", routing_domain="rd")),
    ("d", QueueName(domain="d")),
    ("d!rd", QueueName(domain="d", routing_domain="rd")),
]


@pytest.mark.parametrize(("text", "name"), FORMS)
def test_parse_splits_parts(text, name):
    """Each queue-name form parses into its campaign, tenant, domain and routing domain."""
    assert QueueName.parse(text) == name


@pytest.mark.parametrize(("text", "name"), FORMS)
def test_str_renders_exact_form(text, name):
    """str() renders each QueueName in exactly its canonical form."""
    assert str(name) == text


@pytest.mark.parametrize(("text", "_name"), FORMS)
def test_parse_then_str_round_trips(text, _name):
    """str(QueueName.parse(text)) gives back the original text."""
    assert str(QueueName.parse(text)) == text


@pytest.mark.parametrize(
    ("text", "destination"),
    [
        ("tenant@example.com", "example.com"),
        ("tenant@example.com!relay.example.net", "relay.example.net"),
    ],
)
def test_destination_prefers_routing_domain(text, destination):
    """destination is the routing domain when set, else the domain."""
    assert QueueName.parse(text).destination == destination


@pytest.mark.parametrize("text", ["", "tenant@", "c:t@", "!rd"])
def test_parse_rejects_empty_domain(text):
    """A queue name without a domain raises ValueError."""
    with pytest.raises(ValueError):
        QueueName.parse(text)


@pytest.mark.parametrize(
    ("recipient", "meta", "queue"),
    [
        ("User@Example.COM", {}, "example.com"),
        ("u@example.com", {"tenant": "t1"}, "t1@example.com"),
        ("u@example.com", {"campaign": "c1"}, "c1:@example.com"),
        ("u@example.com", {"tenant": "t1", "campaign": "c1"}, "c1:t1@example.com"),
        ("u@example.com", {"routing_domain": "relay.example"}, "example.com!relay.example"),
        (
            "u@EXAMPLE.com",
            {"tenant": "t1", "campaign": "c1", "routing_domain": "r"},
            "c1:t1@example.com!r",
        ),
        ("u@example.com", {"tenant": "", "campaign": None}, "example.com"),
        ("u@example.com", {"queue": "custom-queue", "tenant": "t1"}, "custom-queue"),
        ("u@example.com", {"queue": "null"}, "null"),
        ("u@example.com", {"queue": ""}, "example.com"),
    ],
)
def test_scheduled_queue_name(recipient, meta, queue):
    """The scheduled queue comes from meta queue, else tenant/campaign/routing_domain and the lowercased domain."""
    assert scheduled_queue_name(recipient, meta) == queue


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (
            ("unspecified", "(mx1|mx2).example.com"),
            "unspecified->(mx1|mx2).example.com@smtp_client",
        ),
        (("ip-1", "mx_list:h1,h2", "smtp_client"), "ip-1->mx_list:h1,h2@smtp_client"),
        (("ip-1", "site", "lmtp"), "ip-1->site@lmtp"),
    ],
)
def test_ready_queue_name(args, name):
    """Ready queue names are source->site@proto."""
    assert ready_queue_name(*args) == name
