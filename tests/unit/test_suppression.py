"""Suppression: the pure decisions (which record suppresses, which entry applies, the
refusal, expiry), the CSV format, admin request parsing, and the service over a memory
store with a real policy Registry."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from engine.admin.requests import AdminInputError
from engine.admin.suppression import list_filter, parse_add, parse_remove
from engine.config.settings import ConfigError, SuppressionSettings, load_settings
from engine.policy.events import PolicyFailure, Registry
from engine.policy.helpers.queues import QueueHelper
from engine.records import LogRecord, RecordType, Response
from engine.suppression.csv_format import CsvInvalid, parse_csv, rows_to_csv
from engine.suppression.entries import (
    Filter,
    Reason,
    Suppression,
    applicable,
    entry_from_record,
    expiry,
    refusal,
)
from engine.suppression.service import Suppressed, Suppressions
from engine.suppression.store import MemoryStore

NOW = 1_800_000_000.0
ON = SuppressionSettings(enabled=True)


def record(kind: RecordType, code: int = 550, cls: str = "InvalidRecipient", **kw) -> LogRecord:
    return LogRecord(
        type=kind,
        id="1",
        sender="s@x.test",
        recipient=kw.pop("recipient", "User@Dest.test"),
        queue="q",
        site="",
        size=0,
        response=Response.parse(code, "5.1.1 user unknown" if code >= 500 else "4.2.2 full"),
        timestamp=NOW,
        created=NOW,
        nodeid="n",
        bounce_classification=cls,
        **kw,
    )


@pytest.mark.parametrize(
    ("rec", "settings", "expected"),
    [
        (record(RecordType.BOUNCE), ON, ("user@dest.test", "", Reason.BOUNCE, "InvalidRecipient")),
        (record(RecordType.OOB), ON, ("user@dest.test", "", Reason.BOUNCE, "InvalidRecipient")),
        (record(RecordType.OOB, code=452), ON, None),  # a "delayed" DSN is no hard bounce
        (record(RecordType.BOUNCE, cls="QuotaIssues"), ON, None),
        (
            record(RecordType.BOUNCE, cls="QuotaIssues"),
            SuppressionSettings(classifications=["QuotaIssues"]),
            ("user@dest.test", "", Reason.BOUNCE, "QuotaIssues"),
        ),
        (record(RecordType.TRANSIENT_FAILURE, code=451), ON, None),
        (record(RecordType.EXPIRATION, code=551), ON, None),
        (record(RecordType.ADMIN_BOUNCE, code=551), ON, None),
        (record(RecordType.REJECTION), ON, None),
        (
            record(RecordType.FEEDBACK, code=250, feedback_report={"feedback_type": "abuse"}),
            ON,
            ("user@dest.test", "", Reason.COMPLAINT, "abuse"),
        ),
        (
            record(RecordType.FEEDBACK, code=250, feedback_report={"feedback_type": "not-spam"}),
            ON,
            None,
        ),
        (
            record(RecordType.FEEDBACK, code=250, feedback_report={"feedback_type": "abuse"}),
            SuppressionSettings(feedback_types=[]),
            None,
        ),
        (record(RecordType.BOUNCE, recipient=""), ON, None),
        (
            record(RecordType.BOUNCE, meta={"tenant": "acme"}),
            ON,
            ("user@dest.test", "", Reason.BOUNCE, "InvalidRecipient"),
        ),
        (
            record(RecordType.BOUNCE, meta={"tenant": "acme"}),
            SuppressionSettings(per_tenant=True),
            ("user@dest.test", "acme", Reason.BOUNCE, "InvalidRecipient"),
        ),
    ],
)
def test_entry_from_record(rec, settings, expected):
    """Hard bounces of a listed class and listed complaint types make an entry; nothing else."""
    entry = entry_from_record(rec, settings, NOW)
    got = None if entry is None else (entry.recipient, entry.tenant, entry.reason, entry.detail)
    assert got == expected


@pytest.mark.parametrize(
    ("reason", "settings", "expected"),
    [
        (Reason.BOUNCE, SuppressionSettings(), None),
        (Reason.BOUNCE, SuppressionSettings(bounce_expiry=86400), NOW + 86400),
        (Reason.COMPLAINT, SuppressionSettings(bounce_expiry=86400), None),
        (Reason.COMPLAINT, SuppressionSettings(complaint_expiry=60), NOW + 60),
        (Reason.ADMIN, SuppressionSettings(admin_expiry=5), NOW + 5),
    ],
)
def test_expiry_per_reason(reason, settings, expected):
    """Each reason has its own expiry setting; 0 means until removed."""
    assert expiry(reason, settings, NOW) == expected


def entry(tenant: str = "", expires: float | None = None, detail: str = "") -> Suppression:
    return Suppression(
        recipient="u@d.test",
        tenant=tenant,
        reason=Reason.ADMIN,
        detail=detail,
        created=NOW,
        expires=expires,
    )


ALL, ACME, OLD = entry(detail="all"), entry("acme", detail="acme"), entry(expires=NOW - 1)


@pytest.mark.parametrize(
    ("entries", "tenant", "every_only", "expected"),
    [
        ((), None, False, None),
        ((ALL,), None, False, ALL),
        ((ALL,), "acme", False, ALL),
        ((ACME,), None, False, None),
        ((ACME,), "other", False, None),
        ((ACME,), "acme", False, ACME),
        ((ALL, ACME), "acme", False, ACME),  # the tenant's own entry is the more specific
        ((ACME, ALL), "acme", False, ACME),
        ((ACME,), "acme", True, None),  # at RCPT only entries for every tenant count
        ((OLD,), None, False, None),
    ],
)
def test_applicable(entries, tenant, every_only, expected):
    """Which entry refuses mail to the recipient for a tenant."""
    assert applicable(entries, tenant, NOW, every_tenant_only=every_only) == expected


def test_refusal_names_recipient_tenant_and_why():
    """550 5.7.1 with the address, the tenant scope and the reason."""
    bounce = dataclasses.replace(ACME, reason=Reason.BOUNCE, detail="InvalidRecipient")
    assert refusal(bounce).single_line() == (
        "550 5.7.1 <u@d.test> is on the suppression list for tenant acme "
        "(hard bounce: InvalidRecipient)"
    )


@pytest.mark.parametrize(
    ("criteria", "matches"),
    [
        (Filter(), True),
        (Filter(recipient="U@D.test"), True),
        (Filter(recipient="x@d.test"), False),
        (Filter(domain="D.TEST"), True),
        (Filter(domain="e.test"), False),
        (Filter(tenant=""), False),
        (Filter(tenant="acme"), True),
        (Filter(reason=Reason.BOUNCE), False),
    ],
)
def test_filter(criteria, matches):
    """List filters combine; tenant "" selects entries for every tenant."""
    assert criteria.matches(ACME) is matches


def test_csv_round_trip():
    """Export then import gives the same entries (times to the microsecond)."""
    entries = [entry(), entry("acme", expires=NOW + 10, detail='has "quotes", commas')]
    assert parse_csv(rows_to_csv(entries), now=0) == entries


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("tenant\nacme\n", "no recipient"),
        ("email,status\na@b.test,x\n", "unknown column(s) status"),
        ("email\nnot-an-address\n", "line 2: recipient"),
        ("email,reason\na@b.test,spam\n", "line 2: reason 'spam'"),
        ("email,expires\na@b.test,tomorrow\n", "line 2: expected an RFC 3339"),
        ("email,expires\na@b.test,2026-01-01T00:00:00\n", "no UTC offset"),
        ("email,tenant\na@b.test\n", "line 2: 1 fields"),
    ],
)
def test_csv_refusals_name_the_line(text, message):
    """A file that cannot be imported says where and why."""
    with pytest.raises(CsvInvalid, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_csv(text, now=NOW)


def test_csv_defaults_and_email_alias():
    """``email`` names the recipient column; empty cells take the defaults."""
    [e] = parse_csv("Email,created\nA@B.test,\n\n", default_tenant="t", now=NOW)
    assert (e.recipient, e.tenant, e.reason, e.created, e.expires) == (
        "a@b.test",
        "t",
        Reason.ADMIN,
        NOW,
        None,
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "recipient"),
        ({"recipient": "no-at"}, "recipient"),
        ({"recipient": "a b@c.test"}, "recipient"),
        ({"recipient": "a@b.test", "colour": 1}, "colour"),
        ({"recipient": "a@b.test", "reason": "spam"}, "reason"),
        ({"recipient": "a@b.test", "duration": "soon"}, "duration"),
        ({"recipient": "a@b.test", "expires": "2026-01-01"}, "expires"),
        ({"recipient": "a@b.test", "tenant": 3}, "tenant"),
        ({"entries": []}, "entries"),
        ({"entries": [{"recipient": "a@b.test"}, {}]}, "entries[1].recipient"),
        ({"entries": [], "x": 1}, "x"),
        ([1], None),
    ],
)
def test_add_request_refusals(body, field):
    """A bad POST names the field; nothing of it is added."""
    with pytest.raises(AdminInputError) as exc:
        parse_add(body, ON, NOW)
    assert exc.value.field == field


def test_add_request_lifetimes():
    """duration, expires, and the admin_expiry default."""
    settings = SuppressionSettings(admin_expiry=100)
    [a] = parse_add({"recipient": "A@b.test", "duration": "1h"}, settings, NOW)
    [b] = parse_add({"recipient": "a@b.test", "expires": "2030-01-01T00:00:00Z"}, settings, NOW)
    [c] = parse_add({"recipient": "a@b.test", "reason": "bounce"}, settings, NOW)
    [d] = parse_add({"recipient": "a@b.test"}, settings, NOW)
    assert (a.recipient, a.expires) == ("a@b.test", NOW + 3600)
    assert b.expires == 1893456000.0
    assert (c.reason, c.expires) == (Reason.BOUNCE, None)
    assert d.expires == NOW + 100


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, (Filter(), 1000)),
        ({"tenant": ""}, (Filter(tenant=""), 1000)),
        ({"domain": "X.test", "limit": "0"}, (Filter(domain="x.test"), 0)),
        ({"reason": "complaint"}, (Filter(reason=Reason.COMPLAINT), 1000)),
    ],
)
def test_list_query(query, expected):
    """GET parameters become the filter and the limit."""
    assert list_filter(query) == expected


@pytest.mark.parametrize("query", [{"limit": "-1"}, {"limit": "x"}, {"reason": "x"}, {"q": "1"}])
def test_list_query_refusals(query):
    with pytest.raises(AdminInputError):
        list_filter(query)


def test_remove_request():
    assert parse_remove({"recipient": "A@b.test", "tenant": "t"}) == ("a@b.test", "t")
    with pytest.raises(AdminInputError):
        parse_remove({"recipient": "a@b.test", "id": 1})


# -- the service over a memory store --------------------------------------------------


def service(settings: SuppressionSettings = ON) -> Suppressions:
    return Suppressions(settings, MemoryStore(clock=lambda: NOW), clock=lambda: NOW)


def override(answer) -> Registry:
    registry = Registry()
    registry.on("should_suppress_recipient", inline=True)(lambda r, t, why: answer(t))
    return registry


async def test_check_refuses_a_listed_recipient():
    """check raises Suppressed with the 550; other recipients pass."""
    s = service()
    await s.add([entry()])
    with pytest.raises(Suppressed) as exc:
        await s.check("U@D.TEST", None, Registry())
    assert exc.value.response.code == 550
    await s.check("other@d.test", None, Registry())


async def test_disabled_check_refuses_nothing():
    s = service(SuppressionSettings(enabled=False))
    await s.add([entry()])
    await s.check("u@d.test", None, Registry())


@pytest.mark.parametrize(
    ("answer", "refused"),
    [(lambda t: False, False), (lambda t: True, True), (lambda t: None, True)],
)
async def test_policy_override(answer, refused):
    """should_suppress_recipient False lets the message through; True or None refuses."""
    s = service()
    await s.add([entry()])
    try:
        await s.check("u@d.test", "acme", override(answer))
    except Suppressed:
        assert refused
    else:
        assert not refused


async def test_rcpt_check_leaves_the_verdict_to_the_policy_handler():
    """At RCPT (tenant unknown) a policy with the handler gets no refusal yet."""
    s = service()
    await s.add([entry()])
    await s.check("u@d.test", None, override(lambda t: True), at_rcpt=True)
    with pytest.raises(Suppressed):
        await s.check("u@d.test", None, Registry(), at_rcpt=True)


async def test_failing_override_is_a_policy_failure():
    """A handler that raises is the caller's 451, never a crash or a silent pass."""
    s = service()
    await s.add([entry()])

    def boom(tenant):
        raise RuntimeError("broken")

    with pytest.raises(PolicyFailure):
        await s.check("u@d.test", None, override(boom))


async def test_observed_bounce_is_written_by_run():
    """observe queues the entry a record makes; run writes it to the store."""
    s = service()
    s.observe(record(RecordType.BOUNCE))
    s.observe(record(RecordType.DELIVERY, code=250))
    assert s.pending() == 1
    task = asyncio.create_task(s.run())
    try:
        async with asyncio.timeout(5):
            while not s.recorded:
                await asyncio.sleep(0)
    finally:
        task.cancel()
    [stored] = await s.list(Filter())
    assert (stored.recipient, stored.reason) == ("user@dest.test", Reason.BOUNCE)


def test_settings_defaults_and_env_names():
    """[suppression] keys from the environment; defaults documented in the README."""
    settings = load_settings(
        env={
            "NIMBUS_SUPPRESSION_ENABLED": "true",
            "NIMBUS_SUPPRESSION_CLASSIFICATIONS": "InvalidRecipient,BadDomain",
            "NIMBUS_SUPPRESSION_BOUNCE_EXPIRY": "30d",
            "NIMBUS_SUPPRESSION_PER_TENANT": "yes",
        }
    ).suppression
    assert settings.enabled and settings.per_tenant
    assert settings.classifications == ["InvalidRecipient", "BadDomain"]
    assert settings.bounce_expiry == 30 * 86400
    assert SuppressionSettings().enabled is False
    assert SuppressionSettings().feedback_types == ["abuse", "fraud", "virus", "other"]


def test_zero_cache_ttl_is_refused():
    with pytest.raises(ConfigError, match=r"\[suppression\] cache_ttl"):
        load_settings(env={"NIMBUS_SUPPRESSION_CACHE_TTL": "0"})


def test_queues_toml_tenant_suppression_option(tmp_path):
    """``suppression = false`` under [tenant.'t'] is the tenant's override; other values
    are refused at load."""
    path = tmp_path / "queues.toml"
    path.write_text("[tenant.'t']\nsuppression = false\n[tenant.'u']\n")
    helper = QueueHelper.load(path)
    assert helper.overrides_suppression()
    assert (helper.suppression("t"), helper.suppression("u"), helper.suppression(None)) == (
        False,
        None,
        None,
    )
    path.write_text("[tenant.'t']\nsuppression = 'no'\n")
    with pytest.raises(ConfigError, match="suppression: expected true or false"):
        QueueHelper.load(path)
