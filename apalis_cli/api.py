"""Pushing tasks from application code: the same queue-bound `TaskSink` the CLI uses.

    async with apalis_cli.open_sink("jobs.toml", worker="emails") as sink:
        await sink.push({"to": "ada@example.com"}, delay=30)

    sink = apalis_cli.open_sink_sync("jobs.toml", worker="emails")   # e.g. once per Django process
    sink.push({"to": "ada@example.com"})

    task = await sink.push({"to": "ada@example.com"}, wait=True, timeout=30)  # once it has ended
    task = await sink.wait(task_id, timeout=30)                            # None on timeout

The sync twin runs its own event loop in a background thread, so it works from code that has no
loop (a Django view, a script) and may be shared by many threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, Unpack, overload

from . import loops
from .backend import BackendExt, Capabilities, Capability, NewTask, PushOptions, Store, TaskSink
from .bounds import check_name
from .codec import codec_by_name
from .config import Config, load_config
from .config_fields import did_you_mean
from .control import Waiter
from .errors import ConfigError, Unsupported, UsageError
from .registry import build_store
from .storable import decode_result
from .task import Task, TaskId

__all__ = [
    "QueueTarget",
    "Sink",
    "SyncSink",
    "WaitTimeout",
    "keyed",
    "open_queue",
    "open_sink",
    "open_sink_sync",
    "resolve_target",
    "result_of",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueTarget:
    """Which queue of which backend, with the codec and default max_attempts to push with."""

    backend: str
    queue: str
    codec: str = "json"
    max_attempts: int = 3
    worker: str | None = None


def resolve_target(config: Config, worker: str | None = None, queue: str | None = None) -> QueueTarget:
    """The queue named by `worker` and/or `queue` (with neither: the config's only worker)."""
    if queue is not None:
        try:
            check_name(queue)
        except ValueError as exc:
            raise UsageError(f"the queue name {exc}") from None
    if worker is None and queue is not None:
        matches = [w for w in config.workers if w.queue == queue]
        hint = "" if matches else did_you_mean(queue, sorted({w.queue for w in config.workers}))
        if hint:
            # Most likely a typo, and tasks pushed there would wait for a worker that never comes.
            raise UsageError(
                f'no worker in {config.path} takes the queue "{queue}"{hint} '
                "(to use that queue all the same, name the worker whose backend holds it with --worker)"
            )
        if len(matches) == 1:
            worker = matches[0].name
        elif len(config.backends) == 1 and not matches:
            return QueueTarget(backend=next(iter(config.backends)), queue=queue)
        else:
            raise UsageError(f'say which worker the queue "{queue}" belongs to, with --worker')
    w = config.worker(worker)
    backend = w.backend
    if w.pipe_to is not None:
        backend = w.pipe_to  # a cron worker's ticks are tasks in that durable store
    elif w.cron is not None:
        raise Unsupported(
            f'worker "{w.name}" is a cron worker without pipe_to: its ticks exist only inside the running daemon'
        )
    return QueueTarget(
        backend=backend, queue=queue or w.queue, codec=w.codec, max_attempts=w.max_attempts, worker=w.name
    )


@contextlib.asynccontextmanager
async def open_queue(config: Config, target: QueueTarget) -> AsyncIterator[tuple[Store, BackendExt]]:
    """Open the target's store and yield it with the queue-bound backend; closes the store after."""
    store = build_store(config, target.backend)
    await store.open()
    try:
        try:
            backend = store.backend(target.queue, codec=codec_by_name(target.codec), max_attempts=target.max_attempts)
        except ConfigError as exc:  # a queue name the store refuses
            raise _at_worker(config, target, exc) from None
        yield store, backend
    finally:
        await store.close()


def _at_worker(config: Config, target: QueueTarget, exc: ConfigError) -> ConfigError:
    """`exc` placed at the line of the worker whose config named the queue, if one did."""
    worker = next((w for w in config.workers if w.name == target.worker), None)
    if exc.where is not None or worker is None or worker.queue != target.queue:
        return exc
    return config.error((*worker.key, *exc.key.split(".")) if exc.key else worker.key, exc.message)


def _load(config: str | Path | Config | None) -> Config:
    if isinstance(config, Config):
        return config
    return load_config(config if config is not None else os.environ.get("APALIS_CONFIG", "apalis.toml"))


class WaitTimeout(TimeoutError):
    """`push(..., wait=True)` gave up waiting: the task goes on (`task_id` says which)."""

    def __init__(self, task_id: TaskId, timeout: float | None) -> None:
        super().__init__(
            f"task {task_id} had not ended after {timeout:g}s" if timeout else f"task {task_id} wait ended"
        )
        self.task_id = task_id


def result_of(task: Task[Any]) -> Any:
    """A finished task's result as the handler returned it (decoded from the JSON text that
    stores keep); None when it has none or its store keeps no results."""
    return decode_result(task.ctx.result)


class Sink:
    """A queue's `TaskSink` (what `open_sink` yields), which can also wait for a task to end
    where its store can (`Capability.WAIT`)."""

    def __init__(self, backend: TaskSink, capabilities: Capabilities, name: str) -> None:
        self.backend = backend
        self.capabilities = capabilities
        self._name = name

    # `timeout` limits the wait of `wait=True`, whose end is an answer (WaitTimeout), not an error.
    @overload
    async def push(
        self,
        args: Any,
        *,
        wait: Literal[False] = False,
        timeout: float | None = None,  # noqa: ASYNC109
        **options: Unpack[PushOptions],
    ) -> TaskId: ...

    @overload
    async def push(
        self,
        args: Any,
        *,
        wait: Literal[True],
        timeout: float | None = None,  # noqa: ASYNC109
        **options: Unpack[PushOptions],
    ) -> Task[bytes]: ...

    async def push(
        self,
        args: Any,
        *,
        wait: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
        **options: Unpack[PushOptions],
    ) -> TaskId | Task[bytes]:
        """Encode `args` and enqueue it (options as `TaskSink.push`); returns its id, or with
        `wait=True` the task once it has ended (done, killed or cancelled: see `ctx.status`,
        `result_of(task)`, `ctx.last_error`), raising `WaitTimeout` after `timeout` seconds."""
        waiter = self._waiter() if wait else None
        if waiter is not None:
            options["waited"] = True  # a run faster than the wait's registration keeps its end
        task_id = await self.backend.push(args, **options)
        if waiter is None:
            return task_id
        return await self._ended(waiter, task_id, timeout)

    async def push_bulk(self, items: Iterable[Any], **options: Unpack[PushOptions]) -> list[TaskId]:
        """Enqueue many values with the same options, in as few round trips as the store can."""
        return await self.backend.push_bulk(items, **options)

    async def push_compact(self, compact: bytes, **options: Unpack[PushOptions]) -> TaskId:
        """Enqueue already-encoded bytes as they are."""
        return await self.backend.push_compact(compact, **options)

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[TaskId]:
        """The store's primitive: insert encoded tasks."""
        return await self.backend.enqueue(tasks)

    async def wait(self, task_id: TaskId, timeout: float | None = None) -> Task[bytes] | None:  # noqa: ASYNC109
        """The task once it has ended (done, killed or cancelled); None after `timeout` seconds
        (the task goes on) or when the queue has no such task."""
        return await self._waiter().wait(task_id, timeout)

    async def _ended(self, waiter: Waiter, task_id: TaskId, within: float | None) -> Task[bytes]:
        task = await waiter.wait(task_id, within)
        if task is None:
            raise WaitTimeout(task_id, within)
        return task

    def _waiter(self) -> Waiter:
        why = self.capabilities.why_not(Capability.WAIT)
        if why is not None or not isinstance(self.backend, Waiter):
            raise Unsupported(f'backend "{self._name}" cannot wait for a task: {why or "it has no wait()"}')
        return self.backend


@contextlib.asynccontextmanager
async def open_sink(
    config: str | Path | Config | None = None, *, worker: str | None = None, queue: str | None = None
) -> AsyncIterator[Sink]:
    """A `Sink` for `worker`'s queue (or `queue`), open for the duration of the block.

    `config` is a path (default: `$APALIS_CONFIG`, then `apalis.toml`) or a loaded `Config`.
    """
    loaded = _load(config)
    target = resolve_target(loaded, worker, queue)
    async with open_queue(loaded, target) as (store, backend):
        if not isinstance(backend, TaskSink):
            raise Unsupported(f'backend "{target.backend}" cannot take pushed tasks')
        yield Sink(keyed(loaded, target, backend), store.capabilities, target.backend)


def keyed(config: Config, target: QueueTarget, sink: TaskSink) -> TaskSink:
    """`sink`, taking each task's limit key from its arguments when the target's worker has
    global limits by key (`apalis_cli.fleet`)."""
    worker = next((w for w in config.workers if w.name == target.worker), None)
    limits = worker.limits if worker is not None and worker.queue == target.queue else None
    if limits is None or not limits.keyed or limits.key is None:
        return sink
    from .fleet.keys import KeyedSink

    return KeyedSink(sink, limits.key, codec_by_name(target.codec))


class SyncSink:
    """A blocking `TaskSink` for code without an event loop; thread-safe; `close()` when done."""

    def __init__(
        self, config: str | Path | Config | None = None, *, worker: str | None = None, queue: str | None = None
    ) -> None:
        self._loop = loops.new_event_loop()  # uvloop's when installed (`apalis_cli.loops`)
        self._thread = threading.Thread(target=self._loop.run_forever, name="apalis-sink", daemon=True)
        self._thread.start()
        self._context = open_sink(config, worker=worker, queue=queue)
        try:
            self._sink: Sink = self._call(self._context.__aenter__())
        except BaseException:
            self._stop_loop()
            raise

    @overload
    def push(
        self,
        args: Any,
        *,
        wait: Literal[False] = False,
        timeout: float | None = None,
        **options: Unpack[PushOptions],
    ) -> TaskId: ...

    @overload
    def push(
        self, args: Any, *, wait: Literal[True], timeout: float | None = None, **options: Unpack[PushOptions]
    ) -> Task[bytes]: ...

    def push(
        self,
        args: Any,
        *,
        wait: bool = False,
        timeout: float | None = None,
        **options: Unpack[PushOptions],
    ) -> TaskId | Task[bytes]:
        """Encode `args` and enqueue it (options as `TaskSink.push`); returns the id, or with
        `wait=True` the task once it has ended (`Sink.push`), raising `WaitTimeout`."""
        if wait:
            return self._call(self._sink.push(args, wait=True, timeout=timeout, **options))
        task_id: TaskId = self._call(self._sink.backend.push(args, **options))
        return task_id

    def wait(self, task_id: TaskId, timeout: float | None = None) -> Task[bytes] | None:
        """The task once it has ended; None after `timeout` seconds (`Sink.wait`)."""
        return self._call(self._sink.wait(task_id, timeout))

    def push_bulk(self, items: Iterable[Any], **options: Unpack[PushOptions]) -> list[TaskId]:
        """Enqueue many values with the same options, in as few round trips as the store can."""
        return self._call(self._sink.push_bulk(list(items), **options))

    def close(self) -> None:
        """Close the store's connections and stop the background loop."""
        if self._loop.is_closed():
            return
        try:
            self._call(self._context.__aexit__(None, None, None))
        finally:
            self._stop_loop()

    def __enter__(self) -> SyncSink:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def open_sink_sync(
    config: str | Path | Config | None = None, *, worker: str | None = None, queue: str | None = None
) -> SyncSink:
    """A blocking sink for `worker`'s queue; use it as a context manager or call `close()`."""
    return SyncSink(config, worker=worker, queue=queue)
