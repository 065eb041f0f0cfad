"""The probe contract: GET /api/check-alive/v1 (liveness) answers 200 whenever the node's
event loop turns: while starting, draining, shedding load or busy; a wedged loop cannot
answer it. GET /api/check-liveness/v1 (readiness) is 503 in those states."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib

from engine.config.settings import SpoolSettings
from engine.records import Message, new_message_id
from engine.storage.spool import Spool
from tests.integration.test_shedding import node_with, until
from tests.integration.test_shutdown import draining_node
from tests.support.gates import gate_policy, new_gate
from tests.support.node import running_node

PROBE_TIMEOUT = 1.0  # a kubelet httpGet probe's timeoutSeconds
OK = (200, "OK")


async def probes(node: Any) -> dict[str, tuple[int, Any]]:
    """Both probes as a kubelet sees them: status and body."""
    out = {}
    async with aiohttp.ClientSession() as session:
        for name, path in (("alive", "check-alive"), ("ready", "check-liveness")):
            url = f"http://127.0.0.1:{node.http_port}/api/{path}/v1"
            async with session.get(url) as resp:
                text = await resp.text()
                body = await resp.json() if resp.content_type == "application/json" else text
                out[name] = (resp.status, body)
    return out


def probe_alive(port: int, timeout: float = PROBE_TIMEOUT) -> tuple[int, str] | str:
    """GET /api/check-alive/v1 from this (non-loop) thread with a timeout, as a kubelet
    does: (status, body), or "timeout" when no answer came in time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/api/check-alive/v1")
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    except TimeoutError:
        return "timeout"
    finally:
        conn.close()


async def test_check_alive_is_200_while_draining(tmp_path):
    """During the drain (a delivery held after stop()) check-alive answers 200 "OK" while
    readiness answers 503 "shutting down"."""
    async with draining_node(tmp_path) as (node, _):
        seen = await probes(node)
    assert seen == {"alive": OK, "ready": (503, "shutting down")}


async def test_check_alive_is_200_while_shedding_load(tmp_path):
    """While the node sheds load (memory over its threshold) check-alive answers 200 "OK"
    while readiness answers 503 with the shedding reason."""
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.current").write_text("900000000\n")
    (cgroup / "memory.stat").write_text("anon 900000000\ninactive_file 0\n")
    (cgroup / "memory.max").write_text("1000000000\n")
    async with node_with(
        tmp_path, **{"shedding.max_memory": "50%", "shedding.cgroup_dir": str(cgroup)}
    ) as node:
        state = await until(node, shedding=True)
        seen = await probes(node)
    shedding = {"error": "load shedding", "reason": "memory", "detail": state.detail}
    assert seen == {"alive": OK, "ready": (503, shedding)}


async def spool_messages(directory: Path, count: int) -> None:
    """Leave ``count`` messages for u@dst.test in the spool at ``directory``."""
    spool = Spool(SpoolSettings(dir=str(directory), min_free_space=0))
    await spool.recover()
    now = time.time()
    try:
        await spool.save(
            [
                (
                    Message(
                        id=new_message_id(),
                        sender="s@src.test",
                        recipient="u@dst.test",
                        queue="dst.test",
                        created=now,
                        due=now,
                    ),
                    b"Subject: left over\r\n\r\nhello\r\n",
                )
                for _ in range(count)
            ]
        )
    finally:
        await spool.close()


SLOW_RECOVERY = """
import asyncio

def register(nimbus):
    @nimbus.on("get_queue_config")
    async def queue_config(domain, tenant, campaign, routing_domain):
        gate.reached.set()
        await asyncio.to_thread(gate.opened.wait, 30)  # recovery waits; the loop does not
"""


async def test_recovering_node_is_alive_but_not_ready(tmp_path, rx):
    """While the spool is recovered (its queue config held by the policy until the test
    lets go), check-alive answers 200 and readiness 503 "waiting for spool startup";
    once recovered both answer 200 and the spooled messages are delivered."""
    await spool_messages(tmp_path / "spool", 3)
    gate = new_gate("recovery")
    settings = {
        "policy.event_timeout": "30s",
        "sink.enabled": True,
        "sink.endpoint": f"127.0.0.1:{rx.port}",
    }
    policy = gate_policy("recovery", SLOW_RECOVERY)
    async with running_node(tmp_path, policy=policy, ready=False, **settings) as node:
        assert await asyncio.to_thread(gate.reached.wait, 20)
        during = await probes(node)
        gate.opened.set()
        async with asyncio.timeout(20):
            await node.ready.wait()
        after = await probes(node)
        await rx.wait_for(3)
    assert during == {"alive": OK, "ready": (503, "waiting for spool startup")}
    assert after == {"alive": OK, "ready": OK}


WEDGE = """
def register(nimbus):
    @nimbus.on("smtp_server_ehlo", inline=True)
    def ehlo(domain, conn_meta, extensions):
        if domain == "wedge.test":
            gate.reached.set()
            gate.opened.wait(30)  # a blocking call on the loop: the node's loop is wedged
"""


def wedge_and_probe(smtp_port: int, http_port: int, gate: Any) -> dict[str, Any]:
    """From a thread: EHLO wedge.test (the handler blocks the loop), probe check-alive
    and a TCP connect during the wedge, let the handler go, probe again."""
    out: dict[str, Any] = {}
    with socket.create_connection(("127.0.0.1", smtp_port), timeout=30) as smtp:
        smtp.recv(4096)  # the greeting
        smtp.sendall(b"EHLO wedge.test\r\n")
        assert gate.reached.wait(10)
        with socket.create_connection(("127.0.0.1", http_port), timeout=PROBE_TIMEOUT):
            out["tcp_connect"] = "connected"  # the kernel accepts for a wedged loop too
        began = time.monotonic()
        out["during"] = probe_alive(http_port)
        out["waited"] = time.monotonic() - began
        gate.opened.set()
        out["ehlo"] = smtp.recv(4096)[:3]
        out["after"] = probe_alive(http_port)
    return out


async def test_a_wedged_loop_fails_check_alive_and_answers_again_after(tmp_path):
    """An inline policy handler that blocks the loop: a check-alive probe with a 1 s
    timeout gets no answer (though a TCP connect succeeds); once the handler returns the
    next probe answers 200 "OK" within the timeout."""
    gate = new_gate("wedge")
    policy = gate_policy("wedge", WEDGE)
    async with running_node(tmp_path, policy=policy, **{"policy.event_timeout": "30s"}) as node:
        before = await asyncio.to_thread(probe_alive, node.http_port)
        seen = await asyncio.to_thread(wedge_and_probe, node.smtp_port, node.http_port, gate)
    assert before == OK
    assert seen["tcp_connect"] == "connected"
    assert seen["during"] == "timeout" and seen["waited"] >= PROBE_TIMEOUT
    assert seen["ehlo"] == b"250"
    assert seen["after"] == OK


SESSIONS, PER_SESSION = 40, 25


async def smtp_load(port: int) -> int:
    """SESSIONS concurrent SMTP sessions, each sending PER_SESSION messages; the count."""

    async def session(n: int) -> int:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
        await client.connect()
        try:
            for m in range(PER_SESSION):
                body = f"Subject: load {n}.{m}\r\n\r\n" + ("x" * 76 + "\r\n") * 26
                await client.sendmail("s@src.test", [f"u{n}@dst.test"], body)
        finally:
            await client.quit()
        return PER_SESSION

    return sum(await asyncio.gather(*(session(n) for n in range(SESSIONS))))


def probe_until(port: int, stop: threading.Event) -> list[tuple[Any, float]]:
    """From a thread, probe check-alive every 50 ms until ``stop``: (answer, seconds)."""
    seen = []
    while not stop.is_set():
        began = time.monotonic()
        seen.append((probe_alive(port), time.monotonic() - began))
        stop.wait(0.05)  # the probe period, not a wait for a condition
    return seen


async def test_a_busy_node_answers_check_alive_within_the_timeout(tmp_path, rx):
    """Under 40 concurrent SMTP sessions relaying 1,000 messages to a receiver (all on
    the node's loop), every check-alive probe answers 200 within the 1 s timeout."""
    sink = {"sink.enabled": True, "sink.endpoint": f"127.0.0.1:{rx.port}"}
    async with running_node(tmp_path, **sink) as node:
        stop = threading.Event()
        prober = asyncio.create_task(asyncio.to_thread(probe_until, node.http_port, stop))
        try:
            sent = await smtp_load(node.smtp_port)
            await rx.wait_for(sent, timeout=60)
        finally:
            stop.set()
            seen = await prober
    answers = [answer for answer, _ in seen]
    slowest = max(seconds for _, seconds in seen)
    assert sent == SESSIONS * PER_SESSION
    assert len(seen) >= 5, seen
    assert answers == [OK] * len(seen), (answers, slowest)
