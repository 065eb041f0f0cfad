"""Unknown NIMBUS_* environment names: found, matched to the closest known name, reported."""

from __future__ import annotations

import logging

import pytest

from engine import cli
from engine.config.env_names import describe_unknown_env, known_env_names, unknown_env_names


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"NIMBUS_SMTP_LISTEN": "x"}, []),
        ({"NIMBUS_SMTP_LISTN": "x"}, [("NIMBUS_SMTP_LISTN", "NIMBUS_SMTP_LISTEN")]),
        ({"NIMBUS_REDIS_ULR": "x"}, [("NIMBUS_REDIS_ULR", "NIMBUS_REDIS_URL")]),
        ({"NIMBUS_RELAY_HOSTS": "x", "NIMBUS_CONFIG": "f"}, []),  # alias and the file
        ({"NIMBUS_ENDPOINT": "x", "NIMBUS_ADMIN_USER": "u"}, []),  # admin verbs
        ({"NIMBUS_ZZZZZZZZZZZZZZZZ": "x"}, [("NIMBUS_ZZZZZZZZZZZZZZZZ", None)]),
        ({"PATH": "/bin", "NIMBUSX": "1"}, []),  # not NIMBUS_*
    ],
)
def test_unknown_env_names(env, expected):
    """Names nothing reads are listed, sorted, each with its closest known name or None."""
    assert unknown_env_names(env) == expected


def test_every_setting_has_its_env_name():
    """Each [section] key has NIMBUS_<SECTION>_<KEY>; top-level keys NIMBUS_<KEY>."""
    names = known_env_names()
    assert {"NIMBUS_SMTP_LISTEN", "NIMBUS_NODE_ID", "NIMBUS_DNS_NAMESERVERS"} <= names


def test_describe_unknown_env():
    """The human line names the unknown variable and the suggestion."""
    assert describe_unknown_env([("NIMBUS_SMTP_LISTN", "NIMBUS_SMTP_LISTEN")]) == [
        "environment NIMBUS_SMTP_LISTN: unknown setting, ignored (did you mean NIMBUS_SMTP_LISTEN?)"
    ]


def test_startup_reports_unknown_names_in_one_warning(monkeypatch, caplog):
    """At startup one warning diagnostic maps each unknown name to its closest match."""
    monkeypatch.setenv("NIMBUS_SMTP_LISTN", "x")
    monkeypatch.setenv("NIMBUS_SPOOL_DIRR", "y")
    with caplog.at_level(logging.WARNING, logger="nimbus.cli"):
        cli._report_unknown_env()
    [record] = [r for r in caplog.records if r.getMessage() == "unknown_environment_names"]
    assert record.unknown == {
        "NIMBUS_SMTP_LISTN": "NIMBUS_SMTP_LISTEN",
        "NIMBUS_SPOOL_DIRR": "NIMBUS_SPOOL_DIR",
    }
