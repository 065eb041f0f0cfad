"""Policy events: each hook declared once as a typed ``Event``, and the one dispatcher.

Exports:
    Event                 a declaration: name, typed arguments, result type, many handlers or one
    INIT, SMTP_SERVER_EHLO, ... SHOULD_ENQUEUE_LOG_RECORD   every declared event
    EVENTS                every declared event by name (KumoMTA's names and meaning)
    Registry              handlers registered by a policy; ``dispatch(EVENT, ...)`` runs them
    Rejected              raised by ``reject(code, text)``; becomes that exact SMTP/HTTP reply
    PolicyFailure         a handler raised, timed out or answered the wrong type: callers
                          answer 4xx (never a crash)
    PolicyLoadError       a registration names an unknown event, or doubles a one-handler event

Dispatch runs handlers in registration order; the first non-None result wins
(``many=True`` events may have several handlers; others exactly one). Each result is
checked against the event's declared result type (None always passes: "no answer"); a
wrong type is a PolicyFailure exactly like an exception, logged once naming the event,
the handler and the expected and actual types.

Where handlers run. The whole dispatch runs under ``asyncio.timeout(policy.event_timeout)``.
- Coroutine handlers run on the loop, as any other task.
- Plain (sync) handlers run in a worker thread of the node's policy pool
  (``policy.handler_threads`` threads), so a blocking handler cannot stall the loop and
  the timeout really bounds the caller: a ``time.sleep(1)`` under a 0.1 s timeout gives
  ``451 4.3.0`` after 0.1 s. A thread cannot be killed, so a timed-out sync handler still
  runs to completion in its thread (its side effects happen; its result is dropped) and
  holds one pool thread until then; when every thread is held, further sync dispatches
  wait for one and time out in turn (451), while the loop and async handlers go on.
  Handlers running in threads may run concurrently with each other: state they share
  must be safe for that.
- ``@nimbus.on(name, inline=True)`` runs a plain handler on the loop instead, saving the
  thread hop (bench/policy_dispatch_bench.py: ~90-165 us of CPU per dispatch with the
  handler in the pool, ~10 us inline, against ~1.65 ms per relayed message and up to ~5
  dispatches). It is for handlers that never block (table lookups), and it is bounded
  after the fact: an inline handler that runs past the timeout has its result dropped,
  gives PolicyFailure (451) like a timeout, and from then on runs in the pool; the loop
  was blocked for that one call, and the log says so.

    Exception tree:
        Exception
         +-- Rejected             policy said no: reply with (code, text)
         +-- PolicyFailure        policy broke: reply 451 4.3.0 / HTTP 500, log it
         +-- PolicyLoadError      policy cannot be loaded (ValueError)
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import inspect
import logging
import time
import types
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from engine.policy.egress import EgressPathConfig, EgressPool, EgressSource
from engine.policy.listener_domain import ListenerDomain
from engine.policy.log_hook import LogHook
from engine.policy.message import PolicyMessage
from engine.policy.queue_config import QueueConfig
from engine.policy.warmup import WarmupSchedule
from engine.records import Response

__all__ = [
    "Event",
    "EVENTS",
    "INIT",
    "SMTP_SERVER_EHLO",
    "SMTP_SERVER_MAIL_FROM",
    "SMTP_SERVER_RCPT_TO",
    "SMTP_SERVER_MESSAGE_RECEIVED",
    "HTTP_MESSAGE_GENERATED",
    "HTTP_SERVER_VALIDATE_AUTH_BASIC",
    "GET_LISTENER_DOMAIN",
    "GET_QUEUE_CONFIG",
    "GET_EGRESS_SOURCE",
    "GET_EGRESS_POOL",
    "GET_EGRESS_PATH_CONFIG",
    "EXPLAIN_EGRESS_PATH_CONFIG",
    "REQUEUE_MESSAGE",
    "SMTP_CLIENT_REWRITE_DELIVERY_STATUS",
    "XFER_MESSAGE_RECEIVED",
    "SHOULD_ENQUEUE_LOG_RECORD",
    "SHOULD_SUPPRESS_RECIPIENT",
    "Registry",
    "Rejected",
    "PolicyFailure",
    "PolicyLoadError",
    "reject",
]

log = logging.getLogger("nimbus.events")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One policy hook.

    name: KumoMTA's event name, which policies register with.
    args: (argument name, type) of what handlers receive, positionally.
    result: what a handler may answer besides None: a class, a union (``A | B``),
        ``list[X]``, or None for events whose handlers answer nothing.
    many: several handlers may be registered (the first non-None answer wins).
    """

    name: str
    args: tuple[tuple[str, Any], ...]
    result: Any
    many: bool = False

    def check_args(self, args: tuple[Any, ...]) -> None:
        """Raise TypeError when the engine dispatches arguments this event does not declare."""
        if len(args) != len(self.args):
            raise TypeError(f"event {self.name} takes {len(self.args)} arguments, got {len(args)}")
        for (arg_name, expected), value in zip(self.args, args, strict=True):
            if not conforms(value, expected):
                raise TypeError(
                    f"event {self.name} argument {arg_name}: expected {type_name(expected)}, "
                    f"got {type(value).__name__}"
                )


def conforms(value: Any, expected: Any) -> bool:
    """Does ``value`` have the declared type? (None means "only None"; bool is no int.)"""
    if expected is None or expected is type(None):
        return value is None
    if isinstance(expected, types.UnionType):
        return any(conforms(value, t) for t in expected.__args__)
    if isinstance(expected, types.GenericAlias):  # list[str]
        origin: Any = expected.__origin__
        (item,) = expected.__args__
        return isinstance(value, origin) and all(conforms(v, item) for v in value)
    if expected is int and isinstance(value, bool):
        return False  # True is an int to Python, not a reply code to us
    return isinstance(value, expected)


def type_name(expected: Any) -> str:
    if expected is None:
        return "None"
    return expected.__name__ if isinstance(expected, type) else str(expected)


_META = dict
_NAME = str | None  # queue-name parts absent from a queue name are None

INIT = Event(name="init", args=(), result=None, many=True)
SMTP_SERVER_EHLO = Event(
    name="smtp_server_ehlo",
    args=(("domain", str), ("conn_meta", _META), ("extensions", list)),
    result=list[str],
)
SMTP_SERVER_MAIL_FROM = Event(
    name="smtp_server_mail_from", args=(("sender", str), ("conn_meta", _META)), result=None
)
SMTP_SERVER_RCPT_TO = Event(
    name="smtp_server_rcpt_to", args=(("recipient", str), ("conn_meta", _META)), result=None
)
SMTP_SERVER_MESSAGE_RECEIVED = Event(
    name="smtp_server_message_received",
    args=(("msg", PolicyMessage), ("conn_meta", _META)),
    result=None,
)
HTTP_MESSAGE_GENERATED = Event(
    name="http_message_generated", args=(("msg", PolicyMessage), ("auth_info", _META)), result=None
)
HTTP_SERVER_VALIDATE_AUTH_BASIC = Event(
    name="http_server_validate_auth_basic", args=(("user", str), ("password", str)), result=bool
)
GET_LISTENER_DOMAIN = Event(
    name="get_listener_domain",
    args=(("domain", str), ("listener", str), ("conn_meta", _META)),
    result=ListenerDomain,
)
GET_QUEUE_CONFIG = Event(
    name="get_queue_config",
    args=(("domain", str), ("tenant", _NAME), ("campaign", _NAME), ("routing_domain", _NAME)),
    result=QueueConfig,
    many=True,
)
GET_EGRESS_SOURCE = Event(name="get_egress_source", args=(("name", str),), result=EgressSource)
GET_EGRESS_POOL = Event(name="get_egress_pool", args=(("name", str),), result=EgressPool)
GET_EGRESS_PATH_CONFIG = Event(
    name="get_egress_path_config",
    args=(("routing_domain", str), ("egress_source", str), ("site_name", str)),
    result=EgressPathConfig,
)
REQUEUE_MESSAGE = Event(
    name="requeue_message",
    args=(
        ("msg", PolicyMessage),
        ("response", Response),
        ("insert_context", list),
        ("increment_attempts", bool),
        ("delay", float | None),
    ),
    result=None,
    many=True,
)
SMTP_CLIENT_REWRITE_DELIVERY_STATUS = Event(
    name="smtp_client_rewrite_delivery_status",
    args=(
        ("response", Response),
        ("domain", str),
        ("tenant", _NAME),
        ("campaign", _NAME),
        ("routing_domain", _NAME),
    ),
    result=int,
)
XFER_MESSAGE_RECEIVED = Event(
    name="xfer_message_received", args=(("msg", PolicyMessage), ("auth_info", _META)), result=None
)
# Nimbus addition: where each egress path option came from, for
# ``nimbus resolve-egress-path`` (``{option: "default" | "provider:<name>" | ...}``).
EXPLAIN_EGRESS_PATH_CONFIG = Event(
    name="explain_egress_path_config",
    args=(("routing_domain", str), ("egress_source", str), ("site_name", str)),
    result=dict,
)
SHOULD_ENQUEUE_LOG_RECORD = Event(
    name="should_enqueue_log_record",
    args=(("msg", PolicyMessage), ("hook_name", str)),
    result=bool,
)
# Asked only for a recipient on the suppression list (engine/suppression/service.py):
# False lets this message through (a per-tenant override); True or None refuses it.
SHOULD_SUPPRESS_RECIPIENT = Event(
    name="should_suppress_recipient",
    args=(("recipient", str), ("tenant", _NAME), ("reason", str)),
    result=bool,
)

EVENTS: dict[str, Event] = {
    e.name: e
    for e in (
        INIT,
        SMTP_SERVER_EHLO,
        SMTP_SERVER_MAIL_FROM,
        SMTP_SERVER_RCPT_TO,
        SMTP_SERVER_MESSAGE_RECEIVED,
        HTTP_MESSAGE_GENERATED,
        HTTP_SERVER_VALIDATE_AUTH_BASIC,
        GET_LISTENER_DOMAIN,
        GET_QUEUE_CONFIG,
        GET_EGRESS_SOURCE,
        GET_EGRESS_POOL,
        GET_EGRESS_PATH_CONFIG,
        EXPLAIN_EGRESS_PATH_CONFIG,
        REQUEUE_MESSAGE,
        SMTP_CLIENT_REWRITE_DELIVERY_STATUS,
        XFER_MESSAGE_RECEIVED,
        SHOULD_ENQUEUE_LOG_RECORD,
        SHOULD_SUPPRESS_RECIPIENT,
    )
}


class Rejected(Exception):
    """A policy rejected the transaction; ``response`` is the exact reply to give."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.response = Response.parse(code, text)


def reject(code: int, text: str) -> NoReturn:
    """Policy helper: stop the current transaction with exactly ``code text``."""
    if not 400 <= int(code) < 600:
        raise ValueError(f"reject code must be 4xx or 5xx, got {code}")
    raise Rejected(int(code), text)


class PolicyFailure(Exception):
    """A handler raised, timed out or answered the wrong type. ``response`` is the
    temporary failure to give."""

    def __init__(self, event: str, reason: str) -> None:
        super().__init__(f"policy event {event} failed: {reason}")
        self.event = event
        self.reason = reason
        self.response = Response.parse(451, f"4.3.0 policy error in {event}; try again later")


class PolicyLoadError(ValueError):
    """The policy cannot be loaded; the message names the file and the problem."""


Handler = Callable[..., Any]
Mode = Literal["async", "thread", "inline"]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Registered:
    """One registered handler and where it runs."""

    fn: Handler
    mode: Mode

    @property
    def name(self) -> str:
        module = getattr(self.fn, "__module__", None) or "?"
        return f"{module}.{getattr(self.fn, '__qualname__', repr(self.fn))}"


class Registry:
    """The handlers one policy registered, and the dispatcher that runs them.

    timeout: longest a single dispatch may take (seconds).
    on_dispatch: called as ``on_dispatch(event_name, seconds)`` after each dispatch
        (the metrics histogram), or None.
    executor: the thread pool sync handlers run in (the node's bounded policy pool),
        or None for the loop's default executor.
    """

    def __init__(
        self,
        *,
        timeout: float = 5.0,
        on_dispatch: Callable[[str, float], None] | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.timeout = timeout
        self._handlers: dict[str, list[_Registered]] = {}
        self.bounce_classifier: Any = None  # set by nimbus.configure_bounce_classifier
        self.log_hooks: list[LogHook] = []  # set by nimbus.configure_log_hook
        # Warm-up schedules by egress source name, set by nimbus.configure_warmup.
        self.warmup: Mapping[str, WarmupSchedule] = {}
        self._on_dispatch = on_dispatch
        self._executor = executor
        self._checked: set[tuple[str, tuple[type, ...]]] = set()

    def on(self, event: str | Event, *, inline: bool = False) -> Callable[[Handler], Handler]:
        """Decorator registering a handler for ``event`` (a KumoMTA event name, or an Event).

        inline: run this plain function on the loop rather than in a worker thread
            (for handlers that never block; see the module docstring).
        """
        if isinstance(event, str):
            declared = EVENTS.get(event)
            if declared is None:
                known = ", ".join(sorted(EVENTS))
                raise PolicyLoadError(f"unknown event {event!r} (known events: {known})")
            event = declared
        name, many = event.name, event.many

        def register(fn: Handler) -> Handler:
            is_async = inspect.iscoroutinefunction(fn)
            if inline and is_async:
                raise PolicyLoadError(
                    f"event {name!r}: inline=True is for plain functions; "
                    f"{getattr(fn, '__qualname__', fn)} is a coroutine (it runs on the loop)"
                )
            existing = self._handlers.setdefault(name, [])
            if existing and not many:
                raise PolicyLoadError(f"event {name!r} takes one handler; a second was registered")
            mode: Mode = "async" if is_async else "inline" if inline else "thread"
            existing.append(_Registered(fn=fn, mode=mode))
            return fn

        return register

    def has(self, event: Event) -> bool:
        return bool(self._handlers.get(event.name))

    def modes(self, event: Event) -> list[Mode]:
        """Where each handler of ``event`` runs, in order (for tests and ``nimbus validate``)."""
        return [h.mode for h in self._handlers.get(event.name, ())]

    async def dispatch(self, event: Event, *args: Any, default: Any = None) -> Any:
        """Run the handlers for ``event``; the first non-None result wins, else ``default``.

        Raises Rejected when a handler calls ``reject``; PolicyFailure when a handler
        raises anything else, answers a type other than ``event.result``, or the dispatch
        exceeds the timeout; TypeError when ``args`` are not what ``event`` declares.
        """
        handlers = self._handlers.get(event.name)
        if not handlers:
            return default
        # Arguments come from the engine, not the policy: check each combination of
        # argument types once (the full check cost ~20 us per dispatch in a profile).
        shape = (event.name, tuple(map(type, args)))
        if shape not in self._checked:
            event.check_args(args)
            self._checked.add(shape)
        name = event.name
        started = time.perf_counter()
        if len(handlers) == 1 and handlers[0].mode == "inline":
            return await self._dispatch_inline(event, handlers[0], args, default, started)
        current: _Registered | None = None
        try:
            async with asyncio.timeout(self.timeout):
                for index, current in enumerate(handlers):
                    result = await self._run(event, index, current, args)
                    if result is None:
                        continue
                    self._check_result(event, current, result)
                    return result
                return default
        except (Rejected, PolicyFailure):
            raise
        except TimeoutError:
            log.error(
                "policy_event_timed_out",
                extra={"event_name": name, "handler": _name(current), "timeout": self.timeout},
            )
            raise PolicyFailure(name, f"timed out after {self.timeout}s") from None
        except Exception as exc:  # a policy bug must never take the node down
            log.exception(
                "policy_handler_failed", extra={"event_name": name, "handler": _name(current)}
            )
            raise PolicyFailure(name, f"{type(exc).__name__}: {exc}") from exc
        finally:
            if self._on_dispatch is not None:
                self._on_dispatch(name, time.perf_counter() - started)

    async def _dispatch_inline(
        self, event: Event, h: _Registered, args: tuple[Any, ...], default: Any, started: float
    ) -> Any:
        """``dispatch`` for an event whose one handler is inline (the bundled policy's): the
        same outcomes without a timeout scope or a coroutine per call (~15 % of a dispatch).
        Its duration is checked after it returns, as in ``_run``; an awaitable it returns
        is awaited under the timeout."""
        name = event.name
        try:
            result = h.fn(*args)
            if time.perf_counter() - started > self.timeout:
                self._demote(event, 0, h, time.perf_counter() - started)
            if inspect.isawaitable(result):
                async with asyncio.timeout(self.timeout):
                    result = await result
            if result is None:
                return default
            self._check_result(event, h, result)
            return result
        except (Rejected, PolicyFailure):
            raise
        except TimeoutError:
            log.error(
                "policy_event_timed_out",
                extra={"event_name": name, "handler": _name(h), "timeout": self.timeout},
            )
            raise PolicyFailure(name, f"timed out after {self.timeout}s") from None
        except Exception as exc:  # a policy bug must never take the node down
            log.exception("policy_handler_failed", extra={"event_name": name, "handler": _name(h)})
            raise PolicyFailure(name, f"{type(exc).__name__}: {exc}") from exc
        finally:
            if self._on_dispatch is not None:
                self._on_dispatch(name, time.perf_counter() - started)

    async def _run(self, event: Event, index: int, h: _Registered, args: tuple[Any, ...]) -> Any:
        if h.mode == "thread":
            ctx = contextvars.copy_context()  # diagnostics keep the connection's context
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._executor, ctx.run, h.fn, *args)
        elif h.mode == "inline":
            began = time.perf_counter()
            result = h.fn(*args)
            if time.perf_counter() - began > self.timeout:
                self._demote(event, index, h, time.perf_counter() - began)
        else:
            result = h.fn(*args)
        if inspect.isawaitable(result):  # a coroutine handler, or a plain one returning one
            result = await result
        return result

    def _demote(self, event: Event, index: int, h: _Registered, seconds: float) -> None:
        """An inline handler overran: drop its result, run it in the pool from now on."""
        self._handlers[event.name][index] = dataclasses.replace(h, mode="thread")
        log.error(
            "policy_inline_handler_demoted",  # result dropped; runs in the thread pool from now on
            extra={
                "event_name": event.name,
                "handler": h.name,
                "seconds": round(seconds, 3),
                "timeout": self.timeout,
            },
        )
        raise PolicyFailure(event.name, f"inline handler {h.name} ran {seconds:.3f}s")

    def _check_result(self, event: Event, h: _Registered, result: Any) -> None:
        if not conforms(result, event.result):
            expected, actual = type_name(event.result), type(result).__name__
            log.error(
                "policy_handler_wrong_type",
                extra={
                    "event_name": event.name,
                    "handler": h.name,
                    "expected": expected,
                    "actual": actual,
                },
            )
            raise PolicyFailure(event.name, f"{h.name} returned {actual}, expected {expected}")


def _name(h: _Registered | None) -> str | None:
    return None if h is None else h.name
