"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from tests.support.receiver import Receiver


@pytest.fixture
async def rx():
    """A capturing SMTP receiver on a free loopback port."""
    async with Receiver() as receiver:
        yield receiver


@pytest.fixture
def auth_dir(tmp_path):
    """A basic-auth directory (as a mounted Secret) with user alice, password s3cret."""
    directory = tmp_path / "auth"
    directory.mkdir()
    (directory / "alice").write_text("s3cret\n")
    return directory
