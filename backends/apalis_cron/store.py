"""The cron store: no connection, its options are a cron worker's keys; builds the queue a cron
worker consumes, in this process (no `pipe_to`) or piped into a durable store's queue."""

from __future__ import annotations

from typing import ClassVar

from apalis_cli.backend import BackendExt, Capabilities, Capability, Inspector, StoreSpec, TaskSink
from apalis_cli.codec import Codec
from apalis_cli.errors import ConfigError
from apalis_cli.memory import MemoryStore

from .config import CronConfig
from .queue import CronQueue, SinkQueue
from .schedule import Schedule

__all__ = ["CronStore"]


class CronStore:
    """Builds cron queues; its options are the cron worker's keys (schedule, timezone, …)."""

    kind: ClassVar[str] = "cron"
    capabilities: ClassVar[Capabilities] = Capabilities(
        {
            Capability.RECONNECT: "cron without pipe_to keeps its ticks in this process",
            Capability.CLAIMS_AHEAD: "cron without pipe_to keeps its ticks in this process",
        }
    )

    def __init__(self, config: CronConfig) -> None:
        self.config = config
        self._memory = MemoryStore()

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> CronStore:
        """Validate the schedule, timezone and catch-up settings."""
        return cls(CronConfig.parse(spec.options))

    def next_ticks(self, after: float, count: int) -> list[float]:
        """The next `count` ticks strictly after `after` (a `TickSource`, for the board)."""
        schedule, moment = Schedule(self.config), after
        ticks: list[float] = []
        for _ in range(count):
            moment = schedule.next_after(moment)
            ticks.append(moment)
        return ticks

    async def open(self) -> None:
        """Nothing to connect: ticks come from the clock."""

    async def close(self) -> None:
        """Nothing to release."""

    def backend(self, queue: str, *, codec: Codec, max_attempts: int = 1) -> CronQueue:
        """Ticks run in this process only (no `pipe_to`)."""
        if self.config.catch_up != "none":
            raise ConfigError(
                "needs pipe_to: without a durable backend there is no record of missed ticks", key="catch_up"
            )
        sink = self._memory.backend(queue, codec=codec, max_attempts=max_attempts)
        return CronQueue(self.config, sink, durable=False)

    def pipe(self, sink: BackendExt) -> CronQueue:
        """Ticks pushed into `sink`, a durable backend's queue, once per tick across replicas."""
        if not isinstance(sink, TaskSink):
            raise ConfigError("pipe_to needs a backend that can be pushed to", key="pipe_to")
        if not sink.capabilities.has(Capability.IDEMPOTENCY):
            why = sink.capabilities.why_not(Capability.IDEMPOTENCY)
            raise ConfigError(f"pipe_to needs idempotency keys to run each tick once, but {why}", key="pipe_to")
        if self.config.catch_up != "none" and not (
            isinstance(sink, Inspector) and sink.capabilities.has(Capability.INSPECT)
        ):
            raise ConfigError("catch_up needs a pipe_to backend that can be inspected", key="catch_up")
        assert isinstance(sink, SinkQueue)
        return CronQueue(self.config, sink, durable=True)
