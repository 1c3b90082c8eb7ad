"""What is special to the SQLite store: URLs and options, the schema and its version, claims in
priority order, the lease guard, the heartbeat's sweeps, the inspector, wake-ups, reconnects."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
from apalis_cli.backend import StoreSpec, WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.errors import BackendError, ConfigError
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task
from apalis_sql import load_migrations
from apalis_sqlite import SqliteStore
from apalis_sqlite.queue import SqliteQueue

STORE_KINDS = ("sqlite",)
"""The store kind(s) the tests taking `store` run on (tests/integration/conftest.py)."""


def spec(tmp_path: Path, url: str = "sqlite:///jobs.db", **options: Any) -> StoreSpec:
    return StoreSpec(name="main", kind="sqlite", url=url, options=options, base_dir=tmp_path)


def queue(store: SqliteStore, name: str = "q", max_attempts: int = 3) -> SqliteQueue:
    return store.backend(name, codec=JsonCodec(), max_attempts=max_attempts)


def context(worker_id: str = "w1", running: Collection[str] = (), **settings: Any) -> WorkerContext:
    return WorkerContext(
        id=worker_id,
        name=worker_id,
        queue="q",
        concurrency=100,
        free_slots=lambda: 100,
        running=lambda: running,
        **settings,
    )


async def claim(q: SqliteQueue, worker: WorkerContext) -> list[Task[bytes]]:
    """Everything one poll hands out before it reports idle."""
    stream = q.poll_compact(worker)
    got: list[Task[bytes]] = []
    try:
        async for task in stream:
            if task is None:
                break
            got.append(task)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return got


async def beat(q: SqliteQueue, worker: WorkerContext) -> None:
    stream = q.heartbeat(worker)
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]


# -- configuration -------------------------------------------------------------------------


def test_urls_resolve_against_the_config_folder(tmp_path: Path) -> None:
    assert SqliteStore.from_spec(spec(tmp_path, "sqlite:///data/jobs.db")).config.path == str(tmp_path / "data/jobs.db")
    assert SqliteStore.from_spec(spec(tmp_path, "sqlite:////var/tmp/x.db")).config.path == "/var/tmp/x.db"
    assert SqliteStore.from_spec(spec(tmp_path, "sqlite://:memory:")).config.in_memory


@pytest.mark.parametrize(
    "url", ["postgresql://x/y", "sqlite://", "sqlite:///", "sqlite://host/x.db", "sqlite:///x.db?mode=ro", "sqlite:x"]
)
def test_bad_urls_name_the_url_key(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SqliteStore.from_spec(spec(tmp_path, url))
    assert caught.value.key == "url"


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"tabel_prefix": "x_"}, "tabel_prefix"),
        ({"table_prefix": "bad-prefix"}, "table_prefix"),
        ({"table_prefix": "x; DROP TABLE t"}, "table_prefix"),
        ({"busy_timeout": "soon"}, "busy_timeout"),
        ({"synchronous": "off"}, "synchronous"),
    ],
)
def test_bad_options_name_their_key(tmp_path: Path, options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SqliteStore.from_spec(spec(tmp_path, **options))
    assert caught.value.key == key


# -- schema ----------------------------------------------------------------------------------


async def test_open_makes_a_wal_database_with_strict_tables_and_a_version(tmp_path: Path) -> None:
    first = SqliteStore.from_spec(spec(tmp_path, "sqlite:///sub/dir/jobs.db", table_prefix="t_"))
    await first.open()
    await first.open()  # idempotent
    second = SqliteStore.from_spec(spec(tmp_path, "sqlite:///sub/dir/jobs.db", table_prefix="t_"))
    await second.open()  # a second process would do the same: nothing to migrate
    await first.close()
    await second.close()

    with sqlite3.connect(tmp_path / "sub/dir/jobs.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        latest = load_migrations("apalis_sqlite")[-1].version
        assert conn.execute("SELECT version FROM t_schema_version").fetchall() == [(latest,)]
        assert conn.execute("SELECT strict FROM pragma_table_list WHERE name = 't_tasks'").fetchone() == (1,)
        with pytest.raises(sqlite3.IntegrityError):  # STRICT: a text is no time
            conn.execute(
                "INSERT INTO t_tasks (id, queue, payload, status, run_at, created_at) "
                "VALUES ('x', 'q', x'00', 'pending', 'tomorrow', 0)"
            )
    conn.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    store = SqliteStore.from_spec(spec(tmp_path))
    await store.open()
    await store.close()
    conn = sqlite3.connect(tmp_path / "jobs.db")
    with conn:
        conn.execute("UPDATE apalis_schema_version SET version = 99")
    conn.close()
    again = SqliteStore.from_spec(spec(tmp_path))
    with pytest.raises(BackendError, match="schema version 99"):
        await again.open()
    await again.close()


async def test_table_prefixes_keep_stores_apart(tmp_path: Path) -> None:
    one = SqliteStore.from_spec(spec(tmp_path, table_prefix="one_"))
    two = SqliteStore.from_spec(spec(tmp_path, table_prefix="two_"))
    await one.open()
    await two.open()
    try:
        await queue(one).push("a")
        assert (await queue(two).stats()).counts[Status.PENDING] == 0
        assert (await queue(one).stats()).counts[Status.PENDING] == 1
    finally:
        await one.close()
        await two.close()


async def test_a_closed_store_says_so(store: SqliteStore) -> None:
    await store.close()
    with pytest.raises(BackendError, match="closed"):
        await queue(store).push(1)
    await store.open()
    assert await queue(store).push(1)


# -- claims and acknowledgements ---------------------------------------------------------------


async def test_claims_come_in_priority_then_time_order(store: SqliteStore) -> None:
    q = queue(store)
    now = time.time()
    low = await q.push("low", run_at=now - 10)
    high = await q.push("high", priority=5, run_at=now - 1)
    early = await q.push("early", run_at=now - 20)
    await q.push("later", run_at=now + 60)
    tasks = await claim(q, context())
    assert [t.id for t in tasks] == [high, early, low]
    assert all(t.ctx.status is Status.RUNNING and t.ctx.lock_by == "w1" and t.ctx.attempts == 1 for t in tasks)


async def test_an_ack_applies_only_under_the_same_lock(store: SqliteStore) -> None:
    q = queue(store)
    task_id = await q.push({"n": 1})
    (task,) = await claim(q, context())
    stolen = Task(id=task.id, args=task.args, ctx=task.ctx.__class__(queue="q", lock_by="someone-else"))
    await q.ack_batch([(stolen, Outcome.done("no"))])
    assert (await q.get(task_id)).ctx.status is Status.RUNNING  # type: ignore[union-attr]
    await q.ack_batch([(task, Outcome.done({"ok": [1, 2]}))])
    done = await q.get(task_id)
    assert done is not None
    assert done.ctx.status is Status.DONE
    assert done.ctx.result == '{"ok":[1,2]}'
    assert done.ctx.lock_by is None
    assert done.ctx.done_at


async def test_each_outcome_kind_in_one_batch(store: SqliteStore) -> None:
    q = queue(store)
    ids = await q.push_bulk(["done", "retry", "kill", "release"])
    tasks = {t.id: t for t in await claim(q, context())}
    later = time.time() + 60
    await q.ack_batch(
        [
            (tasks[ids[0]], Outcome.done(1)),
            (tasks[ids[1]], Outcome.retry("flaky", later)),
            (tasks[ids[2]], Outcome.kill("broken")),
            (tasks[ids[3]], Outcome.release()),
        ]
    )
    got = [await q.get(i) for i in ids]
    assert [t.ctx.status for t in got if t] == [Status.DONE, Status.FAILED, Status.KILLED, Status.PENDING]
    assert got[1]
    assert got[1].ctx.run_at == pytest.approx(later)
    assert got[1].ctx.attempts == 1
    assert got[2]
    assert got[2].ctx.last_error == "broken"
    assert got[3]
    assert got[3].ctx.attempts == 0


async def test_idempotency_keys_within_a_batch_and_across_pushes(store: SqliteStore) -> None:
    q = queue(store)
    first = await q.push("a", idempotency_key="k1")
    assert await q.push("b", idempotency_key="k1") == first
    other_queue = await queue(store, "other").push("c", idempotency_key="k1")
    assert other_queue != first  # keys are per queue
    from apalis_cli.sink import new_task

    made = [new_task(b'"x"', default_max_attempts=1, idempotency_key=key) for key in ("k2", "k2", "k1", None)]
    ids = await q.enqueue(made)
    assert ids[0] == ids[1] == made[0].id
    assert ids[2] == first
    assert ids[3] == made[3].id
    assert (await q.stats()).counts[Status.PENDING] == 3
