"""Policy loading: load_policy on a temporary policy directory."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.policy.egress import EgressSource
from engine.policy.events import (
    EVENTS,
    GET_EGRESS_SOURCE,
    GET_QUEUE_CONFIG,
    SMTP_SERVER_RCPT_TO,
    PolicyLoadError,
)
from engine.policy.loader import load_policy
from engine.policy.queue_config import QueueConfig


def policy(tmp_path: Path, source: str) -> Path:
    """Write ``source`` as init.py in tmp_path and return the init.py path."""
    init = tmp_path / "init.py"
    init.write_text(textwrap.dedent(source))
    return init


def test_directory_without_init_is_empty_policy(tmp_path):
    """A directory without init.py loads as a registry with no handlers."""
    reg = load_policy(tmp_path)
    assert not any(reg.has(event) for event in EVENTS.values())


def test_missing_directory_is_error(tmp_path):
    """A missing policy directory raises PolicyLoadError naming it."""
    missing = tmp_path / "nope"
    with pytest.raises(PolicyLoadError, match=str(missing)):
        load_policy(missing)


async def test_register_returns_queue_config(tmp_path):
    """Handlers registered by register(nimbus) run and may return nimbus.QueueConfig."""
    policy(
        tmp_path,
        """
        def register(nimbus):
            @nimbus.on("get_queue_config")
            def queue_config(domain, tenant, campaign, routing_domain):
                if domain == "slow.example":
                    return nimbus.QueueConfig(retry_interval=nimbus.duration("5m"),
                                              max_age=nimbus.duration("1 day"))
    """,
    )
    reg = load_policy(tmp_path)
    cfg = await reg.dispatch(GET_QUEUE_CONFIG, "slow.example", None, None, None)
    assert cfg == QueueConfig(retry_interval=300.0, max_age=86400.0)


async def test_registry_uses_given_timeout(tmp_path):
    """The loaded registry carries the timeout passed to load_policy."""
    policy(tmp_path, "def register(nimbus):\n    pass\n")
    assert load_policy(tmp_path, timeout=1.5).timeout == 1.5


async def test_policy_can_import_sibling_module(tmp_path, monkeypatch):
    """init.py can import a module that sits beside it."""
    import sys

    monkeypatch.delitem(sys.modules, "helpers_for_nimbus_test", raising=False)
    (tmp_path / "helpers_for_nimbus_test.py").write_text("ANSWER = 42\n")
    policy(
        tmp_path,
        """
        import helpers_for_nimbus_test

        def register(nimbus):
            @nimbus.on("get_egress_source")
            def source(name):
                return nimbus.EgressSource(name=f"{name}-{helpers_for_nimbus_test.ANSWER}")
    """,
    )
    assert await load_policy(tmp_path).dispatch(GET_EGRESS_SOURCE, "x") == EgressSource(name="x-42")


async def test_policy_reject_helper(tmp_path):
    """nimbus.reject in a handler raises the exact rejection."""
    from engine.policy.events import Rejected

    policy(
        tmp_path,
        """
        def register(nimbus):
            @nimbus.on("smtp_server_rcpt_to")
            def rcpt(recipient, meta):
                nimbus.reject(550, "5.7.1 not here")
    """,
    )
    with pytest.raises(Rejected, match="550 5.7.1 not here"):
        await load_policy(tmp_path).dispatch(SMTP_SERVER_RCPT_TO, "r@x", {})


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("def register(nimbus)\n    pass\n", "SyntaxError"),
        ("X = 1\n", "register"),
        ("register = 5\n", "register"),
        ("def register(nimbus):\n    nimbus.on('no_such_event')\n", "no_such_event"),
        ("def register(nimbus):\n    raise RuntimeError('kaput')\n", "kaput"),
        (
            "import module_that_does_not_exist_xyz\ndef register(nimbus):\n    pass\n",
            "module_that_does_not_exist_xyz",
        ),
        (
            "def register(nimbus):\n    f = lambda *a: None\n"
            "    nimbus.on('get_egress_pool')(f)\n    nimbus.on('get_egress_pool')(f)\n",
            "get_egress_pool",
        ),
    ],
)
def test_broken_policy_names_init_path(tmp_path, source, needle):
    """A broken init.py raises PolicyLoadError naming the init.py path and the problem."""
    init = policy(tmp_path, source)
    with pytest.raises(PolicyLoadError) as exc:
        load_policy(tmp_path)
    assert str(init) in str(exc.value) and needle in str(exc.value)


def test_failed_load_restores_sys_path(tmp_path):
    """A failed load removes the policy directory from sys.path again."""
    import sys

    policy(tmp_path, "X = 1\n")
    with pytest.raises(PolicyLoadError):
        load_policy(tmp_path)
    assert str(tmp_path) not in sys.path


def test_policy_may_define_dataclass_with_future_annotations(tmp_path):
    """A policy module may define a dataclass with postponed annotations."""
    policy(
        tmp_path,
        """
        from __future__ import annotations
        from dataclasses import dataclass

        @dataclass
        class Tenant:
            name: str

        def register(nimbus):
            pass
    """,
    )
    load_policy(tmp_path)
