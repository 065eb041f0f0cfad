"""BounceClassifier: rule order, defaults, files, errors, and the shipped rules."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from engine.config.settings import BUNDLED_POLICY_DIR, ConfigError
from engine.policy.helpers.bounce import PREDEFINED_CLASSES, UNCATEGORIZED, BounceClassifier
from engine.records import Response

# KumoMTA's own rule-order test (crates/bounce-classify/src/lib.rs test_rule_order).
FILE_1 = """
[rules]
foo = ["woot", "aaa"]
bar = ["woot", "aaa", "bbb"]
"""
FILE_2 = """
[rules]
second_file = ["bbb", "ccc"]
foo = ["ddd"]
"""


def write(tmp_path: Path, text: str, name: str = "rules.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def two_files(tmp_path) -> BounceClassifier:
    return BounceClassifier.load(
        [write(tmp_path, FILE_1, "a.toml"), write(tmp_path, FILE_2, "b.toml")]
    )


@pytest.mark.parametrize(
    ("line", "cls"),
    [
        ("woot", "foo"),  # both foo and bar match: foo comes first
        ("aaa", "foo"),
        ("bbb", "bar"),  # file 1 before file 2
        ("ccc", "second_file"),
        ("ddd", "foo"),  # a class repeated in a later file keeps that file's place
        ("xyz woot xyz", "foo"),  # search, not match: anywhere in the line
        ("nothing", UNCATEGORIZED),
    ],
)
def test_first_rule_in_file_order_wins(two_files, line, cls):
    """The first matching rule across the files, in order, gives the class."""
    assert two_files.classify(line) == cls


def test_uncategorized_without_rules():
    """With no rules every line is Uncategorized."""
    assert BounceClassifier([]).classify("550 5.1.1 unknown") == UNCATEGORIZED


def test_custom_class_name(tmp_path):
    """Class names outside KumoMTA's predefined list are allowed."""
    clf = BounceClassifier.load(write(tmp_path, '[rules]\nMyOwnClass = ["^599 "]\n'))
    assert ("MyOwnClass" not in PREDEFINED_CLASSES, clf.classify("599 x")) == (True, "MyOwnClass")


def test_json_rules_file(tmp_path):
    """A .json rules file is read as JSON."""
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": {"QuotaIssues": ["^552 "]}}))
    assert BounceClassifier.load(path).classify("552 5.2.2 full") == "QuotaIssues"


def test_classify_response_uses_single_line():
    """classify_response matches '<code> <c.s.d> <content>' on one line."""
    clf = BounceClassifier.from_rules([("InvalidRecipient", r"^550 5\.1\.1 no such user$")])
    assert clf.classify_response(Response.parse(550, "5.1.1 no such\r\nuser")) == "InvalidRecipient"


def test_cache_is_bounded():
    """The cache keeps at most cache_size lines and still answers correctly."""
    clf = BounceClassifier.from_rules([("A", "^a")], cache_size=2)
    answers = [clf.classify(line) for line in ("a1", "b1", "a2", "a1")]
    assert (answers, len(clf._cache)) == (["A", UNCATEGORIZED, "A", "A"], 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[rules]\nSpamBlock = ["(unclosed"]\n', "[rules] SpamBlock: bad regex '(unclosed'"),
        ('[rules]\nSpamBlock = "^550"\n', "[rules] SpamBlock: expected a list of regex strings"),
        ("[rules]\nSpamBlock = [550]\n", "[rules] SpamBlock: expected a list of regex strings"),
        ('[rule]\nSpamBlock = ["^550"]\n', "rule: unknown key"),
        ("x = 1\n", "x: unknown key"),
        ("", "rules: expected a [rules] table"),
    ],
)
def test_load_errors_name_file_table_class(tmp_path, text, message):
    """A bad rules file is a ConfigError naming the file, [rules] and the class."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        BounceClassifier.load(path)
    assert str(err.value).startswith(f"{path}: {message}")


# -- the shipped policy/bounce_rules.toml ---------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> BounceClassifier:
    return BounceClassifier.load(BUNDLED_POLICY_DIR / "bounce_rules.toml")


@pytest.mark.parametrize(
    ("line", "cls"),
    [
        # KumoMTA's iana.toml test corpus
        ("552 5.2.2 mailbox is stuffed", "QuotaIssues"),
        ("552 4.2.2 mailbox is stuffed", "QuotaIssues"),
        ("352 5.2.2 mailbox is stuffed", UNCATEGORIZED),
        ("525 4.7.13 user account is disabled", "InactiveMailbox"),
        ("551 4.7.17 mailbox owner has changed", "InvalidRecipient"),
        ("551 4.7.18 domain owner has changed", "BadDomain"),
        # Gmail
        ("550 5.1.1 The email account that you tried to reach does not exist.", "InvalidRecipient"),
        ("452 4.2.2 The email account that you tried to reach is over quota.", "QuotaIssues"),
        ("550 5.2.1 The email account that you tried to reach is disabled.", "InactiveMailbox"),
        (
            "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents "
            "additional messages from being delivered.",
            "TransientFailure",
        ),
        (
            "550 5.7.1 [192.0.2.1] Our system has detected that this message is likely unsolicited "
            "mail. To reduce the amount of spam sent to Gmail, this message has been blocked.",
            "SpamContent",
        ),
        (
            "421 4.7.0 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail "
            "originating from your IP address.",
            "SpamBlock",
        ),
        (
            "550 5.7.26 This mail is unauthenticated, which poses a security risk to the sender and "
            "Gmail users, and has been blocked.",
            "AuthenticationFailed",
        ),
        (
            "550 5.7.25 The IP address sending this message does not have a PTR record setup",
            "BadConfiguration",
        ),
        (
            "552 5.7.0 This message was blocked because its content presents a potential security "
            "issue.",
            "ProhibitedAttachment",
        ),
        ("421 4.7.0 Try again later, closing connection. (EHLO)", "TransientFailure"),
        # Yahoo / AOL
        (
            "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume "
            "or user complaints",
            "SpamBlock",
        ),
        ("553 5.7.2 [TSS09] All messages from 192.0.2.1 will be permanently deferred", "SpamBlock"),
        ("554 5.7.9 Message not accepted for policy reasons.", "PolicyRelated"),
        ("554 delivery error: dd This user doesn't have a yahoo.com account", "InvalidRecipient"),
        # Microsoft
        (
            "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your "
            "Internet service provider since part of their network is on our block list (S3150).",
            "SpamBlock",
        ),
        ("550 5.5.0 Requested action not taken: mailbox unavailable", "InvalidRecipient"),
        ("550 5.4.1 Recipient address rejected: Access denied. AS(201806281)", "InvalidRecipient"),
        (
            "421 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP "
            "reputation.",
            "SpamBlock",
        ),
        (
            "550 5.7.509 Access denied, sending domain example.com does not pass DMARC verification",
            "AuthenticationFailed",
        ),
        ("554 5.2.0 STOREDRV.Deliver.Exception:QuotaExceededException", "QuotaIssues"),
        # Blocklists, relaying, Postfix
        (
            "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
            "SpamBlock",
        ),
        ("554 5.7.1 <a@b.example>: Relay access denied", "RelayDenied"),
        (
            "550 5.1.1 <a@b.example>: Recipient address rejected: User unknown in virtual mailbox table",
            "InvalidRecipient",
        ),
        ("553 5.1.8 <s@nx.example>: Sender address rejected: Domain not found", "InvalidSender"),
        ("550 No such user here", "InvalidRecipient"),
        ("450 4.2.0 <a@b.example>: Recipient address rejected: Greylisted", "TransientFailure"),
        ("554 5.7.1 Message rejected: virus found (Eicar-Test-Signature)", "VirusRelated"),
        ("452 4.5.3 Too many recipients", "TooManyRecipients"),
        # nimbus's own replies
        ("550 5.1.2 nx.example: no such domain (NXDOMAIN)", "BadDomain"),
        ("556 5.1.10 example.com: domain does not accept mail (null MX)", "BadDomain"),
        ("451 4.4.3 example.com: MX lookup failed: timeout", "DNSFailure"),
        ("421 4.4.1 192.0.2.1:25: timeout connecting", "NoAnswerFromHost"),
        ("421 4.4.2 mx.example: connection lost during DATA: reset", "BadConnection"),
        ("451 4.4.4 no non-zero-weighted sources available for q (pool p)", "RoutingErrors"),
        ("451 4.7.5 TLS handshake with mx.example failed: bad certificate", "BadConfiguration"),
        ("551 5.4.7 Next delivery time would be after the expiration time", "MessageExpired"),
        ("550 5.6.7 mx.example does not support SMTPUTF8", "ProtocolErrors"),
        ("250 2.0.0 OK", UNCATEGORIZED),
    ],
)
def test_shipped_rules_classify(shipped, line, cls):
    """policy/bounce_rules.toml puts common mailbox-provider and nimbus replies in order."""
    assert shipped.classify(line) == cls


def test_shipped_rules_use_known_classes(shipped):
    """The shipped rules use only KumoMTA's predefined class names."""
    assert {cls for cls, _ in shipped.rules} <= set(PREDEFINED_CLASSES)
