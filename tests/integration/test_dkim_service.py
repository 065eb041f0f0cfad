"""The DKIM signing service with a worker process (ProcessPoolExecutor): a process, so
not a unit test. The thread-pool variant stays in tests/unit/test_dkim.py."""

from __future__ import annotations

import asyncio

import pytest

from engine.dkim.service import DkimService
from engine.dkim.signer import DkimError, Signer
from tests.support.dkim_keys import MESSAGE, ed_signer, make_keys, rsa_signer, ticking_while, verify


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Keys on disk with their DNS TXT records."""
    return make_keys(tmp_path_factory.mktemp("keys"))


async def test_service_signs_without_blocking_the_loop(keys):
    """100 signings in a worker process complete, verify, and never stall the loop."""
    service = DkimService(workers=1)
    try:
        signers = [rsa_signer(keys), ed_signer(keys)]
        results, longest = await ticking_while(
            asyncio.gather(*(service.sign(MESSAGE, signers) for _ in range(100)))
        )
    finally:
        await service.close()
    assert all(verify(r, keys, 0) and verify(r, keys, 1) for r in results)
    # 100 in-loop RSA+Ed25519 signings would block for 100 x ~1 ms at least.
    assert longest < 0.05


async def test_service_errors_keep_the_worker(keys):
    """A bad key fails that signing with DkimError; the worker signs the next one."""
    service = DkimService(workers=1)
    try:
        with pytest.raises(DkimError):
            await service.sign(MESSAGE, [Signer(domain="example.com", selector="s", key=b"x")])
        assert verify(await service.sign(MESSAGE, [rsa_signer(keys)]), keys)
        assert service.started
    finally:
        await service.close()
