"""Credentials from a Secret-style directory, and Basic Authorization parsing."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from engine.reception.auth import Credentials, MalformedAuthorization, parse_basic


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    """A directory shaped like a mounted Kubernetes Secret with users alice and bob."""
    data = tmp_path / "..2026_01_01_00_00_00.000000001"
    data.mkdir()
    (data / "alice").write_text("wonderland\n")
    (data / "bob").write_text("builder\r\n")
    os.symlink(data.name, tmp_path / "..data")
    for user in ("alice", "bob"):
        os.symlink(f"..data/{user}", tmp_path / user)
    return tmp_path


@pytest.mark.parametrize(
    ("user", "password", "ok"),
    [
        ("alice", "wonderland", True),
        ("bob", "builder", True),
        ("alice", "builder", False),
        ("alice", "wonderland\n", False),
        ("alice", "", False),
        ("carol", "wonderland", False),
        ("..data", "", False),
        ("", "", False),
    ],
)
def test_check(secret_dir, user, password, ok):
    """check accepts the right password, and rejects wrong passwords and unknown users."""
    assert Credentials(str(secret_dir)).check(user, password) is ok


def test_hidden_entries_skipped(secret_dir):
    """Hidden entries (..data and the timestamped dir) are not users."""
    (secret_dir / ".hidden").write_text("pw")
    creds = Credentials(str(secret_dir))
    assert creds.configured and not creds.check(".hidden", "pw")


def test_only_trailing_newline_stripped(tmp_path):
    """Only the trailing newline is stripped; other whitespace is part of the password."""
    (tmp_path / "u").write_text(" spaced pw \n")
    assert Credentials(str(tmp_path)).check("u", " spaced pw ")


@pytest.mark.parametrize("directory", [None, "", "/nonexistent/nimbus/auth"])
def test_missing_directory_means_no_users(directory):
    """A missing or unset directory configures nobody, and check fails."""
    creds = Credentials(directory)
    assert not creds.configured and not creds.check("alice", "wonderland")


def test_empty_directory_means_no_users(tmp_path):
    """An empty directory configures nobody."""
    assert not Credentials(str(tmp_path)).configured


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (basic("alice:wonderland"), ("alice", "wonderland")),
        (basic("alice:pass:with:colons"), ("alice", "pass:with:colons")),
        (basic("alice:"), ("alice", "")),
        (basic("jörg:pässword"), ("jörg", "pässword")),
        ("basic " + base64.b64encode(b"u:p").decode(), ("u", "p")),
        ("  Basic   " + base64.b64encode(b"u:p").decode() + "  ", ("u", "p")),
    ],
)
def test_parse_basic_valid(header, expected):
    """Valid Basic credentials parse to (user, password)."""
    assert parse_basic(header) == expected


@pytest.mark.parametrize("header", ["Bearer abc.def", "Digest x", "", "   "])
def test_parse_basic_other_scheme_is_none(header):
    """A non-Basic Authorization header gives None."""
    assert parse_basic(header) is None


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!not-base64!!!",
        "Basic YWxpY2U",  # bad padding
        basic("no-colon"),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),  # not UTF-8
    ],
)
def test_parse_basic_malformed(header):
    """Malformed Basic credentials raise MalformedAuthorization."""
    with pytest.raises(MalformedAuthorization):
        parse_basic(header)
