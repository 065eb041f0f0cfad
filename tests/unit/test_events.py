"""Policy event registry: registration rules and dispatch semantics."""

from __future__ import annotations

import asyncio

import pytest

from engine.policy.events import (
    EVENTS,
    PolicyFailure,
    PolicyLoadError,
    Registry,
    Rejected,
    reject,
)
from engine.records import EnhancedCode


def test_unknown_event_rejected_at_registration():
    """Registering for an undeclared event name raises PolicyLoadError at once."""
    with pytest.raises(PolicyLoadError, match="no_such_event"):
        Registry().on("no_such_event")


def test_second_handler_on_single_handler_event_rejected():
    """A second handler for a one-handler event raises PolicyLoadError."""
    reg = Registry()
    reg.on("smtp_server_mail_from")(lambda sender, meta: None)
    with pytest.raises(PolicyLoadError, match="smtp_server_mail_from"):
        reg.on("smtp_server_mail_from")(lambda sender, meta: None)


@pytest.mark.parametrize("name", sorted(n for n, e in EVENTS.items() if e.many))
def test_many_event_accepts_several_handlers(name):
    """A many=True event accepts several handlers."""
    reg = Registry()
    reg.on(name)(lambda *a: None)
    reg.on(name)(lambda *a: None)
    assert reg.has(name)


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([None, None], "default"),
        ([None, "second"], "second"),
        (["first", "second"], "first"),
        ([0, "second"], 0),  # falsy but not None still wins
        ([False, "second"], False),
    ],
)
async def test_many_event_first_non_none_wins(results, expected):
    """Dispatch returns the first non-None handler result, else the default."""
    reg = Registry()
    for value in results:
        reg.on("get_queue_config")(lambda *a, v=value: v)
    assert (
        await reg.dispatch("get_queue_config", "d", None, None, None, default="default") == expected
    )


async def test_handlers_run_in_registration_order_until_result():
    """Handlers run in registration order and stop at the first non-None result."""
    calls = []
    reg = Registry()
    reg.on("get_queue_config")(lambda *a: calls.append("a"))
    reg.on("get_queue_config")(lambda *a: calls.append("b") or "b")
    reg.on("get_queue_config")(lambda *a: calls.append("c") or "c")
    await reg.dispatch("get_queue_config", "d", None, None, None)
    assert calls == ["a", "b"]


async def test_async_handler_result_awaited():
    """A coroutine handler's result is awaited and returned."""
    reg = Registry()

    @reg.on("http_server_validate_auth_basic")
    async def check(user, password):
        await asyncio.sleep(0)
        return user == "u" and password == "p"

    assert await reg.dispatch("http_server_validate_auth_basic", "u", "p") is True


async def test_sync_handler_receives_arguments():
    """A plain handler receives the dispatch arguments positionally."""
    reg = Registry()
    reg.on("get_egress_source")(lambda name: f"source:{name}")
    assert await reg.dispatch("get_egress_source", "ip-1") == "source:ip-1"


async def test_no_handler_returns_default():
    """Dispatching an event nobody handles returns the default."""
    assert await Registry().dispatch("get_egress_pool", "p", default="dflt") == "dflt"


@pytest.mark.parametrize("is_async", [False, True])
async def test_raising_handler_becomes_policy_failure(is_async):
    """A handler that raises becomes PolicyFailure with a 451 4.3.0 response."""
    reg = Registry()
    if is_async:

        async def handler(sender, meta):
            raise RuntimeError("boom")
    else:

        def handler(sender, meta):
            raise RuntimeError("boom")

    reg.on("smtp_server_mail_from")(handler)
    with pytest.raises(PolicyFailure) as exc:
        await reg.dispatch("smtp_server_mail_from", "s@x", {})
    resp = exc.value.response
    assert (resp.code, resp.enhanced_code, exc.value.event) == (
        451,
        EnhancedCode(4, 3, 0),
        "smtp_server_mail_from",
    )


async def test_slow_handler_times_out_as_policy_failure():
    """A handler running past the registry timeout becomes PolicyFailure."""
    reg = Registry(timeout=0.01)

    @reg.on("smtp_server_rcpt_to")
    async def slow(recipient, meta):
        await asyncio.sleep(10)

    with pytest.raises(PolicyFailure, match="timed out") as exc:
        await reg.dispatch("smtp_server_rcpt_to", "r@x", {})
    assert exc.value.response.code == 451


async def test_reject_becomes_rejected_with_exact_response():
    """reject(550, '5.7.1 no') raises Rejected carrying exactly that reply."""
    reg = Registry()

    @reg.on("smtp_server_rcpt_to")
    def deny(recipient, meta):
        reject(550, "5.7.1 no")

    with pytest.raises(Rejected) as exc:
        await reg.dispatch("smtp_server_rcpt_to", "r@x", {})
    resp = exc.value.response
    assert (resp.code, resp.enhanced_code, resp.content, resp.single_line()) == (
        550,
        EnhancedCode(5, 7, 1),
        "no",
        "550 5.7.1 no",
    )


@pytest.mark.parametrize("code", [200, 399, 600, 99])
def test_reject_requires_4xx_or_5xx(code):
    """reject with a code outside 400-599 raises ValueError."""
    with pytest.raises(ValueError):
        reject(code, "nope")


@pytest.mark.parametrize("outcome", ["ok", "raise", "reject"])
async def test_on_dispatch_called_with_event_and_duration(outcome):
    """on_dispatch receives the event name and elapsed seconds after every dispatch."""
    seen = []
    reg = Registry(on_dispatch=lambda name, secs: seen.append((name, secs)))

    @reg.on("smtp_server_mail_from")
    def handler(sender, meta):
        if outcome == "raise":
            raise RuntimeError("x")
        if outcome == "reject":
            reject(550, "no")

    try:
        await reg.dispatch("smtp_server_mail_from", "s", {})
    except (PolicyFailure, Rejected):
        pass
    assert [n for n, _ in seen] == ["smtp_server_mail_from"] and seen[0][1] >= 0


async def test_on_dispatch_not_called_without_handlers():
    """on_dispatch is not called when no handler is registered."""
    seen = []
    reg = Registry(on_dispatch=lambda name, secs: seen.append(name))
    await reg.dispatch("init")
    assert seen == []
