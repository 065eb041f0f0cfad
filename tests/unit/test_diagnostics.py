"""Diagnostic lines: structlog renders stdlib, third-party and structlog calls as one JSON shape."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import logging
import pathlib
import re

import pytest
import structlog

from engine.logs import diagnostics

ENGINE = pathlib.Path(__file__).parents[2] / "engine"
EVENT_NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*\Z")


@pytest.fixture
def lines():
    """A logger tree 'nimbus.test' rendered by diagnostics.formatter(); parsed lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(diagnostics.formatter())
    loggers = [logging.getLogger("nimbus.test"), logging.getLogger("thirdparty.lib")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
    diagnostics.configure_structlog()
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    for logger in loggers:
        logger.removeHandler(handler)
        logger.propagate = True
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def test_stdlib_call_renders_event_and_extra_fields(lines):
    """A stdlib call gives ts, level, logger, event first, then its extra= fields."""
    logging.getLogger("nimbus.test").warning("spool_recovered", extra={"messages": 3})
    [line] = lines()
    assert list(line)[:4] == ["ts", "level", "logger", "event"]
    assert (line["level"], line["logger"], line["event"], line["messages"]) == (
        "warning",
        "nimbus.test",
        "spool_recovered",
        3,
    )
    assert isinstance(line["ts"], float)


def test_bound_context_is_on_lines_inside_the_block_only(lines):
    """bound_contextvars fields appear on lines logged inside the block, not after it."""
    log = logging.getLogger("nimbus.test")
    with diagnostics.bound_contextvars(http_request="POST /api/inject/v1", peer="127.0.0.1"):
        log.info("inside")
    log.info("after")
    inside, after = lines()
    assert (inside["http_request"], inside["peer"]) == ("POST /api/inject/v1", "127.0.0.1")
    assert "http_request" not in after and "peer" not in after


async def test_context_bound_in_one_task_stays_in_that_task(lines):
    """Two sessions' tasks bind different ids; each line carries its own task's id."""
    log = logging.getLogger("nimbus.test")

    async def session(name: str, ready: asyncio.Event, go: asyncio.Event) -> None:
        diagnostics.bind_contextvars(smtp_session=name)
        ready.set()
        await go.wait()
        log.info("session_line")

    go = asyncio.Event()
    a_ready, b_ready = asyncio.Event(), asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(session("a", a_ready, go))
        tg.create_task(session("b", b_ready, go))
        await a_ready.wait()
        await b_ready.wait()
        go.set()
    assert sorted(line["smtp_session"] for line in lines()) == ["a", "b"]


def test_exception_is_rendered_as_text(lines):
    """log.exception adds an 'exception' field with the traceback text."""
    try:
        raise ValueError("bad row")
    except ValueError:
        logging.getLogger("nimbus.test").exception("routing_failed")
    [line] = lines()
    assert line["event"] == "routing_failed" and line["level"] == "error"
    assert "ValueError: bad row" in line["exception"]


def test_third_party_record_renders_the_same_shape(lines):
    """A library's %-formatted record becomes the same JSON shape, its text as event."""
    logging.getLogger("thirdparty.lib").info("GET %s %d", "/x", 200)
    [line] = lines()
    assert (line["logger"], line["event"], line["level"]) == (
        "thirdparty.lib",
        "GET /x 200",
        "info",
    )


def test_structlog_call_renders_the_same_shape(lines):
    """A structlog logger's keyword fields render like stdlib extra= fields."""
    diagnostics.get_logger("nimbus.test").info("tsa_pruned", entries=2)
    [line] = lines()
    assert list(line)[:4] == ["ts", "level", "logger", "event"]
    assert (line["logger"], line["event"], line["entries"]) == ("nimbus.test", "tsa_pruned", 2)


def _engine_events() -> list[tuple[str, str]]:
    found = []
    for path in sorted(ENGINE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("debug", "info", "warning", "error", "critical", "exception")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.append((f"{path.relative_to(ENGINE)}:{node.lineno}", node.args[0].value))
    return found


def test_every_engine_log_call_uses_a_snake_case_event_name():
    """Every log call in engine/ names its event in stable snake_case, never prose."""
    events = _engine_events()
    assert len(events) > 40  # the scan found the call sites
    assert [(where, e) for where, e in events if not EVENT_NAME.match(e)] == []
