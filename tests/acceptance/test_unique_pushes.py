"""Unique pushes under contention: 100,000 pushes of one unique key from 8 processes at once make
exactly one task, on the stores that have unique jobs and can be shared by processes (SQLite,
Redis, PostgreSQL, MariaDB, pgmq)."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apalis_cli.backend import Store, StoreSpec
from apalis_cli.codec import JsonCodec

from ..services import need_server

PROCESSES = 8
PUSHES = 100_000


def _store(spec: StoreSpec) -> Store:
    from apalis_cli.registry import Registry

    return Registry().store_class(spec.kind).from_spec(spec)


def _push_many(spec: StoreSpec, queue: str, count: int, start_at: float) -> list[str]:
    async def run() -> list[str]:
        store = _store(spec)
        await store.open()
        try:
            backend: Any = store.backend(queue, codec=JsonCodec())
            await asyncio.sleep(max(0.0, start_at - time.time()))  # every process starts at once
            ids = set()
            for n in range(count):
                ids.add(await backend.push({"n": n}, unique={"key": "report-7", "period": "1h"}))
            return sorted(ids)
        finally:
            await store.close()

    return asyncio.run(run())


@pytest.fixture(params=["sqlite", "redis", "postgres", "mysql", "pgmq"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[StoreSpec, str]]:
    """The store the processes share, and the queue they push to."""
    kind = request.param
    if kind == "sqlite":
        yield StoreSpec(name="u", kind="sqlite", url="sqlite:///unique.db", base_dir=tmp_path), "reports"
        return
    url = need_server("postgres" if kind == "pgmq" else kind)
    namespace = f"uniq{uuid.uuid4().hex[:8]}"
    if kind == "redis":
        yield StoreSpec(name="u", kind="redis", url=url, options={"namespace": namespace}), "reports"
        from ..conformance.stores.redis import drop_namespace

        asyncio.run(drop_namespace(url, namespace))
    elif kind == "postgres":
        yield StoreSpec(name="u", kind="postgres", url=url, options={"schema": namespace}), "reports"
        from ..conformance.stores.postgres import drop_schema

        asyncio.run(drop_schema(url, namespace))
    elif kind == "pgmq":
        from ..integration.pgmq_install import scratch_database

        # The session's scratch database (dropped at exit); pgmq queues are not namespaced.
        yield StoreSpec(name="u", kind="pgmq", url=scratch_database(url)), f"reports_{namespace}"
    else:
        from ..conformance.stores.mysql import admin_execute

        asyncio.run(admin_execute(url, f"CREATE DATABASE {namespace}"))
        yield StoreSpec(name="u", kind="mysql", url=url.rsplit("/", 1)[0] + f"/{namespace}"), "reports"
        asyncio.run(admin_execute(url, f"DROP DATABASE IF EXISTS {namespace}"))


@pytest.mark.timeout(900)
def test_100k_duplicate_pushes_from_8_processes_make_one_task(target: tuple[StoreSpec, str]) -> None:
    spec, queue = target

    async def prepared() -> None:
        store = _store(spec)
        await store.open()  # the schema exists before the race starts
        await store.close()

    asyncio.run(prepared())
    start_at = time.time() + 2.0
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
        answers = pool.starmap(_push_many, [(spec, queue, PUSHES // PROCESSES, start_at) for _ in range(PROCESSES)])
    elapsed = time.perf_counter() - started - 2.0

    async def stored() -> int:
        store = _store(spec)
        await store.open()
        try:
            backend: Any = store.backend(queue, codec=JsonCodec())
            stats = await backend.stats()
            return sum(count or 0 for count in stats.counts.values())
        finally:
            await store.close()

    print(
        f"{spec.kind}: {PUSHES} unique pushes from {PROCESSES} processes in {elapsed:.1f}s ({PUSHES / elapsed:,.0f}/s)"
    )
    assert asyncio.run(stored()) == 1, "exactly one task holds the key"
    assert len({task_id for ids in answers for task_id in ids}) == 1, "every push answered with that task's id"
