"""From config to running objects: stores, layers, handlers and worker factories for `run`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from ..backend import Store
from ..codec import codec_by_name
from ..config import Config, MiddlewareConfig, WorkerConfig
from ..handlers import LoadedHandler, load_handler, resolve_exception
from ..layers import CatchLayer, ConcurrencyLayer, RateLimitLayer, RetryLayer, TimeoutLayer, TracingLayer
from ..registry import Registry, build_store
from ..service import Layer
from ..worker import Worker

__all__ = ["Assembly", "assemble", "build_layers"]


def build_layers(config: Config, worker: WorkerConfig) -> list[Layer]:
    """The worker's middleware, in the order listed (the first outermost)."""
    return [_layer(config, worker, index, mw) for index, mw in enumerate(worker.middleware)]


def _layer(config: Config, worker: WorkerConfig, index: int, mw: MiddlewareConfig) -> Layer:
    if mw.kind == "retry":
        return RetryLayer(mw.backoff)
    if mw.kind == "timeout":
        return TimeoutLayer(mw.after)
    if mw.kind == "rate_limit":
        return RateLimitLayer(mw.rate, mw.per)
    if mw.kind == "concurrency":
        return ConcurrencyLayer(mw.limit)
    if mw.kind == "catch":
        try:
            return CatchLayer(tuple(resolve_exception(name, config.base_dir) for name in mw.kill_on))
        except ValueError as exc:
            raise config.error((*worker.key, "middleware", index, "kill_on"), str(exc)) from None
    return TracingLayer(mw.level)


@dataclass(slots=True)
class Assembly:
    """Everything `run` needs, built and validated before any store is opened."""

    config: Config
    workers: list[WorkerConfig]
    stores: dict[str, Store]
    handlers: dict[str, LoadedHandler]
    layers: dict[str, list[Layer]]
    concurrency: dict[str, int] = field(default_factory=dict)

    def factory(self, worker: WorkerConfig) -> Worker:
        """A fresh `Worker` for `worker` (the supervisor calls this again after a crash)."""
        store = self.stores[worker.backend]
        backend = store.backend(worker.queue, codec=codec_by_name(worker.codec), max_attempts=worker.max_attempts)
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
        )


def assemble(config: Config, workers: Sequence[WorkerConfig], concurrency: int | None = None) -> Assembly:
    """Validate and build everything for `workers`; errors are `ConfigError`s with file:line."""
    registry = Registry()
    stores: dict[str, Store] = {}
    for worker in workers:
        if worker.backend not in stores:
            stores[worker.backend] = build_store(config, worker.backend, registry)
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
    return Assembly(config, list(workers), stores, handlers, layers, sizes)


@contextlib.asynccontextmanager
async def opened_stores(assembly: Assembly) -> AsyncIterator[None]:
    """Open every store (closing those opened if one fails) and close them all after."""
    opened: list[Store] = []
    try:
        for store in assembly.stores.values():
            await store.open()
            opened.append(store)
        yield
    finally:
        for store in reversed(opened):
            with contextlib.suppress(Exception):
                await store.close()
        for loaded in assembly.handlers.values():
            loaded.close()
