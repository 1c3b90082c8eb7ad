"""A push hands its task to a worker listed idle (PostgreSQL, Redis, MariaDB). A worker killed
with SIGKILL while idle stays listed until its listing lapses, so the next push may be handed to
it: the task then comes back through the orphan sweep. It never reached a handler, so that trip
is not an attempt: a task allowed one attempt still runs, once, and ends done."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest
from apalis_cli.backend import Store
from apalis_cli.codec import JsonCodec
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker
from apalis_mysql import MysqlStore
from apalis_postgres import PostgresStore
from apalis_redis import RedisStore

from ..conformance.stores.mysql import admin_execute
from .running import run_until

STORE_KINDS = ("postgres", "redis", "mysql")

IDLE_WORKER = """
import asyncio, json, sys
from apalis_cli.backend import StoreSpec
from apalis_cli.codec import JsonCodec
from apalis_cli.events import Idle
from apalis_cli.registry import Registry
from apalis_cli.worker import Worker

async def main(kind, url, options, queue):
    store = Registry().store_class(kind).from_spec(StoreSpec(name="t", kind=kind, url=url, options=json.loads(options)))
    await store.open()

    async def handler(args, task):
        print("ran", task.id, flush=True)

    def on_event(event):
        if isinstance(event, Idle):
            print("idle", flush=True)

    worker = Worker(name="doomed", backend=store.backend(queue, codec=JsonCodec(), max_attempts=1),
                    handler=handler, keep_alive=0.2, stale_after=0.6, poll_interval=2.0, on_event=[on_event])
    await worker.run(asyncio.Event())

asyncio.run(main(*sys.argv[1:]))
"""


def spec_of(store: Store) -> tuple[str, str, dict[str, Any]]:
    """The kind, URL and options that open `store`'s place again (in another process)."""
    if isinstance(store, PostgresStore):
        return "postgres", store.config.url, {"schema": store.config.schema}
    if isinstance(store, RedisStore):
        return "redis", store.config.url, {"namespace": store.config.namespace}
    assert isinstance(store, MysqlStore)
    return "mysql", store.config.url, {}


async def killed_while_idle(store: Store, queue: str) -> None:
    """A worker of `queue` in another process, killed with SIGKILL once listed idle."""
    kind, url, options = spec_of(store)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", IDLE_WORKER, kind, url, json.dumps(options), queue, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.decode().split() == ["idle"]  # its claim found nothing: it is listed idle
    finally:
        proc.kill()
        await proc.wait()


async def handed_to_a_killed_worker(store: Store, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """A queue whose one worker (another process) was killed with SIGKILL while listed idle, and
    the id of a task (one attempt allowed) a push then handed to it. On MariaDB the push takes
    such a task back once it sees the listener's connection end after its KILL (`handing`):
    here that look misses, as it may on a server too loaded to end the connection in time."""
    queue = "handed-to-killed"
    backend: Any = store.backend(queue, codec=JsonCodec(), max_attempts=1)
    if isinstance(store, MysqlStore):

        def missed(*args: Any) -> None:
            pass

        monkeypatch.setattr(store.database, "_watch", missed)
    await killed_while_idle(store, queue)
    task_id = await backend.push({"x": 1})
    handed = await backend.get(task_id)
    assert handed is not None
    assert handed.ctx.status is Status.RUNNING  # handed to the dead worker
    return backend, task_id


async def runs_once_and_is_done(backend: Any, task_id: str) -> None:
    """Another worker runs the task once, as its first attempt, and it ends done."""
    seen: list[tuple[str, int]] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        seen.append((task.id, task.ctx.attempts))

    worker = Worker(name="w", backend=backend, handler=handler, keep_alive=0.2, stale_after=0.6, poll_interval=0.05)
    await run_until(worker, lambda: bool(seen), within=20)
    assert seen == [(task_id, 1)]
    done = await backend.get(task_id)
    assert done is not None
    assert done.ctx.status is Status.DONE


async def test_a_task_handed_to_a_killed_idle_worker_is_not_an_attempt(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, task_id = await handed_to_a_killed_worker(store, monkeypatch)
    await runs_once_and_is_done(backend, task_id)


async def test_a_killed_workers_listing_outlives_its_lapse_until_the_sweep(
    mysql_store: MysqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MariaDB drops the rows of listings that lapsed a minute ago as other workers list
    themselves; a dead worker's row (what was handed to it) stays until the orphan sweep has
    forgotten the worker, or a stale_after past a minute would count the hand-over again."""
    backend, task_id = await handed_to_a_killed_worker(mysql_store, monkeypatch)
    table = f"{mysql_store.config.database}.{mysql_store.config.table_prefix}idle"
    await admin_execute(mysql_store.config.url, f"UPDATE {table} SET until = until - 120")  # lapsed long ago
    await runs_once_and_is_done(backend, task_id)
