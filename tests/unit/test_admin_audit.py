"""AdminAudit records: the parameters kept, and the record's KumoMTA shape."""

from __future__ import annotations

import pytest

from engine.admin.audit import audit_params, audit_record


@pytest.mark.parametrize(
    ("query", "body", "expected"),
    [
        ({}, b"", {}),
        ({}, b'{"domain": "x.test", "reason": "r"}', {"domain": "x.test", "reason": "r"}),
        ({"id": "1"}, b'{"reason": "r"}', {"id": "1", "reason": "r"}),
        ({}, b"[1, 2]", {"body": "<6 bytes, not a JSON object>"}),
        ({}, b"{not json", {"body": "<9 bytes, not a JSON object>"}),
        ({}, b"\xff\xfe", {"body": "<2 bytes, not a JSON object>"}),
        (
            {},
            b'{"data": {"smtp_password": "p", "api_token": "t", "k": "v"}, "Secret": 1}',
            {
                "data": {"smtp_password": "<redacted>", "api_token": "<redacted>", "k": "v"},
                "Secret": "<redacted>",
            },
        ),
        ({"authorization": "Basic x"}, b"", {"authorization": "<redacted>"}),
    ],
)
def test_audit_params(query, body, expected):
    """Query and JSON-object body are merged; anything else is summarised; secrets redacted."""
    assert audit_params(query, body) == expected


def test_audit_record_shape():
    """The record has KumoMTA's JsonLogRecord fields, the answer in ``response``, and who /
    what in ``meta``."""
    record = audit_record(
        who="ops",
        peer="192.0.2.9",
        method="POST",
        path="/api/admin/suspend/v1",
        params={"domain": "x.test", "reason": "r"},
        status=200,
        reason="OK",
        node_id="mta-1",
        now=1_800_000_000.5,
    ).to_json()
    assert len(record["id"]) == 32
    assert {k: record[k] for k in ("type", "sender", "recipient", "queue", "site", "size")} == {
        "type": "AdminAudit",
        "sender": "",
        "recipient": "",
        "queue": "",
        "site": "",
        "size": 0,
    }
    assert record["response"] == {
        "code": 200,
        "enhanced_code": None,
        "content": "OK",
        "command": "POST /api/admin/suspend/v1",
    }
    assert record["peer_address"] == {"name": "", "addr": "192.0.2.9"}
    assert record["meta"] == {
        "admin_user": "ops",
        "admin_endpoint": "POST /api/admin/suspend/v1",
        "admin_params": {"domain": "x.test", "reason": "r"},
    }
    assert (record["timestamp"], record["event_time"]) == (
        1_800_000_000,
        "2027-01-15T08:00:00.500000Z",
    )
    assert (record["nodeid"], record["reception_protocol"]) == ("mta-1", "HTTP")
