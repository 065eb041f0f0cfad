"""A local Nimbus cluster for integration tests: N ``nimbus mta`` and M ``nimbus tsa``
processes sharing one throwaway redis-server, all on loopback.

    async with Cluster(tmp_path, policy=POLICY, mtas=3, tsas=2, shaping=SHAPING) as cluster:
        node = cluster.mtas[0]                    # a NimbusProcess (smtp_port, http_port)
        await send(node, ["u@a.test"])            # SMTP injection; returns the spool ids
        await cluster.tsas[0].suspended()         # GET /get_suspension_v1/suspended.json
        await metric(node, "nimbus_redis_degraded")

Each process gets its own directory under ``tmp_path`` (``mta-<i>/`` with spool and
logs, ``tsa-<i>/``); the MTAs share one policy directory (``policy/init.py``), the
TSAs one with ``shaping.toml``. Listeners bind port 0 and readiness is each process's
own log line (MTA ``ready``, TSA ``listening``), so nothing sleeps. On exit every
process is SIGKILLed (a test never depends on a graceful stop) and Redis is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import aiosmtplib

from tests.support.node import NimbusProcess, write_policy
from tests.support.redis_server import RedisServer

__all__ = ["Cluster", "TsaProcess", "send", "get_json", "metric", "until", "nimbus_cli"]

T = TypeVar("T")
P = TypeVar("P")
MESSAGE = b"Subject: cluster test\r\n\r\nhello\r\n"


class TsaProcess(NimbusProcess):
    """``nimbus tsa`` as a child process; ``url`` once it is listening."""

    @property
    def port(self) -> int:
        return int(self.ready_line["port"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    async def start(
        cls,
        workdir: Path,
        env: dict[str, str],  # type: ignore[override]
        timeout: float = 30.0,
    ) -> TsaProcess:
        """Start with ``env`` (NIMBUS_REDIS_URL, NIMBUS_POLICY_DIR, ...) on a free port and
        wait for the ``listening`` line, which carries the port."""
        workdir.mkdir(parents=True, exist_ok=True)
        proc = await super().start(
            workdir,
            {"NIMBUS_TSA_LISTEN": "127.0.0.1:0", **env},
            timeout,
            role="tsa",
            ready_event="listening",
        )
        return proc  # type: ignore[return-value]

    async def suspended(self) -> dict[str, Any]:
        """``GET /get_suspension_v1/suspended.json`` (asserting 200)."""
        status, body = await get_json(self.url + "/get_suspension_v1/suspended.json")
        assert status == 200, body
        return body


class Cluster:
    """Redis (own, unless ``redis`` is given) + ``tsas`` TSA processes + ``mtas`` MTAs.

    policy: the MTAs' ``init.py`` source. shaping: the TSAs' ``shaping.toml`` (required
    when tsas > 0). redis: start one (True), use none (False; MTAs run embedded), or an
    already running RedisServer to share. env: extra variables for every MTA;
    tsa_env: extra variables for every TSA.
    """

    def __init__(
        self,
        tmp_path: Path,
        *,
        policy: str,
        mtas: int = 3,
        tsas: int = 0,
        shaping: str | None = None,
        redis: bool | RedisServer = True,
        env: dict[str, str] | None = None,
        tsa_env: dict[str, str] | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.policy = policy
        self.mta_count = mtas
        self.tsa_count = tsas
        self.shaping = shaping
        self._redis_arg = redis
        self.env = env or {}
        self.tsa_env = tsa_env or {}
        self.redis: RedisServer | None = redis if isinstance(redis, RedisServer) else None
        self.mtas: list[NimbusProcess] = []
        self.tsas: list[TsaProcess] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Cluster:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        if self._redis_arg is True:
            self.redis = await self._stack.enter_async_context(RedisServer())
        common: dict[str, str] = {}
        if self.redis is not None:
            common["NIMBUS_REDIS_URL"] = self.redis.url
        if self.tsa_count:
            assert self.redis is not None, "the TSA needs Redis"
            assert self.shaping is not None, "the TSA needs a shaping.toml"
            tsa_policy = self.tmp_path / "tsa-policy"
            tsa_policy.mkdir(parents=True, exist_ok=True)
            (tsa_policy / "shaping.toml").write_text(self.shaping)
            tsa_env = {**common, "NIMBUS_POLICY_DIR": str(tsa_policy), **self.tsa_env}
            started = await asyncio.gather(
                *[
                    TsaProcess.start(self.tmp_path / f"tsa-{i}", tsa_env)
                    for i in range(self.tsa_count)
                ],
                return_exceptions=True,
            )
            self.tsas = self._keep(started, TsaProcess, _end_tsa)
        policy_dir = write_policy(self.tmp_path / "policy", self.policy)
        mta_env = {
            **common,
            "NIMBUS_POLICY_DIR": str(policy_dir),
            "NIMBUS_CLUSTER_NODES": str(self.mta_count),
            **self.env,
        }
        if self.tsas:
            mta_env["NIMBUS_TSA_URLS"] = ",".join(t.url for t in self.tsas)
        starts = []
        for i in range(self.mta_count):
            workdir = self.tmp_path / f"mta-{i}"
            workdir.mkdir(parents=True, exist_ok=True)
            env = {**mta_env, "NIMBUS_NODE_ID": f"node{i}", "NIMBUS_SMTP_HOSTNAME": f"node{i}.test"}
            starts.append(NimbusProcess.start(workdir, env))
        started = await asyncio.gather(*starts, return_exceptions=True)
        self.mtas = self._keep(started, NimbusProcess, _end_mta)

    def _keep(
        self, started: list[Any], kind: type[P], end: Callable[[P], Awaitable[None]]
    ) -> list[P]:
        """Register every process that started for teardown; then raise the first start
        failure, if any (so a half-started cluster is still torn down)."""
        procs = [p for p in started if isinstance(p, kind)]
        for proc in procs:
            self._stack.push_async_callback(end, proc)
        for failure in started:
            if isinstance(failure, BaseException):
                raise failure
        return procs


async def _end_mta(proc: NimbusProcess) -> None:
    proc.kill9()
    await proc.wait()


async def _end_tsa(proc: TsaProcess) -> None:
    proc.kill9()
    await proc.wait()


# -- small clients -----------------------------------------------------------------


async def send(
    node: NimbusProcess,
    recipients: list[str],
    *,
    sender: str = "sender@src.test",
    message: bytes = MESSAGE,
) -> list[str]:
    """One SMTP transaction to ``node``; returns the spool ids from ``250 OK ids=...``
    (one message per recipient). Raises when any recipient is refused."""
    errors, reply = await aiosmtplib.send(
        message,
        sender=sender,
        recipients=recipients,
        hostname="127.0.0.1",
        port=node.smtp_port,
        start_tls=False,
        timeout=30,
    )
    assert not errors, errors
    text = reply.split("ids=", 1)[1] if "ids=" in reply else ""
    return text.split()


async def get_json(url: str, *, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    """One HTTP request; returns (status, JSON body or text)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.request(method, url, json=body) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()


async def metric(node: NimbusProcess, name: str) -> float | None:
    """The value of an unlabelled sample ``name`` on the node's ``/metrics`` (None if absent)."""
    status, text = await get_json(f"http://127.0.0.1:{node.http_port}/metrics")
    assert status == 200, text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def until(
    probe: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Await ``probe()`` until it returns something truthy; TimeoutError naming ``what``.

    For state that is only visible by asking (HTTP, metrics): a poll with a deadline."""
    try:
        async with asyncio.timeout(timeout):
            while not (value := await probe()):
                await asyncio.sleep(interval)
    except TimeoutError:
        raise TimeoutError(f"{what}: not reached within {timeout}s") from None
    return value


async def nimbus_cli(*argv: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """Run the ``nimbus`` console entry point (``python -m engine.cli``); returns
    (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine.cli",
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()
