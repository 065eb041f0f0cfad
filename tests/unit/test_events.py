"""Policy event registry: registration rules and dispatch semantics."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.policy.egress import EgressPathConfig, EgressPool, EgressSource
from engine.policy.events import (
    EVENTS,
    GET_EGRESS_POOL,
    GET_EGRESS_SOURCE,
    GET_LISTENER_DOMAIN,
    GET_QUEUE_CONFIG,
    HTTP_SERVER_VALIDATE_AUTH_BASIC,
    INIT,
    SMTP_SERVER_MAIL_FROM,
    SMTP_SERVER_RCPT_TO,
    Event,
    PolicyFailure,
    PolicyLoadError,
    Registry,
    Rejected,
    conforms,
    reject,
)
from engine.policy.listener_domain import ListenerDomain
from engine.policy.message import PolicyMessage
from engine.policy.queue_config import QueueConfig
from engine.records import EnhancedCode, Response

# An event outside the catalogue, to test dispatch semantics with plain values.
PROBE = Event(name="probe", args=(), result=int | str, many=True)


def test_unknown_event_rejected_at_registration():
    """Registering for an undeclared event name raises PolicyLoadError at once."""
    with pytest.raises(PolicyLoadError, match="no_such_event"):
        Registry().on("no_such_event")


def test_events_are_registered_by_kumomta_name():
    """Registering by name and dispatching by the Event object reach the same handlers."""
    reg = Registry()
    reg.on("smtp_server_mail_from")(lambda sender, meta: None)
    assert (
        reg.has(SMTP_SERVER_MAIL_FROM) and EVENTS["smtp_server_mail_from"] is SMTP_SERVER_MAIL_FROM
    )


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
    assert reg.has(EVENTS[name])


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([None, None], "default"),
        ([None, "second"], "second"),
        (["first", "second"], "first"),
        ([0, "second"], 0),  # falsy but not None still wins
        (["", "second"], ""),
    ],
)
async def test_many_event_first_non_none_wins(results, expected):
    """Dispatch returns the first non-None handler result, else the default."""
    reg = Registry()
    for value in results:
        reg.on(PROBE)(lambda *a, v=value: v)
    assert await reg.dispatch(PROBE, default="default") == expected


async def test_handlers_run_in_registration_order_until_result():
    """Handlers run in registration order and stop at the first non-None result."""
    calls = []
    b, c = QueueConfig(max_retry_interval=60.0), QueueConfig(max_retry_interval=120.0)
    reg = Registry()
    reg.on("get_queue_config")(lambda *a: calls.append("a"))
    reg.on("get_queue_config")(lambda *a: calls.append("b") or b)
    reg.on("get_queue_config")(lambda *a: calls.append("c") or c)
    assert await reg.dispatch(GET_QUEUE_CONFIG, "d", None, None, None) is b
    assert calls == ["a", "b"]


async def test_async_handler_result_awaited():
    """A coroutine handler's result is awaited and returned."""
    reg = Registry()

    @reg.on("http_server_validate_auth_basic")
    async def check(user, password):
        await asyncio.sleep(0)
        return user == "u" and password == "p"

    assert await reg.dispatch(HTTP_SERVER_VALIDATE_AUTH_BASIC, "u", "p") is True


async def test_sync_handler_receives_arguments():
    """A plain handler receives the dispatch arguments positionally."""
    reg = Registry()
    reg.on("get_egress_source")(lambda name: EgressSource(name=f"source:{name}"))
    assert await reg.dispatch(GET_EGRESS_SOURCE, "ip-1") == EgressSource(name="source:ip-1")


async def test_no_handler_returns_default():
    """Dispatching an event nobody handles returns the default."""
    assert await Registry().dispatch(GET_EGRESS_POOL, "p", default="dflt") == "dflt"


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
        await reg.dispatch(SMTP_SERVER_MAIL_FROM, "s@x", {})
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
        await reg.dispatch(SMTP_SERVER_RCPT_TO, "r@x", {})
    assert exc.value.response.code == 451


async def test_blocking_sync_handler_is_bounded_by_the_timeout():
    """A sync handler blocking 1 s under a 0.1 s timeout gives 451 within 0.3 s; its thread
    still runs to completion afterwards, and its result is dropped."""
    release, finished = threading.Event(), threading.Event()
    reg = Registry(timeout=0.1)

    @reg.on("smtp_server_rcpt_to")
    def blocking(recipient, meta):
        release.wait(1.0)  # blocks its thread like time.sleep(1), but the test can end it
        finished.set()
        reject(550, "5.7.1 too late to count")

    started = time.monotonic()
    with pytest.raises(PolicyFailure, match="timed out") as exc:
        await reg.dispatch(SMTP_SERVER_RCPT_TO, "r@x", {})
    elapsed = time.monotonic() - started
    assert exc.value.response.code == 451 and 0.1 <= elapsed < 0.3
    assert not finished.is_set()  # still running in its thread: it cannot be killed
    release.set()
    assert await asyncio.to_thread(finished.wait, 5.0)


async def test_time_sleep_handler_returns_451_on_time():
    """A handler doing time.sleep(1) under a 0.1 s timeout returns PolicyFailure in < 0.3 s."""
    pool = ThreadPoolExecutor(max_workers=1)
    reg = Registry(timeout=0.1, executor=pool)
    reg.on("smtp_server_mail_from")(lambda sender, meta: time.sleep(1))
    started = time.monotonic()
    with pytest.raises(PolicyFailure, match="timed out"):
        await reg.dispatch(SMTP_SERVER_MAIL_FROM, "s@x", {})
    assert time.monotonic() - started < 0.3
    pool.shutdown(wait=False)


async def test_held_pool_times_out_sync_handlers_while_async_ones_answer():
    """With every pool thread held by a stuck handler, the next sync dispatch times out
    too (451) and async handlers on the loop still answer."""
    release = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1)
    reg = Registry(timeout=0.1, executor=pool)
    reg.on("smtp_server_mail_from")(lambda sender, meta: release.wait(2.0) and None)

    @reg.on("http_server_validate_auth_basic")
    async def check(user, password):
        return True

    for _ in range(2):
        with pytest.raises(PolicyFailure, match="timed out"):
            await reg.dispatch(SMTP_SERVER_MAIL_FROM, "s@x", {})
    assert await reg.dispatch(HTTP_SERVER_VALIDATE_AUTH_BASIC, "u", "p") is True
    release.set()
    pool.shutdown(wait=True)


async def test_sync_handler_runs_in_a_worker_thread_with_the_callers_context():
    """A plain handler runs off the loop's thread and sees the caller's contextvars."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("conn", default="none")
    var.set("session-1")
    seen = []
    reg = Registry()
    reg.on("smtp_server_mail_from")(
        lambda sender, meta: seen.append((threading.get_ident(), var.get()))
    )
    await reg.dispatch(SMTP_SERVER_MAIL_FROM, "s@x", {})
    assert seen[0][0] != threading.get_ident() and seen[0][1] == "session-1"


async def test_inline_handler_runs_on_the_loop_thread():
    """A handler registered inline=True runs on the loop's own thread."""
    seen = []
    reg = Registry()
    reg.on("smtp_server_mail_from", inline=True)(
        lambda sender, meta: seen.append(threading.get_ident())
    )
    await reg.dispatch(SMTP_SERVER_MAIL_FROM, "s@x", {})
    assert seen == [threading.get_ident()] and reg.modes(SMTP_SERVER_MAIL_FROM) == ["inline"]


async def test_inline_handler_past_the_timeout_fails_and_moves_to_the_pool():
    """An inline handler that overruns the timeout gives PolicyFailure (its result dropped)
    and runs in a worker thread from then on."""
    reg = Registry(timeout=0.05)
    reg.on("get_egress_source", inline=True)(
        lambda name: time.sleep(0.1) or EgressSource(name=name)
    )
    with pytest.raises(PolicyFailure, match="inline handler"):
        await reg.dispatch(GET_EGRESS_SOURCE, "s")
    assert reg.modes(GET_EGRESS_SOURCE) == ["thread"]
    started = time.monotonic()
    with pytest.raises(PolicyFailure, match="timed out"):
        await reg.dispatch(GET_EGRESS_SOURCE, "s")
    assert time.monotonic() - started < 0.09  # bounded now: the timeout, not the 0.1 s


def test_inline_coroutine_handler_is_a_load_error():
    """inline=True on a coroutine handler fails at load (coroutines always run on the loop)."""

    async def handler(sender, meta):
        return None

    with pytest.raises(PolicyLoadError, match="inline"):
        Registry().on("smtp_server_mail_from", inline=True)(handler)


async def test_reject_becomes_rejected_with_exact_response():
    """reject(550, '5.7.1 no') raises Rejected carrying exactly that reply."""
    reg = Registry()

    @reg.on("smtp_server_rcpt_to")
    def deny(recipient, meta):
        reject(550, "5.7.1 no")

    with pytest.raises(Rejected) as exc:
        await reg.dispatch(SMTP_SERVER_RCPT_TO, "r@x", {})
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
        await reg.dispatch(SMTP_SERVER_MAIL_FROM, "s", {})
    except (PolicyFailure, Rejected):
        pass
    assert [n for n, _ in seen] == ["smtp_server_mail_from"] and seen[0][1] >= 0


async def test_on_dispatch_not_called_without_handlers():
    """on_dispatch is not called when no handler is registered."""
    seen = []
    reg = Registry(on_dispatch=lambda name, secs: seen.append(name))
    await reg.dispatch(INIT)
    assert seen == []


# -- result types -------------------------------------------------------------------

MSG = PolicyMessage("id1", "s@x.test", "r@y.test", b"Subject: t\r\n\r\nb\r\n", {})
RESPONSE = Response.parse(450, "4.2.0 later")

# Every declared event: arguments to dispatch it with, and an answer of the right type
# (None for events whose handlers answer nothing).
SAMPLES = {
    "init": ((), None),
    "smtp_server_ehlo": (("c.test", {}, ["SIZE"]), ["SIZE", "8BITMIME"]),
    "smtp_server_mail_from": (("s@x.test", {}), None),
    "smtp_server_rcpt_to": (("r@y.test", {}), None),
    "smtp_server_message_received": ((MSG, {}), None),
    "http_message_generated": ((MSG, {"user": "u"}), None),
    "xfer_message_received": ((MSG, {"from_node": "mta-1", "peer": "10.0.0.2"}), None),
    "http_server_validate_auth_basic": (("u", "p"), False),
    "get_listener_domain": (("y.test", "127.0.0.1:25", {}), ListenerDomain(relay_to=True)),
    "get_queue_config": (("y.test", None, None, None), QueueConfig()),
    "get_egress_source": (("ip-1",), EgressSource(name="ip-1")),
    "get_egress_pool": (("pool",), EgressPool(name="pool")),
    "get_egress_path_config": (("y.test", "ip-1", "site"), EgressPathConfig()),
    "explain_egress_path_config": (("y.test", "ip-1", "site"), {"connection_limit": "default"}),
    "requeue_message": ((MSG, RESPONSE, [], True, None), None),
    "smtp_client_rewrite_delivery_status": ((RESPONSE, "y.test", None, None, None), 451),
    "should_enqueue_log_record": ((MSG, "hook"), True),
    "should_suppress_recipient": (("r@y.test", "acme", "bounce"), False),
}


def test_every_event_has_a_result_type_sample():
    """The result-type table below covers every declared event."""
    assert set(SAMPLES) == set(EVENTS)


class Unexpected:
    """A type no event declares."""


def registry_answering(event: Event, answer) -> Registry:
    reg = Registry()
    reg.on(event.name, inline=True)(lambda *a: answer)
    return reg


@pytest.mark.parametrize("name", sorted(SAMPLES))
async def test_right_result_type_passes(name):
    """A handler answering the declared result type gets its answer through."""
    args, answer = SAMPLES[name]
    event = EVENTS[name]
    got = await registry_answering(event, answer).dispatch(event, *args, default="no answer")
    assert got == ("no answer" if answer is None else answer)


@pytest.mark.parametrize("name", sorted(SAMPLES))
async def test_none_result_passes(name):
    """None is always allowed: the dispatch returns the default."""
    args, _ = SAMPLES[name]
    event = EVENTS[name]
    assert await registry_answering(event, None).dispatch(event, *args, default="d") == "d"


@pytest.mark.parametrize("name", sorted(SAMPLES))
async def test_wrong_result_type_fails_with_one_log_line(name, caplog):
    """A wrong answer type is a 451 4.3.0 PolicyFailure and one error line naming the
    event, the handler and the expected vs actual type."""
    args, _ = SAMPLES[name]
    event = EVENTS[name]
    reg = Registry()

    def answer_wrong(*a):
        return Unexpected()

    reg.on(name)(answer_wrong)
    with caplog.at_level(logging.INFO, logger="nimbus.events"):
        with pytest.raises(PolicyFailure, match="Unexpected") as exc:
            await reg.dispatch(event, *args)
    assert (exc.value.response.code, exc.value.response.enhanced_code) == (
        451,
        EnhancedCode(4, 3, 0),
    )
    [line] = caplog.records
    assert (line.event_name, line.actual, line.levelname) == (name, "Unexpected", "ERROR")
    assert line.handler.endswith("answer_wrong") and line.expected in str(exc.value)


@pytest.mark.parametrize(
    ("value", "expected", "ok"),
    [
        ("x", str, True),
        (None, str | None, True),
        (1, str | None, False),
        (["a", "b"], list[str], True),
        (["a", 1], list[str], False),
        (("a",), list[str], False),
        (451, int, True),
        (True, int, False),  # a bool is no reply code
        (True, bool, True),
        (None, None, True),
        (0, None, False),
        (QueueConfig(), QueueConfig, True),
        (EgressSource(name="s"), QueueConfig, False),
    ],
)
def test_conforms(value, expected, ok):
    """conforms() checks a value against a declared type."""
    assert conforms(value, expected) is ok


@pytest.mark.parametrize(
    "args",
    [("r@x",), ("r@x", {}, "extra"), (1, {}), ("r@x", "not a dict")],
)
async def test_engine_dispatch_with_undeclared_arguments_is_a_type_error(args):
    """Dispatching arguments the event does not declare is an engine bug: TypeError."""
    reg = Registry()
    reg.on("smtp_server_rcpt_to")(lambda *a: None)
    with pytest.raises(TypeError, match="smtp_server_rcpt_to"):
        await reg.dispatch(SMTP_SERVER_RCPT_TO, *args)


@pytest.mark.parametrize("field", ["log_oob", "log_arf"])
@pytest.mark.parametrize("value", ["Ignore", "LogThenRelay", "LogThenDrop"])
def test_listener_domain_takes_kumomta_report_modes(field, value):
    assert getattr(ListenerDomain(**{field: value}), field) == value


@pytest.mark.parametrize("value", ["Drop", "logthendrop", "", "true"])
def test_listener_domain_refuses_other_report_modes(value):
    """Anything but KumoMTA's three values is an error naming the field, not ignored."""
    with pytest.raises(ValueError, match=r"ListenerDomain log_oob=.*LogThenDrop"):
        ListenerDomain(log_oob=value)


async def test_policy_answering_a_bad_report_mode_is_a_policy_failure():
    reg = Registry()
    reg.on("get_listener_domain")(lambda domain, listener, meta: ListenerDomain(log_arf="Keep"))
    with pytest.raises(PolicyFailure, match="log_arf='Keep'"):
        await reg.dispatch(GET_LISTENER_DOMAIN, "a.test", "127.0.0.1:25", {})
