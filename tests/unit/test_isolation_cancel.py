"""Cancel of a task whose handler runs in a child process (`isolation = "process"`): the child
is killed (SIGTERM, then SIGKILL after the grace period), the task ends cancelled with the
reason and is not retried, and a fresh child takes the slot."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from apalis_cli.backend import StoreSpec
from apalis_cli.codec import JsonCodec
from apalis_cli.events import Event, TaskFinished
from apalis_cli.isolation import PoolSettings, ProcessPool
from apalis_cli.memory import MemoryStore
from apalis_cli.task import Status
from apalis_cli.worker import Worker

from ..isolation_children import FAST, HANDLERS, gone


async def test_cancel_kills_the_child_running_the_task(tmp_path: Path) -> None:
    (tmp_path / "iso_handlers.py").write_text(HANDLERS)
    pool = ProcessPool(PoolSettings(handler="iso_handlers:work", base_dir=tmp_path, size=1, kill_grace=0.5))
    store = MemoryStore.from_spec(StoreSpec(name="m", kind="memory", url="memory://"))
    queue = store.backend("iso", codec=JsonCodec(), max_attempts=3)
    finished: dict[str, TaskFinished] = {}

    def on_event(event: Event) -> None:
        if isinstance(event, TaskFinished):
            finished[event.task_id] = event

    worker = Worker(
        name="iso",
        backend=queue,
        handler=pool.run,
        poll_interval=0.05,
        keep_alive=0.2,
        backoff=FAST,
        on_event=[on_event],
    )
    await pool.start()
    stop = asyncio.Event()
    running = asyncio.ensure_future(worker.run(stop))
    try:
        for do in ("sleep", "stubborn"):  # the second ignores SIGTERM: SIGKILL after the grace
            pidfile = tmp_path / f"{do}.pid"
            task_id = await queue.push({"do": do, "pidfile": str(pidfile)})
            while not pidfile.exists() or not pidfile.read_text():  # noqa: ASYNC110 - written by the child
                await asyncio.sleep(0.01)
            pid = int(pidfile.read_text())
            begun = time.monotonic()
            assert (await queue.cancel(task_id, "stop that")).state == "requested"
            task = await queue.wait(task_id, timeout=10)
            took = time.monotonic() - begun
            assert task is not None
            assert (task.ctx.status, task.ctx.last_error) == (Status.CANCELLED, "stop that")
            while task_id not in finished:  # noqa: ASYNC110 - the run's event follows its ack
                await asyncio.sleep(0.01)
            assert finished[task_id].outcome == "cancel"
            assert gone(pid), "the child running the cancelled task still lives"
            assert took < (3.0 if do == "sleep" else 0.5 + 3.0)
        after = await queue.push({"do": "slow", "seconds": 0, "pidfile": str(tmp_path / "after.pid")})
        done = await queue.wait(after, timeout=30)
        assert done is not None
        assert done.ctx.status is Status.DONE  # a fresh child took the slot
        while after not in finished:  # noqa: ASYNC110 - the run's event follows its ack
            await asyncio.sleep(0.01)
        assert len(finished) == 3, "a cancelled task was run again"
        assert pool.recycled["killed"] == 2
    finally:
        stop.set()
        await running
        await pool.close()
