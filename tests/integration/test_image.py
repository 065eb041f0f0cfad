"""The container image: built with podman from a local mmdebstrap base (no registry) and
smoke-tested by .ci/image.sh: read-only root, non-root user, liveness OK, a message taken."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _can_build() -> str | None:
    """Why the image cannot be built here, or None."""
    if os.geteuid() != 0 and shutil.which("sudo") is None:
        return "building the image needs root (podman, mmdebstrap) and there is no sudo"
    if shutil.which("podman") is None and shutil.which("apt-get") is None:
        return "podman is not installed and apt-get is not available to install it"
    return None


@pytest.mark.timeout(900)
def test_the_image_builds_and_passes_its_smoke_test(tmp_path):
    why = _can_build()
    if why:
        pytest.skip(why)
    env = {**os.environ, "NIMBUS_IMAGE_TAG": "localhost/nimbus:pytest"}
    done = subprocess.run(
        [str(ROOT / ".ci" / "image.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=880,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "image.sh: liveness OK, SMTP 250" in out
    assert "smoke test passed (read-only root, uid 10001, Reception record written)" in out
