"""Policy events: each hook declared once, and the one dispatcher that runs handlers.

Exports:
    Event                 a declaration: name, argument names, result type, many handlers or one
    EVENTS                every declared event by name (KumoMTA's names and meaning)
    Registry              handlers registered by a policy; ``dispatch`` runs them
    Rejected              raised by ``reject(code, text)``; becomes that exact SMTP/HTTP reply
    PolicyFailure         a handler raised or timed out; callers answer 4xx (never a crash)
    PolicyLoadError       a registration names an unknown event, or doubles a one-handler event

Dispatch runs handlers in registration order; the first non-None result wins
(``many=True`` events may have several handlers; others exactly one). Handlers may
be plain functions or coroutines; each dispatch runs under the policy timeout.

    Exception tree:
        Exception
         +-- Rejected             policy said no: reply with (code, text)
         +-- PolicyFailure        policy broke: reply 451 4.3.0 / HTTP 500, log it
         +-- PolicyLoadError      policy cannot be loaded (ValueError)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from engine.policy.log_hook import LogHook
from engine.records import Response

__all__ = ["Event", "EVENTS", "Registry", "Rejected", "PolicyFailure", "PolicyLoadError", "reject"]

log = logging.getLogger("nimbus.events")


@dataclass(frozen=True, slots=True)
class Event:
    """One policy hook: ``args`` name what handlers receive, ``result`` what they return."""

    name: str
    args: tuple[str, ...]
    result: str
    many: bool = False


def _declare(*events: Event) -> dict[str, Event]:
    return {e.name: e for e in events}


EVENTS: dict[str, Event] = _declare(
    Event("init", (), "None", many=True),
    Event("smtp_server_ehlo", ("domain", "conn_meta", "extensions"), "list[str] | None"),
    Event("smtp_server_mail_from", ("sender", "conn_meta"), "None"),
    Event("smtp_server_rcpt_to", ("recipient", "conn_meta"), "None"),
    Event("smtp_server_message_received", ("msg", "conn_meta"), "None"),
    Event("http_message_generated", ("msg", "auth_info"), "None"),
    Event("http_server_validate_auth_basic", ("user", "password"), "bool | None"),
    Event("get_listener_domain", ("domain", "listener", "conn_meta"), "ListenerDomain | None"),
    Event(
        "get_queue_config",
        ("domain", "tenant", "campaign", "routing_domain"),
        "QueueConfig | None",
        many=True,
    ),
    Event("get_egress_source", ("name",), "EgressSource | None"),
    Event("get_egress_pool", ("name",), "EgressPool | None"),
    Event(
        "get_egress_path_config",
        ("routing_domain", "egress_source", "site_name"),
        "EgressPathConfig | None",
    ),
    Event(
        "requeue_message",
        ("msg", "response", "insert_context", "increment_attempts", "delay"),
        "None",
        many=True,
    ),
    Event(
        "smtp_client_rewrite_delivery_status",
        ("response", "domain", "tenant", "campaign", "routing_domain"),
        "int | None",
    ),
    Event("should_enqueue_log_record", ("msg", "hook_name"), "bool | None"),
)


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
    """A handler raised or timed out. ``response`` is the temporary failure to give."""

    def __init__(self, event: str, reason: str) -> None:
        super().__init__(f"policy event {event} failed: {reason}")
        self.event = event
        self.response = Response.parse(451, f"4.3.0 policy error in {event}; try again later")


class PolicyLoadError(ValueError):
    """The policy cannot be loaded; the message names the file and the problem."""


Handler = Callable[..., Any]


class Registry:
    """The handlers one policy registered, and the dispatcher that runs them.

    timeout: longest a single dispatch may take (seconds).
    on_dispatch: called as ``on_dispatch(event_name, seconds)`` after each dispatch
        (the metrics histogram), or None.
    """

    def __init__(
        self, *, timeout: float = 5.0, on_dispatch: Callable[[str, float], None] | None = None
    ) -> None:
        self.timeout = timeout
        self._handlers: dict[str, list[Handler]] = {}
        self.bounce_classifier: Any = None  # set by nimbus.configure_bounce_classifier
        self.log_hooks: list[LogHook] = []  # set by nimbus.configure_log_hook
        self._on_dispatch = on_dispatch

    def on(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator registering a handler for the event ``name``."""
        event = EVENTS.get(name)
        if event is None:
            known = ", ".join(sorted(EVENTS))
            raise PolicyLoadError(f"unknown event {name!r} (known events: {known})")

        def register(fn: Handler) -> Handler:
            existing = self._handlers.setdefault(name, [])
            if existing and not event.many:
                raise PolicyLoadError(f"event {name!r} takes one handler; a second was registered")
            existing.append(fn)
            return fn

        return register

    def has(self, name: str) -> bool:
        return bool(self._handlers.get(name))

    async def dispatch(self, name: str, *args: Any, default: Any = None) -> Any:
        """Run the handlers for ``name``; the first non-None result wins, else ``default``.

        Raises Rejected when a handler calls ``reject``; PolicyFailure when a handler
        raises anything else or the dispatch exceeds the timeout.
        """
        handlers = self._handlers.get(name)
        if not handlers:
            return default
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                for fn in handlers:
                    result = fn(*args)
                    if inspect.isawaitable(result):
                        result = await result
                    if result is not None:
                        return result
                return default
        except Rejected:
            raise
        except TimeoutError:
            log.error("policy event timed out", extra={"event_name": name, "timeout": self.timeout})
            raise PolicyFailure(name, f"timed out after {self.timeout}s") from None
        except Exception as exc:  # a policy bug must never take the node down
            log.exception("policy handler raised", extra={"event_name": name})
            raise PolicyFailure(name, f"{type(exc).__name__}: {exc}") from exc
        finally:
            if self._on_dispatch is not None:
                self._on_dispatch(name, time.perf_counter() - started)
