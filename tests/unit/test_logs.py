"""LogWriter: NDJSON segments, size rotation, subscribers and callbacks, flush on close."""

from __future__ import annotations

import asyncio
import errno
import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from engine.config.settings import LogSettings
from engine.logs.metrics import Metrics
from engine.logs.writer import LogWriter, segment_name
from engine.records import LogRecord, RecordType, Response

T = 1_700_000_000.25
WAIT = 5.0


def record(n: int) -> LogRecord:
    return LogRecord(
        type=RecordType.RECEPTION,
        id=f"{n:032x}",
        sender="s@example.com",
        recipient="r@example.net",
        queue="example.net",
        site="",
        size=10 + n,
        response=Response.parse(250, "2.0.0 ok"),
        timestamp=T,
        created=T,
        nodeid="node-1",
    )


class Clock:
    """A clock that advances 1 ms per call and lets a test await the n-th call.

    The writer reads the clock once per batch, in its worker thread, just before
    writing; awaiting a call therefore means that batch was taken off the queue.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.calls = 0
        self.events: dict[int, asyncio.Event] = {}

    def __call__(self) -> float:
        self.calls += 1
        n = self.calls
        self.loop.call_soon_threadsafe(self._event(n).set)
        return T + n * 0.001

    def _event(self, n: int) -> asyncio.Event:
        return self.events.setdefault(n, asyncio.Event())

    async def called(self, n: int) -> None:
        async with asyncio.timeout(WAIT):
            await self._event(n).wait()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def run_writer(writer: LogWriter) -> asyncio.Task:
    return asyncio.create_task(writer.run())


async def finish(writer: LogWriter, task: asyncio.Task) -> None:
    writer.close()
    async with asyncio.timeout(WAIT):
        await task


def test_segment_name_format():
    """Segments are named %Y%m%d-%H%M%S.%f in UTC."""
    assert segment_name(T) == "20231114-221320.250000"


async def test_close_flushes_records_as_ndjson(tmp_path):
    """Records emitted before close() are written as one JSON object per line."""
    writer = LogWriter(LogSettings(dir=str(tmp_path / "logs")))
    task = await run_writer(writer)
    for n in range(3):
        writer.emit(record(n))
    await finish(writer, task)
    files = list((tmp_path / "logs").iterdir())
    assert len(files) == 1 and [r["id"] for r in lines(files[0])] == [f"{n:032x}" for n in range(3)]


async def test_lines_are_log_record_json(tmp_path):
    """Each line is exactly the record's to_json()."""
    writer = LogWriter(LogSettings(dir=str(tmp_path)))
    task = await run_writer(writer)
    writer.emit(record(7))
    await finish(writer, task)
    (path,) = tmp_path.iterdir()
    assert lines(path) == [record(7).to_json()]


async def test_segment_named_by_open_time(tmp_path):
    """A segment's file name is segment_name of the clock when it was opened."""
    clock = Clock(asyncio.get_running_loop())
    writer = LogWriter(LogSettings(dir=str(tmp_path)), clock=clock)
    task = await run_writer(writer)
    writer.emit(record(0))
    await finish(writer, task)
    names = [p.name for p in tmp_path.iterdir()]
    assert names == [segment_name(T + 0.001)]
    assert re.fullmatch(r"\d{8}-\d{6}\.\d{6}", names[0])


@pytest.mark.parametrize(("max_file_size", "files"), [(1, 3), (100_000_000, 1)])
async def test_rotation_by_size(tmp_path, max_file_size, files):
    """A new segment starts once the current one reaches max_file_size."""
    clock = Clock(asyncio.get_running_loop())
    writer = LogWriter(LogSettings(dir=str(tmp_path), max_file_size=max_file_size), clock=clock)
    task = await run_writer(writer)
    for n in range(3):  # one record per batch: wait for each batch to be taken
        writer.emit(record(n))
        await clock.called(n + 1)
    await finish(writer, task)
    segments = sorted(tmp_path.iterdir())
    ids = [r["id"] for p in segments for r in lines(p)]
    assert len(segments) == files and ids == [f"{n:032x}" for n in range(3)]


async def test_rotation_by_age(tmp_path):
    """A new segment starts once the current one is older than max_segment_duration."""
    clock = Clock(asyncio.get_running_loop())
    writer = LogWriter(LogSettings(dir=str(tmp_path), max_segment_duration=0.0015), clock=clock)
    task = await run_writer(writer)
    for n in range(3):
        writer.emit(record(n))
        await clock.called(n + 1)
    await finish(writer, task)
    # Clock ticks 1 ms per batch: segments open at 1 ms and 3 ms.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        segment_name(T + 0.001),
        segment_name(T + 0.003),
    ]


async def test_subscriber_receives_records(tmp_path):
    """A subscriber queue receives every record emitted after subscribing."""
    writer = LogWriter(LogSettings(dir=str(tmp_path)))
    writer.emit(record(0))
    queue = writer.subscribe()
    writer.emit(record(1))
    writer.emit(record(2))
    assert [queue.get_nowait().id for _ in range(queue.qsize())] == [f"{1:032x}", f"{2:032x}"]


async def test_full_subscriber_drops_without_blocking(tmp_path):
    """A full subscriber queue drops further records; emit does not block or raise."""
    writer = LogWriter(LogSettings(dir=str(tmp_path)))
    queue = writer.subscribe(maxsize=1)
    writer.emit(record(0))
    writer.emit(record(1))
    assert queue.qsize() == 1 and queue.get_nowait().id == f"{0:032x}"


async def test_on_record_callback_called_synchronously(tmp_path):
    """on_record callbacks receive each record during emit()."""
    writer = LogWriter(LogSettings(dir=str(tmp_path)))
    seen: list[LogRecord] = []
    writer.on_record(seen.append)
    writer.emit(record(0))
    assert seen == [record(0)]


async def test_close_before_any_record_writes_no_file(tmp_path):
    """Closing a writer that got no records leaves the directory empty."""
    writer = LogWriter(LogSettings(dir=str(tmp_path / "logs")))
    task = await run_writer(writer)
    await finish(writer, task)
    assert list((tmp_path / "logs").iterdir()) == []


class _DiskFills:
    """A segment file on a disk that fills up: while ``full``, a write stores part of its
    data and then fails with ENOSPC, as write(2) does at the end of the free space."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.full = False

    def write(self, data: Any) -> int:
        if not self.full:
            return self.real.write(data)
        if len(data) > 1:
            return self.real.write(bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_full_disk_drops_whole_batches_counts_them_and_logs_once(tmp_path, caplog, monkeypatch):
    """With the disk full, batches are cut back to whole lines and counted, one error is
    logged for the episode, and writing resumes (logged once) when space returns."""
    writer = LogWriter(LogSettings(dir=str(tmp_path)))
    writer._write([record(0)])
    disk = _DiskFills(writer._file)
    monkeypatch.setattr(writer, "_file", disk)
    disk.full = True
    with caplog.at_level("WARNING", logger="nimbus.logs"):
        writer._write([record(1), record(2)])
        writer._write([record(3)])
        disk.full = False
        writer._write([record(4)])
    disk.real.close()
    (path,) = tmp_path.iterdir()
    events = [(r.getMessage(), getattr(r, "records", None)) for r in caplog.records]
    assert [r["id"] for r in lines(path)] == [f"{n:032x}" for n in (0, 4)]
    assert writer.dropped == 3
    assert events == [("log_records_dropped", 2), ("log_records_writing_again", None)]


def test_asyncio_task_gauge_counts_live_tasks():
    """nimbus_asyncio_tasks is the loop's live task count at scrape time, absent off-loop."""
    metrics = Metrics()
    assert b"nimbus_asyncio_tasks" not in generate_latest(metrics.registry)

    async def scrape() -> bytes:
        gate = asyncio.Event()
        tasks = [asyncio.create_task(gate.wait()) for _ in range(3)]
        try:
            return generate_latest(metrics.registry)
        finally:
            gate.set()
            await asyncio.gather(*tasks)

    assert b"nimbus_asyncio_tasks 4.0" in asyncio.run(scrape())  # 3 + the scraping task


def test_disk_and_hook_gauges_are_exported_from_the_reading():
    """The spool filesystem's free/size bytes and each hook's failing flag become
    nimbus_spool_disk_free_bytes, nimbus_spool_disk_size_bytes, nimbus_log_hook_failing."""
    metrics = Metrics()
    metrics.attach_gauges(
        lambda: {
            "scheduled": {},
            "ready": {},
            "connections_in": {},
            "connections_out": {},
            "spool_bytes": 0,
            "spool_messages": 0,
            "spool_disk_free_bytes": 250,
            "spool_disk_size_bytes": 1000,
            "log_hooks": {"tsa:http://tsa:8008": {"pending": 3, "failing": 1}},
        }
    )
    text = generate_latest(metrics.registry).decode()
    assert "nimbus_spool_disk_free_bytes 250.0" in text
    assert "nimbus_spool_disk_size_bytes 1000.0" in text
    assert 'nimbus_log_hook_failing{hook="tsa:http://tsa:8008"} 1.0' in text


def test_disk_gauges_have_no_sample_before_the_first_reading():
    """Without a disk reading (the sampler has not run) the disk gauges carry no sample."""
    metrics = Metrics()
    metrics.attach_gauges(
        lambda: {
            "scheduled": {},
            "ready": {},
            "connections_in": {},
            "connections_out": {},
            "spool_bytes": 0,
            "spool_messages": 0,
        }
    )
    text = generate_latest(metrics.registry).decode()
    assert "\nnimbus_spool_disk_free_bytes " not in text
    assert "# TYPE nimbus_spool_disk_free_bytes gauge" in text


def test_known_label_values_are_exported_at_zero():
    """Reception, rejection and policy-reload counters have their known label values at 0
    before any event, so panels and rate() have a series from the first scrape."""
    text = generate_latest(Metrics().registry).decode()
    for line in (
        'nimbus_messages_received_total{listener="esmtp_listener"} 0.0',
        'nimbus_messages_received_total{listener="http_listener"} 0.0',
        'nimbus_messages_rejected_total{listener="esmtp_listener"} 0.0',
        'nimbus_policy_reloads_total{result="ok"} 0.0',
        'nimbus_policy_reloads_total{result="error"} 0.0',
    ):
        assert line in text
