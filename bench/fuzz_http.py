"""HTTP API fuzzing with schemathesis against a live node (issue 9).

Exports:
    HttpFuzzSummary      cases, 5xx other than 503, schema mismatches, crashes (with samples)
    fuzz(base_url, ...)  sync: ``cases`` seeded schemathesis cases from the served document
    run(cases, seed)     async: a node (sink mode, basic auth for inject *and* admin: the
                         loopback peer is not a trusted host) and ``fuzz`` in a thread
    main()               ``python -m bench.fuzz_http [--cases 10000] [--seed 9]``

The cases come from ``GET /api/openapi.json`` (so the document is what is tested):
positive and negative (schema-violating) data, every operation. Each response must be
no 5xx but 503 and conform to the document (status code, content type, JSON body);
a crash is a transport failure (the node dropped or reset the connection) or an
ERROR line the node logged. tests/integration/test_fuzz.py runs 200 cases in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from engine.xfer.wire import MEDIA_TYPE as XFER_MEDIA_TYPE
from tests.support.node import running_node

USER, PASSWORD = "fuzz", "fuzz-pw"
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
SAMPLES = 5

# The node-to-node transfer body is bytes (a JSON line, a newline, the message): any
# bytes, and some that start like a transfer, so the route's checks are exercised.
schemathesis.openapi.media_type(
    XFER_MEDIA_TYPE,
    st.one_of(
        st.binary(max_size=256),
        st.builds(
            lambda head, rest: head + b"\n" + rest, st.binary(max_size=64), st.binary(max_size=64)
        ),
        st.just(b'{"v":1,"id":"x"}\nSubject: x\r\n\r\n.\r\n'),
    ),
)


@dataclass(slots=True, kw_only=True)
class HttpFuzzSummary:
    """What a fuzz run saw; ``*_samples`` keep the first few for the report."""

    cases: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    operations: dict[str, int] = field(default_factory=dict)
    server_errors: int = 0  # 5xx other than 503
    mismatches: int = 0
    crashes: int = 0
    error_logs: int = 0
    samples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def note(self, text: str) -> None:
        if len(self.samples) < SAMPLES:
            self.samples.append(text[:600])

    def line(self) -> str:
        return (
            f"cases={self.cases} 5xx_not_503={self.server_errors} "
            f"schema_mismatches={self.mismatches} crashes={self.crashes} "
            f"node_error_logs={self.error_logs} seconds={self.seconds:.1f} "
            f"statuses={dict(sorted(self.statuses.items()))} operations={len(self.operations)}"
        )


def _auth_header() -> str:
    return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def fuzz(base_url: str, *, cases: int, seed: int) -> HttpFuzzSummary:
    """Run ``cases`` seeded cases over every operation of the node's served document."""
    schema = schemathesis.openapi.from_url(f"{base_url}/api/openapi.json")
    strategy = schema.as_strategy(schemathesis.GenerationMode.POSITIVE) | schema.as_strategy(
        schemathesis.GenerationMode.NEGATIVE
    )
    summary = HttpFuzzSummary()
    session = requests.Session()
    headers = {"Authorization": _auth_header()}

    @hypothesis_seed(seed)
    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # no shrinking: nothing raises, every case is counted
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def one(case: schemathesis.Case) -> None:
        summary.cases += 1
        label = f"{case.method} {case.path}"
        summary.operations[label] = summary.operations.get(label, 0) + 1
        try:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=10)
        except requests.RequestException as exc:
            summary.crashes += 1
            summary.note(f"crash {case.method} {case.path}: {exc!r}")
            return
        status = response.status_code
        summary.statuses[status] = summary.statuses.get(status, 0) + 1
        if status >= 500 and status != 503:
            summary.server_errors += 1
            summary.note(f"{status} {case.method} {case.formatted_path}: {response.text[:200]}")
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (Failure, FailureGroup) as exc:
            summary.mismatches += 1
            summary.note(f"mismatch {case.method} {case.formatted_path} -> {status}: {exc}")

    started = time.monotonic()
    one()
    summary.seconds = time.monotonic() - started
    session.close()
    return summary


class _ErrorCount(logging.Handler):
    """Counts the node's ERROR lines (a handler raised, aiohttp logged a traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def run(cases: int, seed: int, workdir: Path) -> HttpFuzzSummary:
    """A node with user ``fuzz`` for inject and admin, fuzzed by ``cases`` cases."""
    auth = workdir / "auth"
    auth.mkdir(parents=True, exist_ok=True)
    (auth / USER).write_text(PASSWORD + "\n")
    errors = _ErrorCount()
    logging.getLogger().addHandler(errors)
    try:
        async with running_node(
            workdir,
            **{
                "http.auth_dir": str(auth),
                "http.admin_auth_dir": str(auth),
                # TEST-NET-1: the loopback client is untrusted, so admin needs the user.
                "http.trusted_hosts": ["192.0.2.0/24"],
                "sink.enabled": True,
                "sink.endpoint": "127.0.0.1:9",  # discard: deliveries only retry
            },
        ) as node:
            base_url = f"http://127.0.0.1:{node.ports['http']}"
            summary = await asyncio.to_thread(fuzz, base_url, cases=cases, seed=seed)
    finally:
        logging.getLogger().removeHandler(errors)
    summary.error_logs = len(errors.records)
    for record in errors.records[:SAMPLES]:
        summary.note(f"node error log {record.name}: {record.getMessage()}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fuzz-http-") as tmp:
        summary = asyncio.run(run(args.cases, args.seed, Path(tmp)))
    print(summary.line())
    for sample in summary.samples:
        print("  " + sample)
    bad = summary.server_errors + summary.mismatches + summary.crashes + summary.error_logs
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
