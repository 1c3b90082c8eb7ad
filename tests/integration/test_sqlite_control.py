"""The SQLite control plane across processes: two stores on one file stand for two processes
(each has its own connection, watch and doorbells), so what one does reaches the other only
through the file: the WAL watch and the doorbells. The shared behaviour is in the conformance
suite; here, what only SQLite's way of telling can get wrong."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from apalis_cli.codec import JsonCodec
from apalis_cli.control import CancelState
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker
from apalis_sql import load_migrations
from apalis_sqlite import SqliteStore
from apalis_sqlite.connection import split_statements
from apalis_sqlite.queue import SqliteQueue

from .conftest import make_sqlite_store

SHARED = "sqlite:///shared.db"
"""The file every store of a test opens, as processes sharing one database would."""


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteStore]]:
    """Two stores on one file, as two processes would have."""
    mine, theirs = make_sqlite_store(tmp_path, SHARED), make_sqlite_store(tmp_path, SHARED)
    await mine.open()
    await theirs.open()
    yield mine, theirs
    await mine.close()
    await theirs.close()


def queue(of: SqliteStore) -> SqliteQueue:
    return of.backend("q", codec=JsonCodec(), max_attempts=3)


async def until(check: Any, what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.002)


async def test_a_cancel_from_another_process_stops_the_run_within_milliseconds(
    two: tuple[SqliteStore, SqliteStore],
) -> None:
    mine, theirs = two
    started: list[float] = []
    stopped: list[float] = []

    async def long(args: Any, task: Task[bytes]) -> None:
        started.append(time.monotonic())
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.append(time.monotonic())
            raise

    # A heartbeat a minute apart: only the doorbell can tell this worker in time.
    worker = Worker(name="w", backend=queue(mine), handler=long, keep_alive=60.0, poll_interval=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        task_id = await queue(theirs).push({"n": 1})
        await until(lambda: started, "the run to start")
        asked = time.monotonic()
        result = await queue(theirs).cancel(task_id, "not wanted")
        assert result.state is CancelState.REQUESTED
        await until(lambda: stopped, "the handler to be cancelled", within=5)
        assert stopped[0] - asked < 0.5, "told by the heartbeat, not by the doorbell"
        found: list[Task[bytes] | None] = [None]

        async def ended() -> bool:
            found[0] = await queue(theirs).get(task_id)
            return found[0] is not None and found[0].ctx.status.is_final

        deadline = time.monotonic() + 5
        while not await ended():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert found[0] is not None
        assert (found[0].ctx.status, found[0].ctx.last_error) == (Status.CANCELLED, "not wanted")
    finally:
        stop.set()
        await running


async def test_a_waiter_in_another_process_is_woken_by_the_done_doorbell(
    two: tuple[SqliteStore, SqliteStore],
) -> None:
    mine, theirs = two
    returned: list[float] = []

    async def slow(args: Any, task: Task[bytes]) -> int:
        await asyncio.sleep(0.3)
        returned.append(time.monotonic())
        return 42

    task_id = await queue(theirs).push({"n": 1})
    waiting = asyncio.create_task(queue(theirs).wait(task_id, timeout=10))
    worker = Worker(name="w", backend=queue(mine), handler=slow, keep_alive=60.0, poll_interval=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        task = await waiting
        woke = time.monotonic()
        assert task is not None
        assert (task.ctx.status, task.ctx.result) == (Status.DONE, "42")
        # The waiter reads again every second anyway: well under that, the bell woke it.
        assert woke - returned[0] < 0.2
    finally:
        stop.set()
        await running


async def test_without_a_watch_the_heartbeat_tells_the_worker_of_a_cancel(tmp_path: Path) -> None:
    mine, theirs = make_sqlite_store(tmp_path, SHARED, watch=False), make_sqlite_store(tmp_path, SHARED, watch=False)
    await mine.open()
    await theirs.open()
    stopped: list[float] = []
    started = asyncio.Event()

    async def long(args: Any, task: Task[bytes]) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.append(time.monotonic())
            raise

    worker = Worker(name="w", backend=queue(mine), handler=long, keep_alive=0.2, poll_interval=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        task_id = await queue(theirs).push({"n": 1})
        await asyncio.wait_for(started.wait(), 10)
        assert (await queue(theirs).cancel(task_id)).state is CancelState.REQUESTED
        await until(lambda: stopped, "the heartbeat to tell the worker", within=5)
    finally:
        stop.set()
        await running
        await mine.close()
        await theirs.close()


async def test_a_pause_by_another_process_holds_this_process_claims(two: tuple[SqliteStore, SqliteStore]) -> None:
    mine, theirs = two
    seen: list[str] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        seen.append(task.id)

    await queue(theirs).pause()
    task_id = await queue(theirs).push({"n": 1})
    worker = Worker(name="w", backend=queue(mine), handler=handler, keep_alive=0.2, poll_interval=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.sleep(0.5)
        assert seen == []
        assert await queue(mine).paused()
        await queue(theirs).resume()
        await until(lambda: seen == [task_id], "the task to run once resumed", within=5)
    finally:
        stop.set()
        await running


async def test_a_version_2_database_is_migrated_keeping_its_tasks(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    for migration in load_migrations("apalis_sqlite", {"prefix": "apalis_"})[:2]:
        for statement in split_statements(migration.sql):
            conn.execute(statement)
    conn.execute("CREATE TABLE apalis_schema_version (id INTEGER PRIMARY KEY, version INTEGER, migrated_at REAL)")
    conn.execute("INSERT INTO apalis_schema_version VALUES (1, 2, 0)")
    conn.executemany(
        "INSERT INTO apalis_tasks (id, queue, payload, status, run_at, created_at, last_error) "
        "VALUES (?, 'q', CAST('{}' AS BLOB), ?, 0, 0, ?)",
        [("old-pending", "pending", None), ("old-killed", "killed", "disk full")],
    )
    conn.commit()
    conn.close()

    migrated = make_sqlite_store(tmp_path, SHARED)
    await migrated.open()
    try:
        q = queue(migrated)
        killed = await q.get("old-killed")
        assert killed is not None
        assert (killed.ctx.status, killed.ctx.last_error) == (Status.KILLED, "disk full")
        assert (await q.cancel("old-pending", "gone")).state is CancelState.CANCELLED
        cancelled = await q.get("old-pending")
        assert cancelled is not None
        assert cancelled.ctx.status is Status.CANCELLED
        assert not await q.paused()
    finally:
        await migrated.close()
    with sqlite3.connect(path) as check:
        indexes = {row[0] for row in check.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"apalis_tasks_ready", "apalis_tasks_key", "apalis_tasks_by_status"} <= indexes
        latest = load_migrations("apalis_sqlite")[-1].version  # 3 and the ones after it
        assert check.execute("SELECT version FROM apalis_schema_version").fetchone() == (latest,)
    check.close()


async def test_bulk_actions_go_batch_by_batch_up_to_their_limit(tmp_path: Path) -> None:
    from apalis_cli.control import BulkAction, BulkFilter

    one = make_sqlite_store(tmp_path, SHARED)
    await one.open()
    try:
        q = queue(one)
        count = 25_000  # two and a half batches of one statement each
        await q.push_bulk([{"n": 1}] * count, delay=3600)
        killed = frozenset({Status.KILLED})

        assert await q.bulk(BulkAction.KILL, BulkFilter(statuses=frozenset({Status.PENDING}))) == count
        assert await q.bulk(BulkAction.RETRY, BulkFilter(statuses=killed, limit=12_345)) == 12_345
        assert await q.bulk(BulkAction.RETRY, BulkFilter(statuses=killed), dry_run=True) == count - 12_345
        counts = (await q.stats()).counts
        assert (counts[Status.PENDING], counts[Status.KILLED]) == (12_345, count - 12_345)
    finally:
        await one.close()


async def test_a_second_cancel_answers_that_the_task_is_already_cancelled(two: tuple[SqliteStore, SqliteStore]) -> None:
    from apalis_cli.control import CancelResult

    q = queue(two[0])
    task_id = await q.push({"a": 1}, delay=60)
    assert await q.cancel(task_id, "first") == CancelResult.cancelled()
    assert await q.cancel(task_id, "again") == CancelResult.already_final(Status.CANCELLED)
    assert await q.cancel("no-such-task") == CancelResult.not_found()
