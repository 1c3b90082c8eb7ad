"""No commit of a SQLite store copies the WAL back: a claim, an acknowledgement or a push that
took the WAL past SQLite's autocheckpoint (1,000 frames) waited for that checkpoint's two fsyncs
(4 ms here; a lone task's latency p99). The copies run on a connection and thread of their own
(`connection._Copier`), and the WAL still starts afresh when only a worker writes."""

from __future__ import annotations

import asyncio
import sqlite3
import struct
import threading
from pathlib import Path

import pytest
from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.service import Outcome
from apalis_cli.task import Status
from apalis_sqlite import SqliteStore, connection

from .conftest import make_sqlite_store

checkpoint = connection._checkpoint


def context() -> WorkerContext:
    return WorkerContext(id="w1", name="w1", queue="q", concurrency=50, free_slots=lambda: 50)


def wal_index(path: Path) -> tuple[int, int]:
    """(frames in the WAL, frames copied back into the database), from the WAL index."""
    data = (path.parent / (path.name + "-shm")).read_bytes()[:100]
    return struct.unpack_from("=I", data, 16)[0], struct.unpack_from("=I", data, 96)[0]


async def drain(store: SqliteStore, tasks: int) -> None:
    """Push `tasks` in bulks, then claim and acknowledge them all, as a worker does."""
    q = store.backend("q", codec=JsonCodec())
    for start in range(0, tasks, 100):
        await q.push_bulk([{"n": n} for n in range(start, start + 100)])
    stream = q.poll_compact(context())
    done = 0
    try:
        while done < tasks:
            task = await anext(stream)
            if task is None:
                continue
            await q.ack_batch([(task, Outcome.done(None))])
            done += 1
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    assert (await q.stats()).counts[Status.DONE] == tasks


async def test_a_workers_commits_leave_the_copy_to_the_copier(
    sqlite_store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def stuck_checkpoint(conn: sqlite3.Connection) -> tuple[int, int]:
        release.wait(30)  # a copy whose fsyncs never end, here
        return checkpoint(conn)

    monkeypatch.setattr(connection, "_checkpoint", stuck_checkpoint)
    try:
        async with asyncio.timeout(20):  # a guard: no write may wait for the stuck copy
            await drain(sqlite_store, 300)
        frames, copied = wal_index(tmp_path / "jobs.db")
        assert frames > 1000  # past SQLite's autocheckpoint: a commit copied it back before
        assert copied == 0
    finally:
        release.set()


async def test_a_worker_alone_keeps_the_wal_bounded(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    await drain(sqlite_store, 3000)
    # Without copies the WAL would hold the pages of every push, claim and acknowledgement.
    assert (tmp_path / "jobs.db-wal").stat().st_size < 16_000_000
    frames, _ = wal_index(tmp_path / "jobs.db")
    assert frames < 3000


async def test_a_pusher_and_a_worker_of_two_stores_keep_the_wal_bounded(tmp_path: Path) -> None:
    # Two stores on one file write at the same time, as two processes would: each copies the WAL
    # back and holds its own writes for a copy that restarts it, while the other writes on.
    pusher, worker = make_sqlite_store(tmp_path), make_sqlite_store(tmp_path)
    await pusher.open()
    await worker.open()
    try:
        q, w = pusher.backend("q", codec=JsonCodec()), worker.backend("q", codec=JsonCodec())
        tasks = 2500

        async def push() -> None:
            for n in range(tasks):
                await q.push({"n": n})

        async def run() -> None:
            stream, done = w.poll_compact(context()), 0
            try:
                while done < tasks:
                    task = await anext(stream)
                    if task is not None:
                        await w.ack_batch([(task, Outcome.done(None))])
                        done += 1
            finally:
                await stream.aclose()  # type: ignore[attr-defined]

        async with asyncio.timeout(60):
            await asyncio.gather(push(), run())
        stats = await q.stats()
        assert stats.counts[Status.DONE] == tasks
        assert {t.ctx.attempts for t in await q.list_tasks(limit=tasks)} == {1}
        assert (tmp_path / "jobs.db-wal").stat().st_size < 16_000_000
    finally:
        await pusher.close()
        await worker.close()
