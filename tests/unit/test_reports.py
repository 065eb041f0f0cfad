"""Parsing asynchronous bounces (RFC 3464) and feedback reports (RFC 5965)."""

from __future__ import annotations

import pytest

from engine.reception.reports import (
    MalformedReport,
    Report,
    arf_fields,
    decode_trace,
    oob_response,
    parse_report,
)
from tests.support.reports import arf, dsn, original, trace_value

TRACE = trace_value("user@dest.test", tenant="acme")


def test_hard_bounce_dsn_with_the_original_attached():
    report = parse_report(dsn(attach=original(trace=TRACE)))
    assert isinstance(report, Report) and report.kind == "oob"
    [r] = report.recipients
    assert (r.final_recipient, r.action, r.status) == ("user@dest.test", "failed", "5.1.1")
    assert r.remote_mta == "mx.dest.test" and report.reporting_mta == "mx.dest.test"
    assert report.trace == {"_@_": "\\_/", "recipient": "user@dest.test", "tenant": "acme"}
    assert report.original_message_id == "<orig-1@sender.test>"
    response = oob_response(r)
    assert response.code == 550 and str(response.enhanced_code) == "5.1.1"
    assert "Recipient address rejected" in response.content


def test_deferral_dsn_with_headers_only():
    data = dsn(
        status="4.2.2",
        action="delayed",
        diagnostic="smtp; 452 4.2.2 Mailbox full",
        attach=original(trace=TRACE),
        headers_only=True,
    )
    report = parse_report(data)
    assert isinstance(report, Report)
    [r] = report.recipients
    assert r.action == "delayed" and report.trace is not None
    response = oob_response(r)
    assert response.code == 452 and str(response.enhanced_code) == "4.2.2"


def test_dsn_without_an_smtp_diagnostic_takes_its_code_from_the_status():
    report = parse_report(dsn(diagnostic="X-Postfix; mailbox unavailable"))
    assert isinstance(report, Report)
    response = oob_response(report.recipients[0])
    assert response.code == 550 and str(response.enhanced_code) == "5.1.1"
    assert report.trace is None and report.original_message_id == ""


def test_arf_abuse_report_with_the_original_attached():
    report = parse_report(arf(attach=original(trace=TRACE)))
    assert isinstance(report, Report) and report.kind == "arf"
    fields = arf_fields(report)
    assert fields["feedback_type"] == "abuse"
    assert fields["original_rcpt_to"] == "user@dest.test"
    assert fields["original_mail_from"] == "news@sender.test"
    assert fields["source_ip"] == "192.0.2.1" and fields["incidents"] == 1
    assert fields["reporting_mta"] == "fbl.dest.test"
    assert fields["supplemental_trace"]["tenant"] == "acme"


def test_arf_with_only_headers_still_finds_the_trace():
    report = parse_report(arf(attach=original(trace=TRACE), headers_only=True))
    assert isinstance(report, Report) and report.trace is not None


def test_ordinary_mail_is_not_a_report():
    assert parse_report(original().as_bytes()) is None


@pytest.mark.parametrize(
    ("data", "kind", "reason"),
    [
        (dsn(report_part=False), "oob", "no message/delivery-status part"),
        (arf(report_type="disposition-notification"), "", "is not read"),
        (dsn(status="9.9"), "oob", "invalid Status"),
        (
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
            b"--x\r\nContent-Type: message/delivery-status\r\n\r\n\r\n--x--\r\n",
            "oob",
            "has no fields",
        ),
        (arf(feedback_type=None), "arf", "Feedback-Type"),
    ],
    ids=["no-report-part", "wrong-report-type", "bad-status", "empty-part", "no-feedback-type"],
)
def test_broken_reports_are_malformed_not_errors(data, kind, reason):
    report = parse_report(data)
    assert isinstance(report, MalformedReport), report
    assert report.kind == kind and reason in report.reason


def test_trace_header_refolded_as_encoded_words_is_still_decoded():
    report = parse_report(dsn(attach=original(trace=TRACE, refold=True)))
    assert isinstance(report, Report) and report.trace is not None
    assert report.trace["tenant"] == "acme"


def test_undecodable_trace_header_is_reported_not_fatal():
    report = parse_report(dsn(attach=original(trace="not base64 json!")))
    assert isinstance(report, Report)
    assert report.trace is None and "X-KumoRef" in report.trace_error


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TRACE, {"_@_": "\\_/", "recipient": "user@dest.test", "tenant": "acme"}),
        ("eyJhIjoxfQ==", None),  # JSON, but not a trace object
        ("%%%", None),
        ("", None),
    ],
)
def test_decode_trace(value, expected):
    assert decode_trace(value) == expected
