"""Credentials for HTTP basic auth and SMTP AUTH, from a directory of files.

Exports:
    Credentials     check(user, password) -> bool; parse_basic(header) -> (user, password)

The directory holds one file per user: the file name is the username and the
content the password (trailing newline ignored) - exactly what a mounted
Kubernetes Secret looks like, including its hidden ``..data`` entries, which are
skipped. The directory is re-read when its modification time changes (a Secret
update swaps the ``..data`` symlink), checked at most once a second. Passwords
are compared in constant time (``hmac.compare_digest``) against a SHA-256 of
each, so neither length nor content leaks through timing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import time
from pathlib import Path

__all__ = ["Credentials", "parse_basic", "MalformedAuthorization"]

log = logging.getLogger("nimbus.auth")


class MalformedAuthorization(ValueError):
    """The Authorization header is not valid Basic credentials (HTTP 400, as KumoMTA)."""


def _digest(password: str) -> bytes:
    return hashlib.sha256(password.encode("utf-8")).digest()


def parse_basic(header: str) -> tuple[str, str] | None:
    """``Basic <base64 user:password>`` -> (user, password); None for other schemes."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise MalformedAuthorization("Authorization header is not valid base64 UTF-8") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise MalformedAuthorization("Basic credentials must be user:password")
    return user, password


class Credentials:
    """Users from ``directory`` (None or empty: nobody can authenticate)."""

    def __init__(self, directory: str | None) -> None:
        self._dir = Path(directory) if directory else None
        self._users: dict[str, bytes] = {}
        self._mtime: float | None = None
        self._checked = 0.0
        self._refresh(force=True)

    @property
    def configured(self) -> bool:
        self._refresh()
        return bool(self._users)

    def _refresh(self, force: bool = False) -> None:
        if self._dir is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return
        self._checked = now
        try:
            mtime = os.stat(self._dir).st_mtime
        except OSError:
            if self._users:
                log.warning("auth_dir_unreadable", extra={"dir": str(self._dir)})
            self._users, self._mtime = {}, None
            return
        if mtime == self._mtime and not force:
            return
        users = {}
        for entry in self._dir.iterdir():
            if entry.name.startswith(".") or not entry.is_file():
                continue
            try:
                users[entry.name] = _digest(entry.read_text("utf-8").rstrip("\r\n"))
            except (OSError, UnicodeDecodeError) as exc:
                log.warning("auth_file_unreadable", extra={"file": str(entry), "error": str(exc)})
        self._users, self._mtime = users, mtime
        log.info("auth_users_loaded", extra={"count": len(users), "dir": str(self._dir)})

    def check(self, user: str, password: str) -> bool:
        """True when ``user`` exists and ``password`` matches (constant-time compare)."""
        self._refresh()
        expected = self._users.get(user)
        given = _digest(password)
        if expected is None:
            hmac.compare_digest(given, given)  # same work whether or not the user exists
            return False
        return hmac.compare_digest(given, expected)
