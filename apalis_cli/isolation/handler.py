"""A worker's handler run in child processes: the `LoadedHandler` for `isolation = "process"`."""

from __future__ import annotations

from ..config import Config, ImportHandler, WorkerConfig
from ..handlers import LoadedHandler
from .pool import ChildStartFailed, PoolSettings, ProcessPool

__all__ = ["ProcessHandler", "process_handler"]


class ProcessHandler(LoadedHandler):
    """Runs each task in one of `concurrency` child processes that imported the handler once."""

    def __init__(self, pool: ProcessPool, description: str, config: Config, worker: WorkerConfig) -> None:
        super().__init__(pool.run, description)
        self.children = pool
        self._processes = pool
        self._config = config
        self._worker = worker

    async def start(self) -> None:
        """Start the children; one that cannot import the handler is a config error at its line."""
        try:
            await self._processes.start()
        except ChildStartFailed as exc:
            raise self._config.error((*self._worker.key, "handler"), str(exc)) from None

    async def aclose(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL after the grace period)."""
        await self._processes.close()


def process_handler(config: Config, worker: WorkerConfig, spec: ImportHandler, concurrency: int) -> LoadedHandler:
    """The handler of `worker` in a pool of `concurrency` children (started by `start()`)."""
    settings = PoolSettings(
        handler=spec.path,
        base_dir=config.base_dir,
        size=concurrency,
        max_tasks_per_child=worker.max_tasks_per_child,
        max_memory_per_child=worker.max_memory_per_child,
        kill_grace=worker.kill_grace,
    )
    return ProcessHandler(ProcessPool(settings), f"{spec.path} (in processes)", config, worker)
