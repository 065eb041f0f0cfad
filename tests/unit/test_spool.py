"""Spool: durable save/recover, updates, quarantine, locking, size limits and group commit.

These use a real SQLite file under tmp_path (the spool's storage is the unit under test).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.config.settings import SpoolSettings
from engine.records import Message, new_message_id
from engine.storage.spool import (
    Quarantined,
    Spool,
    SpoolError,
    SpoolFull,
    SpoolLocked,
    SpoolTimeout,
)

T = 1_700_000_000.0


def settings(tmp_path: Path, **kw) -> SpoolSettings:
    kw.setdefault("min_free_space", 0)
    return SpoolSettings(dir=str(tmp_path), **kw)


def message(n: int = 0, **kw) -> Message:
    fields = dict(
        id=new_message_id(),
        sender=f"s{n}@example.com",
        recipient=f"r{n}@example.net",
        queue=f"t@example.net!{n}",
        meta={"tenant": "t", "n": n, "nested": {"a": [1, 2]}},
        created=T + n,
        due=T + 60 + n,
        num_attempts=n % 3,
        size=100 + n,
    )
    fields.update(kw)
    return Message(**fields)


async def reopen(tmp_path: Path, **kw) -> tuple[list[Message], list[Quarantined]]:
    """Recover the spool in a fresh Spool instance, then close it."""
    spool = Spool(settings(tmp_path, **kw))
    try:
        return await spool.recover()
    finally:
        await spool.close()


@pytest.fixture
async def spool(tmp_path) -> AsyncIterator[Spool]:
    s = Spool(settings(tmp_path))
    await s.recover()
    yield s
    await s.close()


async def test_save_then_recover_returns_same_messages(tmp_path, spool):
    """Saved messages recover in a new Spool with every field, due and attempts included."""
    saved = [message(n) for n in range(3)]
    await spool.save([(m, b"body %d" % i) for i, m in enumerate(saved)])
    await spool.close()
    recovered, quarantined = await reopen(tmp_path)
    assert sorted(recovered, key=lambda m: m.id) == sorted(saved, key=lambda m: m.id)
    assert quarantined == []


async def test_recover_of_empty_spool(tmp_path):
    """A new spool directory recovers no messages and creates the database."""
    assert await reopen(tmp_path) == ([], [])
    assert (tmp_path / "spool.db").exists()


async def test_count_tracks_saves_and_removes(spool):
    """count follows saved and removed messages."""
    a, b = message(1), message(2)
    await spool.save([(a, b"a"), (b, b"b")])
    spool.remove_nowait([a.id])
    assert spool.count == 1


async def test_oldest_created_follows_saves_removes_and_recovery(tmp_path, spool):
    """oldest_created is the earliest creation time held, also after a restart."""
    a, b, c = message(5), message(1), message(3)
    assert spool.oldest_created() is None
    await spool.save([(a, b"a"), (b, b"b"), (c, b"c")])
    assert spool.oldest_created() == T + 1
    spool.remove_nowait([b.id])
    assert spool.oldest_created() == T + 3
    await spool.close()
    again = Spool(settings(tmp_path))
    await again.recover()
    try:
        assert (again.count, again.oldest_created()) == (2, T + 3)
    finally:
        await again.close()


async def test_load_data_returns_bytes(spool):
    """load_data returns the exact body bytes saved."""
    m = message()
    body = b"Subject: x\r\n\r\n\x00\xff binary \r\n"
    await spool.save([(m, body)])
    assert await spool.load_data(m.id) == body


async def test_load_data_unknown_is_none(spool):
    """load_data of an id not in the spool returns None."""
    assert await spool.load_data("0" * 32) is None


async def test_update_nowait_persists_after_flush(tmp_path, spool):
    """update_nowait's due, attempts and meta are stored once flush returns."""
    m = message()
    await spool.save([(m, b"x")])
    changed = dataclasses.replace(m, due=T + 9999, num_attempts=5, meta={"x": 1})
    spool.update_nowait(changed)
    await spool.flush()
    await spool.close()
    recovered, _ = await reopen(tmp_path)
    assert recovered == [changed]


async def test_remove_nowait_takes_effect_after_flush(tmp_path, spool):
    """remove_nowait'ed messages are gone (data too) once flush returns."""
    keep, drop = message(1), message(2)
    await spool.save([(keep, b"k"), (drop, b"d")])
    spool.remove_nowait([drop.id])
    await spool.flush()
    assert await spool.load_data(drop.id) is None
    await spool.close()
    recovered, _ = await reopen(tmp_path)
    assert recovered == [keep]


async def test_close_commits_queued_updates(tmp_path, spool):
    """Updates queued without flush are committed by close()."""
    m = message()
    await spool.save([(m, b"x")])
    spool.update_nowait(dataclasses.replace(m, num_attempts=9))
    await spool.close()
    recovered, _ = await reopen(tmp_path)
    assert recovered[0].num_attempts == 9


@pytest.mark.parametrize(
    "envelope",
    [
        "{not json",
        "[1, 2]",
        '{"sender": "s"}',  # missing keys
        '{"sender":"s","recipient":"r","queue":"q","created":1,"meta":[1]}',  # meta not object
        '{"sender":"s","recipient":"r","queue":"q","created":"soon"}',  # bad created
    ],
)
async def test_corrupt_row_quarantined_others_load(tmp_path, spool, envelope):
    """A row whose envelope can't be decoded is quarantined; the other messages still load."""
    good = [message(1), message(2)]
    await spool.save([(m, b"good") for m in good])
    await spool.close()
    bad_id = "f" * 32
    with sqlite3.connect(tmp_path / "spool.db") as conn:
        conn.execute(
            "INSERT INTO messages (id, envelope, due, attempts, data) VALUES (?, ?, ?, ?, ?)",
            (bad_id, envelope, T, 0, b"bad body"),
        )
    conn.close()

    recovered, quarantined = await reopen(tmp_path)

    assert sorted(m.id for m in recovered) == sorted(m.id for m in good)
    assert [q.id for q in quarantined] == [bad_id] and quarantined[0].reason
    with sqlite3.connect(tmp_path / "spool.db") as conn:
        moved = conn.execute("SELECT id, envelope, data FROM quarantine").fetchall()
        remaining = conn.execute(
            "SELECT count(*) FROM messages WHERE id = ?", (bad_id,)
        ).fetchone()[0]
    conn.close()
    assert moved == [(bad_id, envelope, b"bad body")] and remaining == 0


async def test_quarantined_row_not_reported_twice(tmp_path, spool):
    """After quarantine, a later recovery no longer reports the row."""
    await spool.close()
    with sqlite3.connect(tmp_path / "spool.db") as conn:
        conn.execute("INSERT INTO messages VALUES (?, ?, ?, ?, ?)", ("b" * 32, "{", T, 0, b""))
    conn.close()
    await reopen(tmp_path)
    assert await reopen(tmp_path) == ([], [])


async def test_second_spool_on_same_dir_is_locked(tmp_path, spool):
    """A second Spool on a directory already open raises SpoolLocked."""
    other = Spool(settings(tmp_path))
    try:
        with pytest.raises(SpoolLocked):
            await other.recover()
    finally:
        await other.close()


async def test_lock_released_on_close(tmp_path, spool):
    """After close() another Spool can open the directory."""
    await spool.close()
    assert await reopen(tmp_path) == ([], [])


async def save_until_error(spool: Spool, limit: int = 100) -> tuple[list[Message], Exception]:
    """Save 10 kB messages one by one until a save raises; return the saved ones and the error."""
    saved: list[Message] = []
    for n in range(limit):
        m = message(n)
        try:
            await spool.save([(m, b"x" * 10_000)])
        except SpoolError as exc:
            return saved, exc
        saved.append(m)
    raise AssertionError(f"{limit} saves of 10 kB fitted in the spool")


async def test_max_size_gives_spool_full(tmp_path):
    """Saving past max_size raises SpoolFull."""
    spool = Spool(settings(tmp_path, max_size=200_000))
    await spool.recover()
    try:
        _, error = await save_until_error(spool)
    finally:
        await spool.close()
    assert isinstance(error, SpoolFull), repr(error)


async def test_max_size_keeps_previously_saved(tmp_path):
    """After a save fails for max_size, the previously saved messages still recover."""
    spool = Spool(settings(tmp_path, max_size=200_000))
    await spool.recover()
    try:
        saved, _ = await save_until_error(spool)
    finally:
        await spool.close()
    recovered, _ = await reopen(tmp_path, max_size=200_000)
    assert saved and sorted(m.id for m in recovered) == sorted(m.id for m in saved)


async def test_oversized_batch_stores_nothing(tmp_path):
    """A save batch that does not fit in max_size is stored not at all, and count is unchanged."""
    spool = Spool(settings(tmp_path, max_size=100_000))
    await spool.recover()
    try:
        with pytest.raises(SpoolError):
            await spool.save([(message(n), b"y" * 10_000) for n in range(50)])
        assert spool.count == 0
    finally:
        await spool.close()
    assert await reopen(tmp_path) == ([], [])


async def test_full_request_does_not_fail_its_batch_mates(tmp_path):
    """In one group commit, a save that fits succeeds while one that does not gets SpoolFull."""
    spool = Spool(settings(tmp_path, max_size=100_000, commit_window=0.05))
    await spool.recover()
    try:
        results = await asyncio.gather(
            spool.save([(message(0), b"small")]),
            spool.save([(message(n), b"y" * 10_000) for n in range(1, 50)]),
            return_exceptions=True,
        )
    finally:
        await spool.close()
    assert results[0] is None and isinstance(results[1], SpoolFull), results


async def test_spool_usable_after_full(tmp_path):
    """After a save fails for max_size, removing messages makes room for new saves."""
    spool = Spool(settings(tmp_path, max_size=100_000))
    await spool.recover()
    try:
        first = message(0)
        await spool.save([(first, b"z" * 10_000)])
        with pytest.raises(SpoolError):
            await spool.save([(message(n), b"z" * 10_000) for n in range(1, 20)])
        spool.remove_nowait([first.id])
        await spool.flush()
        again = message(99)
        await spool.save([(again, b"z" * 10_000)])
        assert await spool.load_data(again.id) == b"z" * 10_000
    finally:
        await spool.close()


async def test_min_free_space_refuses_before_writing(tmp_path):
    """With min_free_space beyond the disk, save raises SpoolFull and writes nothing."""
    spool = Spool(settings(tmp_path, min_free_space=10**18))
    await spool.recover()
    try:
        with pytest.raises(SpoolFull):
            await spool.save([(message(), b"x")])
    finally:
        await spool.close()
    assert await reopen(tmp_path) == ([], [])


async def test_concurrent_saves_share_commits(tmp_path):
    """50 concurrent saves are committed in fewer than 50 transactions."""
    commits: list[int] = []
    spool = Spool(settings(tmp_path), on_commit=commits.append)
    await spool.recover()
    try:
        msgs = [message(n) for n in range(50)]
        await asyncio.gather(*(spool.save([(m, b"body")]) for m in msgs))
    finally:
        await spool.close()
    assert sum(commits) == 50 and len(commits) < 50
    recovered, _ = await reopen(tmp_path)
    assert len(recovered) == 50


async def test_save_before_recover_is_error(tmp_path):
    """Saving to a spool that was never opened raises SpoolError."""
    spool = Spool(settings(tmp_path))
    with pytest.raises(SpoolError):
        await spool.save([(message(), b"x")])
    await spool.close()


async def test_duplicate_id_save_fails_without_affecting_others(tmp_path, spool):
    """Saving an id that already exists fails that save only."""
    m = message()
    await spool.save([(m, b"one")])
    with pytest.raises(SpoolError):
        await spool.save([(m, b"two")])
    assert await spool.load_data(m.id) == b"one"


async def test_save_of_a_meta_json_cannot_encode_is_a_spool_error_and_the_next_save_works(
    tmp_path, spool
):
    """A message whose meta holds a set fails its save with SpoolError naming the type
    (not a bare TypeError a listener would turn into a 500); the spool saves on."""
    bad = message(1, meta={"x_tags": {1, 2}})
    with pytest.raises(SpoolError, match="TypeError: Object of type set"):
        await asyncio.wait_for(spool.save([(bad, b"b")]), 5)
    good = message(2)
    await asyncio.wait_for(spool.save([(good, b"g")]), 5)
    await spool.close()
    recovered, _ = await reopen(tmp_path)
    assert recovered == [good]


async def test_flush_on_a_stuck_writer_is_a_spool_timeout(tmp_path):
    """flush() waits at most spool.write_timeout for a writer held by a blocked op."""
    spool = Spool(settings(tmp_path, write_timeout=0.2))
    await spool.recover()
    release = threading.Event()
    spool._writer.submit_nowait(lambda conn: release.wait(5))
    try:
        with pytest.raises(SpoolTimeout, match="within 0.2s"):
            await asyncio.wait_for(spool.flush(), 5)
    finally:
        release.set()
        await spool.close()


async def test_health_probe_commits_and_is_not_counted_as_work(tmp_path):
    """check_health is None while the writer commits; its probe is not reported to
    on_commit (commit metrics count real work); a closed spool is 'not open'."""
    commits: list[int] = []
    spool = Spool(settings(tmp_path), on_commit=commits.append)
    before = await spool.check_health(timeout=5)
    await spool.recover()
    try:
        healthy = await spool.check_health(timeout=5)
        await spool.save([(message(), b"x")])
        await asyncio.gather(spool.check_health(timeout=5), spool.save([(message(1), b"y")]))
    finally:
        await spool.close()
    after = await spool.check_health(timeout=5)
    assert (before, healthy, after) == ("spool is not open", None, "spool is not open")
    assert sum(commits) == 2


async def test_health_probe_names_a_stuck_writer(tmp_path):
    """A writer that does not commit within the timeout is named as such."""
    spool = Spool(settings(tmp_path))
    await spool.recover()
    gate = threading.Event()
    try:
        spool._writer.submit_nowait(lambda conn: gate.wait(10))  # the writer thread blocks
        problem = await spool.check_health(timeout=0.2)
    finally:
        gate.set()
        await spool.close()
    assert problem == "spool writer did not commit within 0.2s"


async def test_compact_shrinks_the_file_and_keeps_every_message(tmp_path, spool):
    """After most messages are removed, compact (checkpoint + VACUUM) gives the space back;
    what is left is all there, and saves work afterwards."""
    body = b"x" * 20_000
    kept = [message(n) for n in range(5)]
    gone = [message(n + 100) for n in range(300)]
    await spool.save([(m, body) for m in kept + gone])
    spool.remove_nowait([m.id for m in gone])
    result = await spool.compact()
    assert result["bytes_after"] < result["bytes_before"] / 5, result
    assert [m.id for m in await spool.messages()] == [m.id for m in kept]
    assert await spool.load_data(kept[0].id) == body
    await spool.save([(message(999), b"later")])
    assert spool.count == 6
