"""Credentials in a log hook's URL are masked wherever the URL is shown."""

from __future__ import annotations

import pytest

from engine.policy.log_hook import LogHook, redact_url, tsa_hooks


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://tsa:8008", "http://tsa:8008"),
        ("https://u:pw@hooks.test/x?y=1", "https://u:***@hooks.test/x?y=1"),
        ("http://u:p%40ss@127.0.0.1:9/", "http://u:***@127.0.0.1:9/"),
        ("http://user@host/", "http://user@host/"),  # no password: nothing to hide
        ("http://a:b@c:d@host:1/p", "http://a:***@host:1/p"),  # the last @ ends userinfo
        ("http://[::1", "<unparsable URL>"),
    ],
)
def test_redact_url(url, shown):
    """Only the password part of the userinfo is replaced."""
    assert redact_url(url) == shown


def test_tsa_hook_name_and_display_url_hide_the_password():
    """The TSA hook's name (a log field, a metrics label, a queue key) never holds it."""
    [hook] = tsa_hooks(["http://pub:hunter2@tsa:8008"])
    assert hook.name == "tsa:http://pub:***@tsa:8008"
    assert hook.display_url == "http://pub:***@tsa:8008/publish_log_v1"
    assert "hunter2" not in repr(LogHook(name="h", url="http://h/", headers={"X-Key": "hunter2"}))


def test_invalid_url_error_masks_the_password():
    """A refused URL is named in the error without its password."""
    with pytest.raises(ValueError) as info:
        LogHook(name="h", url="ftp://u:hunter2@h/")
    assert "hunter2" not in str(info.value) and "u:***@h" in str(info.value)
