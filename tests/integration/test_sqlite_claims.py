"""An idle SQLite worker asks whether anything is ready before it claims: a claim that finds
nothing takes no write lock, so a push from another process never waits for an idle worker's
empty claims (SQLite's busy handler makes such a wait a millisecond at least)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_sqlite import SqliteStore


def context() -> WorkerContext:
    return WorkerContext(id="w1", name="w1", queue="q", concurrency=10, free_slots=lambda: 10)


async def test_a_claim_that_finds_nothing_takes_no_write_lock(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    q = sqlite_store.backend("q", codec=JsonCodec())
    other = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    stream = q.poll_compact(context())
    try:
        async with asyncio.timeout(3):  # a guard: before, the claim waited for the lock (busy_timeout 5 s)
            assert await anext(stream) is None  # idle at once
    finally:
        other.execute("COMMIT")
        other.close()
        await stream.aclose()  # type: ignore[attr-defined]
