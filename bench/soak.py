"""The soak run: N minutes of mixed SMTP + HTTP traffic through one real node, with faults.

    python3 -m bench.soak                      # 30 minutes, sampled once a minute
    python3 -m bench.soak --minutes 3 --interval 10 --phase 20 --write BENCHMARKS.md

Exports:
    FaultyReceiver   an aiosmtpd receiver (the node's sink endpoint) whose behaviour the
                     schedule switches: accept, defer (451) or bounce (550) a share of
                     messages, or go down for a few seconds (a restart)
    run_soak(opts)   start receiver and node, drive traffic, sample, drain, judge
    main(argv)       the command line; exit 0 when the run passes

The node is ``nimbus mta`` in sink mode (``bench.nimbus.NimbusHarness``) with a policy
that retries after 5-10 s, so deferred mail is delivered within the run. Every
``--interval`` seconds the script records the node's RSS, open file descriptors, live
asyncio tasks (``nimbus_asyncio_tasks``) and spool size (``/metrics``). After the
traffic, the receiver accepts everything and the spool drains; then the node stops and
its log records are matched (``bench.soak_report``: flatness rule, ledger, section).
Sleeps here pace traffic and the fault schedule; none waits for readiness.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import psutil
from aiosmtpd.smtp import SMTP

from bench.harness import Placement
from bench.machine import REPO
from bench.nimbus import NimbusHarness
from bench.report import splice_section
from bench.sampling import rss_kb
from bench.soak_report import (
    SOAK_BEGIN,
    SOAK_END,
    Sample,
    SoakReport,
    fault_at,
    ledger,
    passed,
    soak_section,
)
from bench.support import free_port, log

__all__ = ["FaultyReceiver", "run_soak", "main"]

SOAK_POLICY = """\
def register(nimbus):
    # Short retries: a deferred message is retried within the soak, not in 20 minutes.
    @nimbus.on("get_queue_config")
    def queue_config(domain, tenant, campaign, routing_domain):
        return nimbus.QueueConfig(retry_interval=5.0, max_retry_interval=10.0)
"""
HTTP_USER, HTTP_PASSWORD = "soak", "soak-password"
FAULT_SHARE = 0.3  # of messages deferred / bounced during those phases
DOWN_SECONDS = 5.0


class FaultyReceiver:
    """The node's sink: aiosmtpd on 127.0.0.1:port, behaviour switched by ``mode``."""

    def __init__(self, port: int, seed: int = 1) -> None:
        self.port = port
        self.mode = "none"
        self.counts: dict[str, int] = {"accepted": 0, "deferred": 0, "bounced": 0, "restarts": 0}
        self._rand = random.Random(seed)
        self._server: asyncio.AbstractServer | None = None
        self._sessions: list[SMTP] = []

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        roll = self._rand.random()
        if self.mode == "defer" and roll < FAULT_SHARE:
            self.counts["deferred"] += 1
            return "451 4.3.0 soak: try again later"
        if self.mode == "bounce" and roll < FAULT_SHARE:
            self.counts["bounced"] += 1
            return "550 5.1.1 soak: no such user"
        self.counts["accepted"] += 1
        return "250 2.0.0 OK"

    async def start(self) -> None:
        def factory() -> SMTP:
            proto = SMTP(self, hostname="soak-receiver")
            self._sessions = [s for s in self._sessions if s.transport is not None]
            self._sessions.append(proto)
            return proto

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(factory, "127.0.0.1", self.port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for proto in self._sessions:
                if proto.transport is not None:
                    proto.transport.close()
            await self._server.wait_closed()
            self._server = None

    async def restart(self, down: float) -> None:
        """Drop every connection and refuse new ones for ``down`` seconds."""
        self.counts["restarts"] += 1
        await self.stop()
        await asyncio.sleep(down)  # the fault itself: the receiver stays down this long
        await self.start()


class Pacer:
    """Hands out send slots at ``rate`` per second to any number of workers."""

    def __init__(self, rate: float) -> None:
        self._gap = 1.0 / rate
        self._next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self._gap
        await asyncio.sleep(slot - now)


def _message(n: int) -> tuple[str, bytes]:
    rcpt = f"user{n}@soak{n % 7}.test"
    body = (
        f"From: soak@src.test\r\nTo: {rcpt}\r\nSubject: soak {n}\r\n\r\n" + ("x" * 78 + "\r\n") * 25
    )
    return rcpt, body.encode()


async def smtp_worker(port: int, pacer: Pacer, stop: asyncio.Event, stats: dict[str, int]) -> None:
    """Sessions of up to 20 messages each until ``stop``; counts accepted ids and refusals."""
    while not stop.is_set():
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30, start_tls=False)
        try:
            await client.connect()
            for _ in range(20):
                await pacer.wait()
                if stop.is_set():
                    break
                stats["n"] += 1
                rcpt, body = _message(stats["n"])
                try:
                    _, reply = await client.sendmail("soak@src.test", [rcpt], body)
                except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused) as exc:
                    if not stats["smtp_refused"]:
                        log(f"first SMTP refusal: {exc}")
                    stats["smtp_refused"] += 1
                    continue
                stats["smtp"] += len(reply.partition("ids=")[2].split())
        except (aiosmtplib.SMTPException, OSError):
            stats["smtp_errors"] += 1
        finally:
            with contextlib.suppress(Exception):
                await client.quit()


async def http_worker(port: int, pacer: Pacer, stop: asyncio.Event, stats: dict[str, int]) -> None:
    """One inject request (2 recipients) per two slots until ``stop``."""
    auth = aiohttp.encode_basic_auth(HTTP_USER, HTTP_PASSWORD)
    url = f"http://127.0.0.1:{port}/api/inject/v1"
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, headers={"Authorization": auth}) as http:
        while not stop.is_set():
            await pacer.wait()
            await pacer.wait()
            stats["n"] += 2
            body = {
                "envelope_sender": "soak@src.test",
                "content": {"subject": "soak {{ n }}", "text_body": "hello {{ n }}"},
                "recipients": [
                    {"email": f"web{stats['n'] - i}@soak{i}.test", "substitutions": {"n": i}}
                    for i in range(2)
                ],
            }
            try:
                async with http.post(url, json=body) as resp:
                    answer = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
                stats["http_errors"] += 1
                continue
            if resp.status == 200:
                stats["http"] += int(answer.get("success_count", 0))
                stats["http_refused"] += int(answer.get("fail_count", 0))
            else:
                stats["http_refused"] += 2


class SoakNode(NimbusHarness):
    """``nimbus mta`` in sink mode with the soak policy and one HTTP user."""

    name = "nimbus-soak"

    def __init__(self, place: Placement) -> None:
        super().__init__(place)
        auth = self.dir.parent / "auth"
        auth.mkdir(parents=True, exist_ok=True)
        (auth / HTTP_USER).write_text(HTTP_PASSWORD + "\n")
        self.env["NIMBUS_HTTP_AUTH_DIR"] = str(auth)

    def write_policy(self, dest: Path) -> None:
        dest.mkdir(parents=True)
        (dest / "init.py").write_text(SOAK_POLICY)

    def records(self) -> list[dict[str, Any]]:
        out = []
        logdir = self.dir / "logs"
        for path in sorted(p for p in logdir.iterdir() if p.is_file()):
            out += [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        return out


async def sample(node: SoakNode, t: float) -> Sample:
    assert node.proc is not None
    metrics = await asyncio.to_thread(node.metrics)
    try:
        fds = psutil.Process(node.proc.pid).num_fds()
    except psutil.Error:
        fds = -1
    return Sample(
        t=t,
        rss_kb=rss_kb(node.proc.pid) or 0,
        fds=fds,
        tasks=int(metrics.get("nimbus_asyncio_tasks", -1)),
        spool_messages=int(metrics.get("nimbus_spool_messages", -1)),
        spool_bytes=int(metrics.get("nimbus_spool_bytes", -1)),
    )


async def sampler(
    node: SoakNode, t0: float, interval: float, stop: asyncio.Event, out: list[Sample]
) -> None:
    while not stop.is_set():
        s = await sample(node, time.monotonic() - t0)
        out.append(s)
        log(
            f"t={s.t:.0f}s rss={s.rss_kb / 1024:.1f}MB fds={s.fds} tasks={s.tasks} "
            f"spool={s.spool_messages} msgs / {s.spool_bytes / 1048576:.1f}MB"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def faults(rx: FaultyReceiver, t0: float, phase: float, stop: asyncio.Event) -> None:
    """Switch the receiver at every phase boundary (FAULT_CYCLE)."""
    while not stop.is_set():
        fault = fault_at(time.monotonic() - t0 + 1e-6, phase)
        log(f"fault phase: {fault}")
        rx.mode = fault if fault in ("defer", "bounce") else "none"
        if fault == "restart":
            await rx.restart(DOWN_SECONDS)
        next_boundary = (int((time.monotonic() - t0) // phase) + 1) * phase
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_boundary - (time.monotonic() - t0)))
    rx.mode = "none"


async def drain(node: SoakNode, deadline: float) -> float | None:
    """Seconds until the spool is empty, None past ``deadline`` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        metrics = await asyncio.to_thread(node.metrics)
        if metrics.get("nimbus_spool_messages", 1) == 0:
            return time.monotonic() - start
        await asyncio.sleep(1.0)  # polling another process's gauge: a poll interval
    return None


async def run_soak(opts: argparse.Namespace) -> SoakReport:
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    outdir = Path(opts.run_dir)
    workdir = outdir / "work"
    rx = FaultyReceiver(free_port())
    await rx.start()
    node = SoakNode(Placement(workdir=workdir, sink_port=rx.port, outdir=outdir, tag="soak"))
    stats = dict.fromkeys(
        ["n", "smtp", "http", "smtp_refused", "http_refused", "smtp_errors", "http_errors"], 0
    )
    samples: list[Sample] = []
    drained: float | None = None
    try:
        node.start()
        await asyncio.to_thread(node.ready)
        log(f"node ready: smtp {node.port}, http {node.http_port}; receiver {rx.port}")
        stop, sampling_done = asyncio.Event(), asyncio.Event()
        t0 = time.monotonic()
        smtp_pacer, http_pacer = Pacer(opts.smtp_rate), Pacer(opts.http_rate)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sampler(node, t0, opts.interval, sampling_done, samples))
            tg.create_task(faults(rx, t0, opts.phase, stop))
            for _ in range(opts.smtp_sessions):
                tg.create_task(smtp_worker(node.port, smtp_pacer, stop, stats))
            tg.create_task(http_worker(node.http_port, http_pacer, stop, stats))
            await asyncio.sleep(opts.minutes * 60)  # the soak's duration
            stop.set()
            sampling_done.set()
        log(f"traffic stopped; client counts {stats}; draining")
        drained = await drain(node, opts.drain_timeout)
        samples.append(await sample(node, time.monotonic() - t0))
    finally:
        await asyncio.to_thread(node.stop)
        await rx.stop()
    led = ledger(node.records())
    notes = []
    client_total = stats["smtp"] + stats["http"]
    if client_total != led.received:
        notes.append(
            f"clients saw {client_total} accepted, the log has {led.received} Reception records"
        )
    return SoakReport(
        started=started,
        minutes=opts.minutes,
        rate_smtp=opts.smtp_rate,
        rate_http=opts.http_rate,
        phase=opts.phase,
        interval=opts.interval,
        samples=tuple(samples),
        ledger=led,
        faults={k: v for k, v in rx.counts.items() if k != "accepted"},
        client={k: v for k, v in stats.items() if k != "n"},
        drained_s=drained,
        command=" ".join(["python3 -m bench.soak", *sys.argv[1:]]),
        notes=tuple(notes),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="traffic time (default 30)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between samples")
    p.add_argument("--phase", type=float, default=60.0, help="seconds per fault phase")
    p.add_argument("--smtp-rate", type=float, default=20.0, help="SMTP messages/s offered")
    p.add_argument("--http-rate", type=float, default=6.0, help="HTTP messages/s offered")
    p.add_argument("--smtp-sessions", type=int, default=4, help="concurrent SMTP sessions")
    p.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to drain")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "soak"), help="results")
    p.add_argument("--write", metavar="FILE", help="splice the section into FILE (BENCHMARKS.md)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    run_dir = Path(opts.out) / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    opts.run_dir = str(run_dir)
    rep = asyncio.run(run_soak(opts))
    section = soak_section(rep)
    print(section)
    (run_dir / "soak.md").write_text(section)
    if opts.write:
        target = Path(opts.write)
        text = target.read_text() if target.exists() else None
        target.write_text(splice_section(text, SOAK_BEGIN, SOAK_END, section))
    return 0 if passed(rep) else 1


if __name__ == "__main__":
    sys.exit(main())
