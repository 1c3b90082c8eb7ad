"""Unique pushes under contention: 100,000 pushes of one unique key from 8 processes at once make
exactly one task, on every store that has unique jobs and can be shared by processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from pathlib import Path

import pytest
from apalis_cli.backend import StoreSpec
from apalis_cli.codec import JsonCodec
from apalis_sqlite import SqliteStore

PROCESSES = 8
PUSHES = 100_000


def _push_many(url: str, base_dir: str, count: int, start_at: float) -> list[str]:
    async def run() -> list[str]:
        store = SqliteStore.from_spec(StoreSpec(name="u", kind="sqlite", url=url, base_dir=Path(base_dir)))
        await store.open()
        try:
            backend = store.backend("reports", codec=JsonCodec())
            await asyncio.sleep(max(0.0, start_at - time.time()))  # every process starts at once
            ids = set()
            for n in range(count):
                ids.add(await backend.push({"n": n}, unique={"key": "report-7", "period": "1h"}))
            return sorted(ids)
        finally:
            await store.close()

    return asyncio.run(run())


@pytest.mark.timeout(900)
def test_100k_duplicate_pushes_from_8_processes_make_one_task(tmp_path: Path) -> None:
    url = "sqlite:///unique.db"
    spec = StoreSpec(name="u", kind="sqlite", url=url, base_dir=tmp_path)

    async def prepared() -> None:
        store = SqliteStore.from_spec(spec)
        await store.open()  # the schema exists before the race starts
        await store.close()

    asyncio.run(prepared())
    start_at = time.time() + 2.0
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
        answers = pool.starmap(
            _push_many, [(url, str(tmp_path), PUSHES // PROCESSES, start_at) for _ in range(PROCESSES)]
        )
    elapsed = time.perf_counter() - started - 2.0

    async def stored() -> int:
        store = SqliteStore.from_spec(spec)
        await store.open()
        try:
            stats = await store.backend("reports", codec=JsonCodec()).stats()
            return sum(count or 0 for count in stats.counts.values())
        finally:
            await store.close()

    print(f"{PUSHES} unique pushes from {PROCESSES} processes in {elapsed:.1f}s ({PUSHES / elapsed:,.0f}/s)")
    assert asyncio.run(stored()) == 1, "exactly one task holds the key"
    assert len({task_id for ids in answers for task_id in ids}) == 1, "every push answered with that task's id"
