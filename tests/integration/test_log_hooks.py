"""Log hooks against a real HTTP endpoint: order, batching, retries, restarts, filters.

An aiohttp server on 127.0.0.1 in the test's loop stands in for TSA or a webhook
consumer; the publisher uses its real aiohttp transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import defaultdict
from pathlib import Path

from aiohttp import web

from engine.logs.hooks.publisher import LogHookPublisher
from engine.policy.log_hook import LogHook
from engine.records import LogRecord, RecordType, Response
from tests.support.peers import free_port

T = 1_700_000_000.25
WAIT = 10.0


def record(n: int, type: RecordType = RecordType.BOUNCE) -> LogRecord:
    return LogRecord(
        type=type,
        id=f"{n:032x}",
        sender="s@example.com",
        recipient="r@example.net",
        queue="example.net",
        site="mx.example.net",
        size=n,
        response=Response.parse(550, "5.1.1 no such user"),
        timestamp=T,
        created=T,
        nodeid="node-1",
        reception_protocol="ESMTP",
    )


class Endpoint:
    """An HTTP server keeping every accepted batch per path; answers from ``statuses``.

    A status of None makes the request hang until ``release`` is set (a timeout).
    """

    def __init__(self, statuses: list[int | None] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.batches: dict[str, list[list[int]]] = defaultdict(list)
        self.content_types: set[str] = set()
        self.requests = 0
        self.changed = asyncio.Event()
        self.release = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> Endpoint:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str = "log") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.changed.set()
        self.content_types.add(request.content_type)
        status = self.statuses.pop(0) if self.statuses else 200
        if status is None:
            await self.release.wait()
            status = 200
        body = await request.json()
        if 200 <= status < 300:
            self.batches[request.path].append([r["size"] for r in body])
            self.changed.set()
        return web.Response(status=status)

    def sizes(self, path: str = "/log") -> list[int]:
        return [s for batch in self.batches[path] for s in batch]

    async def until(self, predicate) -> None:
        async with asyncio.timeout(WAIT):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def endpoint(statuses: list[int | None] | None = None, port: int = 0):
    ep = await Endpoint(statuses).start(port)
    try:
        yield ep
    finally:
        await ep.stop()


def hook(url: str, **overrides) -> LogHook:
    fields = dict(
        name="h",
        url=url,
        batch_size=100,
        max_latency=0.0,
        timeout=5.0,
        backoff_base=0.02,
        backoff_max=0.1,
    )
    fields.update(overrides)
    return LogHook(**fields)


@contextlib.asynccontextmanager
async def running(pub: LogHookPublisher):
    task = asyncio.create_task(pub.run())
    try:
        yield pub
    finally:
        await pub.close()
        await task


class FirstFailure(logging.Handler):
    """Sets ``seen`` when the publisher logs its first delivery failure."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = asyncio.Event()

    def emit(self, rec: logging.LogRecord) -> None:
        if rec.levelno == logging.WARNING and rec.getMessage() == "log_hook_delivery_failed":
            self.seen.set()


@contextlib.contextmanager
def watch_failures():
    handler = FirstFailure()
    logger = logging.getLogger("nimbus.log_hooks")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def test_records_arrive_in_order_in_bounded_batches(tmp_path):
    """Every record arrives once, in order, as JSON arrays of at most batch_size."""
    async with endpoint() as ep:
        pub = LogHookPublisher(
            [hook(ep.url(), batch_size=40, max_latency=0.05)], db_path=tmp_path / "loghooks.db"
        )
        async with running(pub):
            for n in range(250):
                pub.offer(record(n))
            await ep.until(lambda: len(ep.sizes()) >= 250)
        assert ep.sizes() == list(range(250))
        assert max(len(b) for b in ep.batches["/log"]) <= 40
        assert ep.content_types == {"application/json"}
        assert pub.stats()["h"]["sent"] == 250


async def test_server_error_then_success_is_retried(tmp_path):
    """A 500 answer is retried with the same batch until a 200; nothing is lost."""
    async with endpoint([500, 500, 200]) as ep:
        pub = LogHookPublisher([hook(ep.url(), max_latency=0.05)], db_path=tmp_path / "loghooks.db")
        async with running(pub):
            for n in range(5):
                pub.offer(record(n))
            await ep.until(lambda: len(ep.sizes()) == 5)
            assert pub.stats()["h"]["failed_attempts"] == 2
        assert ep.batches["/log"] == [[0, 1, 2, 3, 4]]


async def test_timeout_is_retried(tmp_path):
    """A POST that takes longer than the hook's timeout is abandoned and retried."""
    async with endpoint([None, 200]) as ep:
        pub = LogHookPublisher([hook(ep.url(), timeout=0.2)], db_path=tmp_path / "loghooks.db")
        async with running(pub):
            pub.offer(record(1))
            await ep.until(lambda: ep.sizes() == [1])
            assert pub.stats()["h"]["failed_attempts"] == 1


async def test_endpoint_down_then_up(tmp_path):
    """Connections refused at first: records wait and are delivered once it listens."""
    port = free_port()
    with watch_failures() as failures:
        pub = LogHookPublisher(
            [hook(f"http://127.0.0.1:{port}/log")], db_path=tmp_path / "loghooks.db"
        )
        async with running(pub):
            for n in range(3):
                pub.offer(record(n))
            async with asyncio.timeout(WAIT):
                await failures.seen.wait()
            async with endpoint(port=port) as ep:
                await ep.until(lambda: len(ep.sizes()) == 3)
                assert ep.sizes() == [0, 1, 2]


async def test_pending_records_survive_close_and_restart(tmp_path):
    """Records still pending at close() are delivered by the next publisher on the db."""
    db = tmp_path / "loghooks.db"
    async with endpoint([503] * 1000) as down:
        first = LogHookPublisher([hook(down.url())], db_path=db)
        async with running(first):
            for n in range(20):
                first.offer(record(n))
            await down.until(lambda: down.requests >= 1)
        assert first.stats()["h"]["pending"] == 20
    async with endpoint() as up:
        second = LogHookPublisher([hook(up.url(), max_latency=0.05)], db_path=db)
        async with running(second):
            await up.until(lambda: len(up.sizes()) == 20)
    assert up.sizes() == list(range(20))


async def test_pending_records_survive_abandoned_publisher(tmp_path):
    """Records committed before the tasks die without close() are delivered after restart."""
    db = tmp_path / "loghooks.db"
    down = f"http://127.0.0.1:{free_port()}/log"
    first = LogHookPublisher([hook(down)], db_path=db)
    task = asyncio.create_task(first.run())
    for n in range(30):
        first.offer(record(n))
    await first.flush()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    try:
        async with endpoint() as up:
            second = LogHookPublisher([hook(up.url(), max_latency=0.05)], db_path=db)
            async with running(second):
                await up.until(lambda: len(up.sizes()) == 30)
        assert up.sizes() == list(range(30))
    finally:
        await first.close()


CHILD = """
import asyncio, sys
from engine.policy.log_hook import LogHook
from engine.logs.hooks.publisher import LogHookPublisher
from engine.records import LogRecord, RecordType, Response

async def main():
    pub = LogHookPublisher([LogHook(name="h", url=sys.argv[2], backoff_base=0.05,
                                    backoff_max=0.1)], db_path=sys.argv[1])
    task = asyncio.create_task(pub.run())
    for n in range(int(sys.argv[3])):
        pub.offer(LogRecord(type=RecordType.BOUNCE, id=f"{n:032x}", sender="s@example.com",
                            recipient="r@example.net", queue="example.net", site="mx",
                            size=n, response=Response.parse(550, "5.1.1 no"), timestamp=1.0,
                            created=1.0, nodeid="child", reception_protocol="ESMTP"))
    await pub.flush()
    print("persisted", flush=True)
    await task

asyncio.run(main())
"""


async def test_pending_records_survive_kill_9(tmp_path):
    """Records committed by a process that is then SIGKILLed are delivered after restart."""
    db = tmp_path / "loghooks.db"
    down = f"http://127.0.0.1:{free_port()}/log"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(db),
        down,
        "50",
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        async with asyncio.timeout(30):
            assert (await proc.stdout.readline()).strip() == b"persisted"
    finally:
        proc.kill()
        await proc.wait()
    async with endpoint() as up:
        pub = LogHookPublisher([hook(up.url(), max_latency=0.05)], db_path=db)
        async with running(pub):
            await up.until(lambda: len(up.sizes()) == 50)
    assert up.sizes() == list(range(50))


async def test_each_hook_gets_its_own_record_types(tmp_path):
    """Two hooks with different record_types each receive only their types."""
    async with endpoint() as ep:
        hooks = [
            hook(ep.url("bounces"), name="bounces", record_types={"Bounce"}),
            hook(ep.url("other"), name="other", record_types={"Delivery", "TransientFailure"}),
        ]
        pub = LogHookPublisher(hooks, db_path=tmp_path / "loghooks.db")
        types = [
            RecordType.BOUNCE,
            RecordType.DELIVERY,
            RecordType.TRANSIENT_FAILURE,
            RecordType.RECEPTION,
            RecordType.BOUNCE,
        ]
        async with running(pub):
            for n, t in enumerate(types):
                pub.offer(record(n, t))
            await ep.until(lambda: len(ep.sizes("/bounces")) == 2 and len(ep.sizes("/other")) == 2)
        assert ep.sizes("/bounces") == [0, 4]
        assert ep.sizes("/other") == [1, 2]
