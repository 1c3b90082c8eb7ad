"""From config to running objects: stores, layers, handlers and worker factories for `run`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import structlog

from ..backend import BackendExt, Capability, Inspector, PipeSource, Store
from ..codec import codec_by_name
from ..config import Config, WorkerConfig
from ..errors import ApalisError, BackendError, ConfigError, describe_error
from ..handlers import LoadedHandler, load_handler
from ..isolation import ProcessPool
from ..layers import Resolvable
from ..registry import Registry, build_store, build_worker_store
from ..retrying import delays
from ..service import Layer
from ..worker import Worker

__all__ = ["Assembly", "assemble", "build_layers", "opened_stores"]

_OPEN_RETRY_FIRST = 0.5
_OPEN_RETRY_MAX = 30.0


def build_layers(config: Config, worker: WorkerConfig) -> list[Layer]:
    """The worker's middleware, in the order listed (the first outermost), with the code each
    layer names imported (a name that fails is a config error at its line)."""
    layers: list[Layer] = []
    for index, layer in enumerate(worker.middleware):
        if isinstance(layer, Resolvable):
            try:
                layers.append(layer.resolved(config.base_dir))
            except ConfigError as exc:
                key = (*worker.key, "middleware", index, *(exc.key.split(".") if exc.key else ()))
                raise config.error(key, exc.message) from None
        else:
            layers.append(layer)
    return layers


@dataclass(slots=True)
class Assembly:
    """Everything `run` needs, built and validated before any store is opened.

    `stores` holds every store to open, by backend name (a cron worker has one of its own, under
    `cron:<worker>`); `store_of` maps each worker to the store it consumes.
    """

    config: Config
    workers: list[WorkerConfig]
    stores: dict[str, Store]
    store_of: dict[str, Store]
    handlers: dict[str, LoadedHandler]
    layers: dict[str, list[Layer]]
    concurrency: dict[str, int] = field(default_factory=dict)

    def backend(self, worker: WorkerConfig) -> BackendExt:
        """The queue-bound backend `worker` consumes (for cron with pipe_to: piped into that store)."""
        store = self.store_of[worker.name]
        codec = codec_by_name(worker.codec)
        try:
            if worker.pipe_to is None:
                backend: BackendExt = store.backend(worker.queue, codec=codec, max_attempts=worker.max_attempts)
                return _holding_limits(backend, worker)
            sink = self.stores[worker.pipe_to].backend(worker.queue, codec=codec, max_attempts=worker.max_attempts)
            if not isinstance(store, PipeSource):
                raise ConfigError(f"a {store.kind} store cannot be piped", key="pipe_to")
            return _holding_limits(store.pipe(sink), worker)
        except ConfigError as exc:
            key = (*worker.key, *exc.key.split(".")) if exc.key else worker.key
            raise self.config.error(key, exc.message) from None

    def inspectors(self) -> dict[str, Inspector]:
        """The Inspector of each worker's queue, where its store has one (the first, for a queue
        name that several stores hold)."""
        queues: dict[str, Inspector] = {}
        for w in self.workers:
            if w.cron is not None and w.pipe_to is None:
                continue  # in-process ticks: no queue depth to ask for
            store = self.stores[w.pipe_to] if w.pipe_to is not None else self.store_of[w.name]
            backend = store.backend(w.queue, codec=codec_by_name(w.codec))
            if isinstance(backend, Inspector):  # a broker that cannot browse may still count
                queues.setdefault(w.queue, backend)
        return queues

    def pools(self) -> dict[str, ProcessPool]:
        """The child-process pools, by worker name (workers with isolation = "process")."""
        return {name: loaded.children for name, loaded in self.handlers.items() if loaded.children is not None}

    def factory(self, worker: WorkerConfig) -> Worker:
        """A fresh `Worker` for `worker` (the supervisor calls this again after a crash)."""
        backend = self.backend(worker)
        return Worker(
            name=worker.name,
            backend=backend,
            handler=self.handlers[worker.name].handler,
            concurrency=self.concurrency[worker.name],
            layers=self.layers[worker.name],
            keep_alive=worker.keep_alive,
            stale_after=worker.stale_after,
            poll_interval=worker.poll_interval,
            shutdown_timeout=worker.shutdown_timeout,
            retention=worker.retention,
            backoff=worker.backoff,
            stoppable=self.handlers[worker.name].stoppable,
        )


def _holding_limits(backend: BackendExt, worker: WorkerConfig) -> BackendExt:
    """`backend`, once it is known to hold the worker's global limits (a config error if not)."""
    limits = worker.limits
    if limits is not None and not backend.capabilities.has(Capability.FLEET_LIMITS):
        reason = backend.capabilities.why_not(Capability.FLEET_LIMITS)
        raise ConfigError(f"this store cannot hold a global limit ({limits}): {reason}", key="middleware")
    return backend


def assemble(config: Config, workers: Sequence[WorkerConfig], concurrency: int | None = None) -> Assembly:
    """Validate and build everything for `workers`; errors are `ConfigError`s with file:line."""
    registry = Registry()
    stores: dict[str, Store] = {}
    store_of: dict[str, Store] = {}
    for worker in workers:
        if worker.cron is not None:
            store_of[worker.name] = stores[f"cron:{worker.name}"] = build_worker_store(config, worker, registry)
        elif worker.backend not in stores:
            stores[worker.backend] = build_store(config, worker.backend, registry)
        if worker.pipe_to is not None and worker.pipe_to not in stores:
            stores[worker.pipe_to] = build_store(config, worker.pipe_to, registry)
        if worker.name not in store_of:
            store_of[worker.name] = stores[worker.backend]
    sizes = {w.name: concurrency or w.concurrency for w in workers}
    layers = {w.name: build_layers(config, w) for w in workers}
    handlers: dict[str, LoadedHandler] = {}
    try:
        for worker in workers:
            handlers[worker.name] = load_handler(config, worker, concurrency=sizes[worker.name])
    except BaseException:
        for loaded in handlers.values():
            loaded.close()
        raise
    return Assembly(config, list(workers), stores, store_of, handlers, layers, sizes)


@contextlib.asynccontextmanager
async def opened_stores(assembly: Assembly, *, wait: bool = False) -> AsyncIterator[None]:
    """Start every handler (child processes), open every store; close them all after.

    With `wait`, a store that cannot be reached is tried again with capped backoff (a daemon may
    start before its database); otherwise the first failure is raised.
    """
    opened: list[Store] = []
    try:
        # Child processes first: a handler they cannot import is a config error, found before
        # waiting for any store.
        for loaded in assembly.handlers.values():
            await loaded.start()
        for name, store in assembly.stores.items():
            await (_open_patiently(name, store) if wait else store.open())
            opened.append(store)
        for worker in assembly.workers:
            assembly.backend(worker)  # a bad pipe_to or catch_up fails here, before any worker starts
        yield
    finally:
        for store in reversed(opened):
            with contextlib.suppress(Exception):
                await store.close()
        for loaded in assembly.handlers.values():
            await loaded.aclose()


async def _open_patiently(name: str, store: Store) -> None:
    # No budget: a daemon waits for its store as long as it takes, saying so at each try.
    waits = delays(_OPEN_RETRY_FIRST, _OPEN_RETRY_MAX)
    while True:
        try:
            await store.open()
            return
        except ApalisError as exc:
            if not isinstance(exc, BackendError):
                raise  # bad config or a missing driver: waiting will not help
            error = str(exc)
        except Exception as exc:
            error = describe_error(exc)
        delay = next(waits)
        structlog.get_logger("apalis").warning(
            "cannot open the backend, retrying", backend=name, error=error, retry_in=delay
        )
        await asyncio.sleep(delay)
