"""Spool shards: which spool a worker owns and adopts, and moving messages between them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine.config.settings import SpoolSettings
from engine.records import Message, new_message_id
from engine.storage.shards import adopt_into, adopted_dirs, own_dir, shard_dir
from engine.storage.spool import Spool

T = 1_700_000_000.0


def message(n: int) -> Message:
    return Message(
        id=new_message_id(),
        sender="s@example.com",
        recipient=f"r{n}@example.net",
        queue="example.net",
        meta={"n": n},
        created=T + n,
        due=T + 60 + n,
        num_attempts=n % 3,
        size=10,
    )


def layout(root: Path, shards: list[int], legacy: bool) -> None:
    for j in shards:
        shard_dir(root, j).mkdir(parents=True)
    if legacy:
        root.mkdir(exist_ok=True)
        (root / "spool.db").write_bytes(b"")


@pytest.mark.parametrize(
    ("shards", "legacy", "index", "workers", "expected"),
    [
        ([], False, 0, 1, []),
        ([0, 1], False, 0, 1, ["shard-0", "shard-1"]),  # one process adopts every shard
        ([], True, 0, 2, ["."]),  # worker 0 adopts the single-process spool
        ([], True, 1, 2, []),
        ([0, 1, 2, 3, 4], False, 0, 2, ["shard-2", "shard-4"]),  # j >= N, j % N == i
        ([0, 1, 2, 3, 4], False, 1, 2, ["shard-3"]),
        ([0, 1], False, 1, 2, []),  # its own shard is no adoption
    ],
)
def test_adopted_dirs(tmp_path, shards, legacy, index, workers, expected):
    """Every spool on disk is adopted by exactly one worker of the new layout."""
    root = tmp_path / "spool"
    layout(root, shards, legacy)
    got = [str(p.relative_to(root)) for p in adopted_dirs(root, index, workers)]
    assert got == expected


def test_own_dir():
    """One process keeps the spool directory itself; worker i of N owns shard-i."""
    assert own_dir("/s", 0, 1) == Path("/s")
    assert own_dir("/s", 1, 2) == Path("/s/shard-1")


async def test_adopt_moves_every_message_and_removes_the_empty_shard(tmp_path):
    """Messages (envelope, schedule, body) move over; the emptied shard is deleted."""
    root = tmp_path / "spool"
    settings = SpoolSettings(dir=str(shard_dir(root, 0)), min_free_space=0)
    old = Spool(SpoolSettings(dir=str(shard_dir(root, 3)), min_free_space=0))
    await old.recover()
    msgs = [message(n) for n in range(300)]  # more than one batch
    await old.save([(m, f"body {m.id}".encode()) for m in msgs])
    await old.close()
    own = Spool(settings)
    await own.recover()
    try:
        moved = await adopt_into(own, shard_dir(root, 3), settings, set())
        assert sorted(m.id for m in moved) == sorted(m.id for m in msgs)
        assert own.count == 300
        assert await own.load_data(msgs[7].id) == f"body {msgs[7].id}".encode()
    finally:
        await own.close()
    assert not shard_dir(root, 3).exists()
    recovered, _ = await Spool(settings).recover()
    assert {(m.id, m.due, m.num_attempts) for m in recovered} == {
        (m.id, m.due, m.num_attempts) for m in msgs
    }


async def test_adopt_after_a_crash_mid_move_keeps_one_copy(tmp_path):
    """A message already in the owner's spool (moved, then a crash before the delete) is
    only deleted from the adopted spool, never stored twice."""
    root = tmp_path / "spool"
    settings = SpoolSettings(dir=str(root), min_free_space=0)
    msgs = [message(n) for n in range(3)]
    old = Spool(SpoolSettings(dir=str(shard_dir(root, 1)), min_free_space=0))
    await old.recover()
    await old.save([(m, b"x") for m in msgs])
    await old.close()
    own = Spool(settings)
    await own.recover()
    await own.save([(msgs[0], b"x")])  # the copy a crashed move left
    try:
        moved = await adopt_into(own, shard_dir(root, 1), settings, {msgs[0].id})
    finally:
        await own.close()
    assert sorted(m.id for m in moved) == sorted(m.id for m in msgs[1:])
    with sqlite3.connect(root / "spool.db") as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 3
