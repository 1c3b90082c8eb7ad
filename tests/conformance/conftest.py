"""The conformance suite's fixtures: every store in `stores/`, and a harness to drive workers.

`store` is parametrised over each module in `tests/conformance/stores/` (ids = the kind), so a
new backend joins by adding one file there. `harness` gives each test a unique queue name,
queue-bound backends, and workers running in the background with short timings, stopped (and
checked for crashes) when the test ends.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import pytest
from apalis_cli.backend import BackendExt, Capability, Inspector, Store, TaskSink
from apalis_cli.codec import Codec, codec_by_name
from apalis_cli.events import Event, Started, Stopped, TaskFinished
from apalis_cli.layers.retry import Backoff
from apalis_cli.service import Layer
from apalis_cli.task import Task, new_task_id
from apalis_cli.worker import Worker

from . import stores
from .factory import StoreFactory

FAST_BACKOFF = Backoff(kind="constant", base=0.05, max=0.05, jitter=False)
"""Retries in the suite come back almost at once unless a test says otherwise."""


def _store_modules() -> list[ModuleType]:
    names = sorted(info.name for info in pkgutil.iter_modules(stores.__path__) if not info.name.startswith("_"))
    return [importlib.import_module(f"{stores.__name__}.{name}") for name in names]


STORE_MODULES = _store_modules()


@pytest.fixture(params=STORE_MODULES, ids=[module.FACTORY.kind for module in STORE_MODULES])
def factory(request: pytest.FixtureRequest) -> StoreFactory:
    """The `StoreFactory` of one backend kind."""
    built: StoreFactory = request.param.FACTORY
    return built


@pytest.fixture(scope="session", autouse=True)
def _factories_shut_down() -> Iterator[None]:
    """Private servers a factory started for the session (a Redis Cluster) stop at its end."""
    yield
    for module in STORE_MODULES:
        module.FACTORY.shutdown()


@pytest.fixture
async def store(factory: StoreFactory, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh, opened store of each kind, destroyed after the test."""
    created = await factory.create(tmp_path)
    try:
        yield created
    finally:
        await factory.destroy(created)


class Backend(BackendExt, TaskSink, Protocol):
    """A queue-bound backend that also pushes: what `Harness.backend` returns."""


@dataclass(slots=True, kw_only=True)
class Call:
    """One call of a handler, as the handler saw it."""

    id: str
    args: Any
    attempts: int
    at: float
    worker: str


class Calls:
    """Every call the handlers of a test received, in order."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.finished: list[Call] = []

    def handler(
        self,
        behaviour: Callable[[Any, Task[bytes]], Awaitable[Any]] | None = None,
        *,
        worker: str = "",
    ) -> Callable[[Any, Task[bytes]], Awaitable[Any]]:
        """A handler that records each call, then runs `behaviour` (its result is the task's).

        A call is also recorded in `finished` when `behaviour` returns without raising.
        """

        async def handle(args: Any, task: Task[bytes]) -> Any:
            call = Call(id=task.id, args=args, attempts=task.ctx.attempts, at=time.time(), worker=worker)
            self.calls.append(call)
            result = await behaviour(args, task) if behaviour is not None else None
            self.finished.append(call)
            return result

        return handle

    def ids(self) -> list[str]:
        """Ids in call order."""
        return [call.id for call in self.calls]

    def of(self, task_id: str) -> list[Call]:
        """The calls for one task."""
        return [call for call in self.calls if call.id == task_id]

    def finished_ids(self) -> list[str]:
        """Ids of the calls that returned, in order."""
        return [call.id for call in self.finished]


class RunningWorker:
    """A `Worker` run in the background of a test: start, observe its events, stop."""

    def __init__(self, worker: Worker, sink: list[Event]) -> None:
        self.worker = worker
        self.events: list[Event] = []
        self._sink = sink
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        worker.subscribe(self._record)

    def _record(self, event: Event) -> None:
        self.events.append(event)
        self._sink.append(event)

    @property
    def id(self) -> str:
        """The worker's id as stores record it (`lock_by`)."""
        return self.worker.context.id

    @property
    def started(self) -> bool:
        """True once the worker's first heartbeat went through."""
        return any(isinstance(e, Started) for e in self.events)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The asyncio task running `Worker.run` (None before `start`)."""
        return self._task

    def finished(self, outcome: str | None = None) -> list[TaskFinished]:
        """Runs that ended (with `outcome`: done, retry, kill, release, error)."""
        return [e for e in self.events if isinstance(e, TaskFinished) and (outcome is None or e.outcome == outcome)]

    def stopped(self) -> Stopped | None:
        """The `Stopped` event, once the worker has stopped."""
        return next((e for e in self.events if isinstance(e, Stopped)), None)

    async def start(self, *, burst: bool = False, within: float = 10.0) -> RunningWorker:
        """Run the worker in the background and wait for its first heartbeat."""
        assert self._task is None, "a RunningWorker starts once"
        self._task = asyncio.create_task(self.worker.run(self._stop, burst=burst), name=self.worker.name)
        await wait_until(lambda: self.started or self._task is None or self._task.done(), within, "worker start")
        if self._task.done():
            self._task.result()  # raises what the worker crashed with
            if not burst:
                raise AssertionError("the worker returned before it was stopped")
        return self

    async def stop(self, within: float = 15.0) -> None:
        """Ask the worker to stop gracefully and wait until it has; re-raise a crash."""
        if self._task is None:
            return
        self._stop.set()
        try:
            async with asyncio.timeout(within):
                await asyncio.shield(self._task)
        except TimeoutError:
            stacks = _task_stacks()  # where it hangs: the one clue a backend's owner needs
            # Leave nothing running against a store that is about to be destroyed.
            self.worker.hurry()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            raise AssertionError(f"worker {self.worker.name} did not stop within {within}s\n{stacks}") from None

    def check(self) -> None:
        """Raise now if the worker crashed (or returned while it should still run)."""
        if self._task is not None and self._task.done() and not self._stop.is_set():
            self._task.result()


def _task_stacks() -> str:
    """Where every other asyncio task waits: its chain of awaits, outermost first."""
    lines = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        lines.append(f"task {task.get_name()}:")
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is None:
                break
            lines.append(f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
            if awaited is not None and not hasattr(awaited, "cr_frame"):
                # `await anext(stream)` hides the generator behind an opaque awaitable: find
                # the running async generator among the frame's locals instead.
                running = [v for v in frame.f_locals.values() if inspect.isasyncgen(v) and v.ag_running]
                awaited = running[0] if running else awaited
    return "\n".join(lines)


async def wait_until(condition: Callable[[], Any], within: float = 10.0, what: str = "condition") -> None:
    """Poll `condition` until it is true; fail the test naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass(slots=True, kw_only=True)
class Harness:
    """What a conformance test works with: the store, a unique queue, workers in the background."""

    store: Store
    factory: StoreFactory
    queue: str
    events: list[Event] = field(default_factory=list)
    workers: list[RunningWorker] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """The store's kind."""
        return self.store.kind

    def require(self, *capabilities: Capability) -> None:
        """Skip the test, with the store's own reason, unless it offers every capability."""
        for capability in capabilities:
            if not self.store.capabilities.has(capability):
                pytest.skip(self.store.capabilities.why_not(capability) or f"{self.kind} lacks {capability}")

    def backend(self, codec: str | Codec = "json", *, max_attempts: int = 1, queue: str | None = None) -> Backend:
        """A backend bound to this test's queue (or `queue`) that can also push."""
        chosen = codec_by_name(codec) if isinstance(codec, str) else codec
        made = self.store.backend(queue or self.queue, codec=chosen, max_attempts=max_attempts)
        assert isinstance(made, BackendExt), f"{self.kind} backend does not implement BackendExt"
        assert isinstance(made, TaskSink), f"{self.kind} backend does not implement TaskSink"
        return made

    def inspector(self, backend: Backend) -> Inspector:
        """`backend` as an `Inspector` (call `require(Capability.INSPECT)` first)."""
        assert isinstance(backend, Inspector), f"{self.kind} claims INSPECT but its backend is no Inspector"
        return backend

    def worker(
        self,
        backend: Backend,
        handler: Callable[[Any, Task[bytes]], Awaitable[Any]],
        *,
        name: str = "w",
        concurrency: int = 1,
        layers: Sequence[Layer] = (),
        keep_alive: float = 0.2,
        stale_after: float | None = None,
        poll_interval: float = 0.05,
        shutdown_timeout: float = 2.0,
        retention: float = 3600.0,
        backoff: Backoff = FAST_BACKOFF,
    ) -> RunningWorker:
        """A worker with short timings, not yet started; it is stopped when the test ends."""
        worker = Worker(
            name=name,
            backend=backend,
            handler=handler,
            concurrency=concurrency,
            layers=layers,
            keep_alive=keep_alive,
            stale_after=stale_after,
            poll_interval=poll_interval,
            shutdown_timeout=shutdown_timeout,
            retention=retention,
            backoff=backoff,
        )
        running = RunningWorker(worker, self.events)
        self.workers.append(running)
        return running

    def finished(self, outcome: str | None = None) -> list[TaskFinished]:
        """Runs that ended, in every worker of the test."""
        return [e for e in self.events if isinstance(e, TaskFinished) and (outcome is None or e.outcome == outcome)]

    async def wait_until(self, condition: Callable[[], Any], within: float = 10.0, what: str = "condition") -> None:
        """`wait_until`, failing at once if a worker of this test crashed meanwhile."""

        def met() -> Any:
            for running in self.workers:
                running.check()
            return condition()

        await wait_until(met, within, what)

    async def stop_all(self) -> None:
        """Stop every worker of the test (teardown)."""
        errors: list[BaseException] = []
        for running in self.workers:
            try:
                await running.stop()
            except Exception as exc:  # stop the others before reporting
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
async def harness(store: Store, factory: StoreFactory) -> AsyncIterator[Harness]:
    """The store, a queue of the test's own and its workers, all stopped at the end."""
    made = Harness(store=store, factory=factory, queue=f"conf_{new_task_id().lower()}")
    try:
        yield made
    finally:
        await made.stop_all()


@pytest.fixture
def calls() -> Calls:
    """Records every handler call of a test."""
    return Calls()
