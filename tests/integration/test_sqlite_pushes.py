"""SQLite writes a small push on the event loop itself (`Database.write_now`): the hop to the
connection's thread costs more than the write. What that must not change: a push waits for a
write lock held elsewhere as before, and a process that only pushes keeps the WAL bounded. And
the checkpoints that keep it bounded do not stop the pushes while they wait for their fsyncs."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from apalis_cli.codec import JsonCodec
from apalis_cli.task import Status
from apalis_sqlite import SqliteStore, connection

checkpoint = connection._checkpoint


async def test_a_push_waits_for_a_write_lock_held_by_another_connection(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    q = sqlite_store.backend("q", codec=JsonCodec())
    await q.push({"warm": 1})
    other = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    push = asyncio.create_task(q.push({"n": 1}))
    await asyncio.sleep(0.2)
    assert not push.done()
    other.execute("COMMIT")
    other.close()
    task = await q.get(await push)
    assert task is not None
    assert task.ctx.status is Status.PENDING


async def test_a_process_that_only_pushes_keeps_the_wal_bounded(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    q = sqlite_store.backend("q", codec=JsonCodec())
    for n in range(5000):
        await q.push({"n": n})
    # Several pages a push: without checkpoints the WAL would hold them all (about 100 MB).
    assert (tmp_path / "jobs.db-wal").stat().st_size < 16_000_000
    assert (await q.stats()).counts[Status.PENDING] == 5000


async def test_pushes_are_written_while_a_checkpoint_waits_for_its_fsyncs(
    sqlite_store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpoint's fsyncs take milliseconds (more on a busy disk): one that never ends here.
    release = threading.Event()

    def slow_checkpoint(conn: sqlite3.Connection) -> tuple[int, int]:
        release.wait(30)
        return checkpoint(conn)

    monkeypatch.setattr(connection, "_checkpoint", slow_checkpoint)
    q = sqlite_store.backend("q", codec=JsonCodec())
    try:
        async with asyncio.timeout(20):  # a guard: before, push 201 waited behind the checkpoint
            for n in range(300):  # a checkpoint starts after 200
                await q.push({"n": n})
    finally:
        release.set()
    assert (await q.stats()).counts[Status.PENDING] == 300
