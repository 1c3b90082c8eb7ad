"""Several processes on one SQLite file: daemons draining while another process pushes.

Every task must run exactly once (done, attempts 1) although the claims of two worker processes
and the inserts of a producer race for the same write lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from apalis_cli.backend import StoreSpec
from apalis_cli.codec import JsonCodec
from apalis_cli.task import Status
from apalis_cli.worker import Worker
from apalis_sqlite import SqliteStore
from apalis_sqlite.watch import WalWatch

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from apalis_cli.backend import StoreSpec
    from apalis_cli.codec import JsonCodec
    from apalis_cli.worker import Worker
    from apalis_sqlite import SqliteStore

    async def main(role: str, count: int) -> None:
        store = SqliteStore.from_spec(StoreSpec(name="m", kind="sqlite", url="sqlite:///shared.db", base_dir=Path(".")))
        await store.open()
        queue = store.backend("shared", codec=JsonCodec(), max_attempts=3)
        try:
            if role == "push":
                for start in range(0, count, 50):  # many small transactions, racing the claims
                    await queue.push_bulk(range(start, start + 50))
                    await queue.push(-start - 1)
                return

            async def handler(args, task):
                await asyncio.sleep(0.005)
                return os.getpid()

            worker = Worker(name=role, backend=queue, handler=handler, concurrency=5, poll_interval=0.02)
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(float(count), stop.set)
            await worker.run(stop)
        finally:
            await store.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def start(tmp_path: Path, role: str, count: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, role, str(count)], cwd=tmp_path, stderr=subprocess.PIPE)


async def finish(process: subprocess.Popen[bytes]) -> None:
    _, err = await asyncio.to_thread(process.communicate, timeout=60)
    assert process.returncode == 0, err.decode()


async def test_two_daemons_and_a_producer_share_one_file(tmp_path: Path) -> None:
    store = SqliteStore.from_spec(StoreSpec(name="m", kind="sqlite", url="sqlite:///shared.db", base_dir=tmp_path))
    await store.open()  # the schema exists before the processes race
    queue = store.backend("shared", codec=JsonCodec())
    await queue.push_bulk(range(10_000, 10_500))
    try:
        workers = [start(tmp_path, "one", 5), start(tmp_path, "two", 5)]
        producer = start(tmp_path, "push", 1000)
        await finish(producer)
        for worker in workers:
            await finish(worker)

        counts = (await queue.stats()).counts
        assert counts[Status.DONE] == 500 + 1000 + 20, counts
        tasks = await queue.list_tasks(limit=10_000)
        assert {t.ctx.attempts for t in tasks} == {1}  # exactly once each
        assert {t.ctx.result for t in tasks} <= {str(w.pid) for w in workers}  # a result is its daemon's pid
        assert await queue.workers() == []  # both said farewell
    finally:
        await store.close()


async def test_the_wal_watch_sees_writes_of_another_connection(tmp_path: Path) -> None:
    store = SqliteStore.from_spec(StoreSpec(name="m", kind="sqlite", url="sqlite:///w.db", base_dir=tmp_path))
    await store.open()  # the WAL file exists from here on
    changed = asyncio.Event()
    watch = WalWatch(str(tmp_path / "w.db"), changed.set)
    try:
        assert watch.start()
        other = sqlite3.connect(tmp_path / "w.db")
        with other:
            other.execute("CREATE TABLE other_writer (x INTEGER)")
        other.close()
        await asyncio.wait_for(changed.wait(), 5)
    finally:
        watch.stop()
        await store.close()
    assert not watch.active


async def test_a_push_through_another_connection_wakes_an_idle_worker(tmp_path: Path) -> None:
    spec = StoreSpec(name="m", kind="sqlite", url="sqlite:///shared.db", base_dir=tmp_path)
    mine, theirs = SqliteStore.from_spec(spec), SqliteStore.from_spec(spec)  # as if in two processes
    await mine.open()
    await theirs.open()
    seen: list[float] = []

    async def handler(args: object, task: object) -> None:
        seen.append(time.monotonic())

    queue = mine.backend("shared", codec=JsonCodec())
    worker = Worker(name="idle", backend=queue, handler=handler, keep_alive=60.0, poll_interval=30.0)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.sleep(1.5)  # idle: the poll back-off now waits seconds between polls
        pushed = time.monotonic()
        await theirs.backend("shared", codec=JsonCodec()).push("hello")
        while not seen:
            assert time.monotonic() - pushed < 10, "never ran"
            await asyncio.sleep(0.005)
        assert seen[0] - pushed < 0.5  # woken by the watch, not by the next poll
    finally:
        stop.set()
        await running
        await mine.close()
        await theirs.close()
