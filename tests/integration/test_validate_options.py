"""`nimbus validate` end to end: refused options, MTA-STS/DANE accepted, unknown env names."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

from engine.config.settings import BUNDLED_POLICY_DIR


def policy_copy(tmp_path: Path) -> Path:
    target = tmp_path / "policy"
    shutil.copytree(BUNDLED_POLICY_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


async def run_validate(policy: Path, **env: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``nimbus validate --policy DIR`` with extra env."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "engine.cli", "validate", "--policy", str(policy)),
        env={**clean, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_bundled_policy_validates_without_warnings(tmp_path):
    """The shipped policy loads (exit 0); its office365-dane block's enable_dane = true
    is implemented now, so nothing is warned about."""
    policy = policy_copy(tmp_path)
    code, out, err = await run_validate(policy)
    assert code == 0, err
    assert "warning" not in out
    assert "OK" in out


async def test_refused_option_fails_validation(tmp_path):
    """An option Nimbus does not implement exits 1 naming file, block, key, 'not supported'."""
    policy = policy_copy(tmp_path)
    path = policy / "shaping.toml"
    path.write_text(path.read_text() + '\n["gmail.com"]\nreconnect_strategy = "TerminateSession"\n')
    code, _, err = await run_validate(policy)
    assert code == 1
    assert f'{path}: ["gmail.com"] key "reconnect_strategy": not supported by Nimbus' in err


async def test_refused_set_config_fails_validation(tmp_path):
    """A SetConfig automation action of an unsupported option fails validation too."""
    policy = policy_copy(tmp_path)
    path = policy / "shaping.toml"
    path.write_text(
        path.read_text().replace(
            '{SetConfig = {name = "connection_limit", value = 1}}',
            '{SetConfig = {name = "enable_pipelining", value = false}}',
            1,
        )
    )
    code, _, err = await run_validate(policy)
    assert code == 1
    assert 'action SetConfig key "enable_pipelining": not supported by Nimbus' in err


async def test_mta_sts_true_validates_silently(tmp_path):
    """enable_mta_sts = true is implemented: exit 0 and no warning."""
    policy = policy_copy(tmp_path)
    path = policy / "shaping.toml"
    path.write_text(
        path.read_text().replace('["default"]\n', '["default"]\nenable_mta_sts = true\n', 1)
    )
    code, out, err = await run_validate(policy)
    assert code == 0, err
    assert "warning" not in out and "enable_mta_sts" not in out


async def test_unknown_env_names_are_listed_with_the_closest_name(tmp_path):
    """A mistyped NIMBUS_* name is printed with its closest known name; exit stays 0."""
    policy = policy_copy(tmp_path)
    code, out, err = await run_validate(
        policy, NIMBUS_SMTP_LISTN="127.0.0.1:2525", NIMBUS_LOG_LEVEL="warning"
    )
    assert code == 0, err
    assert (
        "nimbus validate: warning: environment NIMBUS_SMTP_LISTN: unknown setting, ignored "
        "(did you mean NIMBUS_SMTP_LISTEN?)"
    ) in out
    assert "NIMBUS_LOG_LEVEL" not in out
