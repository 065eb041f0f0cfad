"""The OpenAPI document: served without auth, valid OpenAPI, the node's routes exactly, and
schemathesis against a live node finds no 5xx but 503 and no response off the document."""

from __future__ import annotations

import aiohttp
import pytest
from openapi_spec_validator import validate

from bench.fuzz_http import run
from engine.reception.openapi import DOCUMENT
from tests.support.node import running_node

FUZZ_CASES, FUZZ_SEED = 200, 9


def mounted(app) -> set[tuple[str, str]]:
    """(method, path) of every route; HEAD aside (aiohttp adds one for every GET)."""
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD"
    }


def documented() -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, ops in DOCUMENT["paths"].items() for m in ops}


async def test_document_is_served_without_auth_and_matches_the_routes(tmp_path, auth_dir):
    async with running_node(tmp_path, **{"http.auth_dir": str(auth_dir)}) as node:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{node.http_port}/api/openapi.json"
            async with http.get(url) as resp:
                status, served = resp.status, await resp.json()
        routes = mounted(node.http.app)
    assert status == 200
    assert served == DOCUMENT
    validate(served)  # raises OpenAPIValidationError naming the offending part
    assert routes == documented(), (routes - documented(), documented() - routes)


# schemathesis's own strategies use the random module, which hypothesis deprecates.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_schemathesis_finds_no_5xx_and_no_mismatch(tmp_path):
    """200 seeded cases (positive and negative data) over every operation, inject and
    admin authenticated with basic auth (the loopback peer is not a trusted host)."""
    summary = await run(FUZZ_CASES, FUZZ_SEED, tmp_path)
    assert summary.cases == FUZZ_CASES
    assert len(summary.operations) >= 15, summary.operations  # nearly all 19 get cases
    assert (summary.server_errors, summary.mismatches, summary.crashes) == (0, 0, 0), summary
    assert summary.error_logs == 0, summary.samples
    assert summary.statuses.get(200, 0) > 0 and summary.statuses.get(400, 0) > 0
