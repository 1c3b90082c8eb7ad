"""Prometheus metrics and a health probe for a running daemon (`apalis run --metrics-addr`).

`Metrics` listens to worker events (it is an `on_event` callback, not middleware) and keeps its
own `CollectorRegistry`, so two daemons in one process never share counters. `apalis_cli.web.health`
serves it: `GET /metrics` (Prometheus text format) and `GET /healthz` (200 when every worker is
alive and its store answered its last heartbeat in time, 503 otherwise, with a JSON body saying
which, and which queues are paused: a paused queue is not a fault), alone or beside the web board.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .backend import Capability, Inspector
from .control import Pausable
from .errors import MissingExtra
from .events import (
    Event,
    HeartbeatFailed,
    HeartbeatSent,
    QueuePaused,
    Started,
    Stopped,
    TaskFinished,
    WorkerCrashed,
)
from .isolation import RECYCLE_REASONS, ProcessPool
from .task import Status
from .worker import Worker

__all__ = ["Metrics", "WorkerHealth"]

_STATUS_OF_OUTCOME = {
    "done": "done",
    "retry": "retried",
    "kill": "killed",
    "cancel": "cancelled",
    "release": "released",
    "error": "error",
}
_DEPTH_EVERY = 5.0


@dataclass(slots=True)
class WorkerHealth:
    """What the probe knows about one worker."""

    state: str = "starting"
    last_beat: float | None = None
    stale_after: float = 30.0
    error: str | None = None

    def healthy(self, now: float) -> bool:
        """Running, and its last heartbeat reached the store within `stale_after`."""
        return self.state == "running" and self.last_beat is not None and now - self.last_beat <= self.stale_after


class Metrics:
    """The daemon's counters, histograms and gauges, fed by worker events."""

    def __init__(
        self,
        workers: Callable[[], Sequence[Worker | None]],
        queues: Mapping[str, Inspector],
        pools: Mapping[str, ProcessPool] | None = None,
    ) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise MissingExtra("--metrics-addr needs the extra: pip install 'apalis-cli[metrics]'") from None
        self.registry = CollectorRegistry()
        self._workers = workers
        self._queues = dict(queues)
        self.health: dict[str, WorkerHealth] = {}
        self._depth_at = float("-inf")
        self._tasks = Counter(
            "apalis_tasks", "Runs finished, by outcome.", ["worker", "queue", "status"], registry=self.registry
        )
        self._duration = Histogram(
            "apalis_task_duration_seconds",
            "How long each run took, acknowledgement included.",
            ["worker", "queue"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self._depth = Gauge(
            "apalis_queue_depth",
            "Tasks in the queue by status, as the store counts them.",
            ["queue", "status"],
            registry=self.registry,
        )
        self._paused = Gauge(
            "apalis_queue_paused",
            "1 while the queue is paused (its claims hand out nothing), 0 otherwise.",
            ["queue"],
            registry=self.registry,
        )
        self.paused: dict[str, bool] = {}
        """Each queue's paused state, as its workers or its store last said."""
        self.registry.register(_RunningCollector(workers))
        if pools:
            self.registry.register(_ChildrenCollector(pools))

    def __call__(self, event: Event) -> None:
        """The `on_event` listener."""
        if isinstance(event, TaskFinished):
            status = _STATUS_OF_OUTCOME.get(event.outcome, event.outcome)
            self._tasks.labels(event.worker, event.queue, status).inc()
            self._duration.labels(event.worker, event.queue).observe(event.duration)
            return
        if isinstance(event, QueuePaused):
            self._set_paused(event.queue, event.paused)
            return
        health = self.health.setdefault(event.worker, WorkerHealth())
        if isinstance(event, HeartbeatSent):
            health.last_beat, health.stale_after, health.error = time.time(), event.stale_after, None
        elif isinstance(event, Started):
            health.state, health.error = "running", None
        elif isinstance(event, HeartbeatFailed):
            health.error = event.error
        elif isinstance(event, WorkerCrashed):
            health.state, health.error = "crashed", event.error
        elif isinstance(event, Stopped):
            health.state = "stopped"

    def healthy(self) -> tuple[bool, dict[str, Any]]:
        """Whether every worker is healthy, and a report per worker."""
        now = time.time()
        report = {
            name: {
                "state": h.state,
                "healthy": h.healthy(now),
                "last_heartbeat_age": None if h.last_beat is None else round(now - h.last_beat, 3),
                "error": h.error,
            }
            for name, h in sorted(self.health.items())
        }
        expected = {w.name for w in self._workers() if w is not None}
        ok = bool(expected) and expected <= set(report) and all(r["healthy"] for r in report.values())
        return ok, report

    def paused_queues(self) -> list[str]:
        """The queues known to be paused now."""
        return sorted(queue for queue, paused in self.paused.items() if paused)

    def _set_paused(self, queue: str, paused: bool) -> None:
        self.paused[queue] = paused
        self._paused.labels(queue).set(1 if paused else 0)

    async def refresh_depth(self) -> None:
        """Ask each queue's store for its counts (what `apalis stats` shows); a query per queue,
        so at most once per `_DEPTH_EVERY` however often Prometheus scrapes."""
        now = time.monotonic()
        if now - self._depth_at < _DEPTH_EVERY:
            return
        self._depth_at = now
        for queue, inspector in self._queues.items():
            with contextlib.suppress(Exception):  # a store that is down keeps its last figures
                stats = await inspector.stats()
                for status in Status:
                    count = stats.counts.get(status)
                    if count is not None:
                        self._depth.labels(queue, status.value).set(count)
            capabilities = getattr(inspector, "capabilities", None)
            if isinstance(inspector, Pausable) and (capabilities is None or capabilities.has(Capability.PAUSE)):
                with contextlib.suppress(Exception):
                    self._set_paused(queue, await inspector.paused())

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


class _RunningCollector:
    """`apalis_tasks_running{worker,queue}`, read from the live workers when scraped."""

    def __init__(self, workers: Callable[[], Sequence[Worker | None]]) -> None:
        self._workers = workers

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("apalis_tasks_running", "Runs in flight now.", labels=["worker", "queue"])
        for worker in self._workers():
            if worker is not None:
                family.add_metric([worker.name, worker.context.queue], worker.running)
        yield family


class _ChildrenCollector:
    """The child processes of workers with isolation = "process", read from their pools when scraped."""

    def __init__(self, pools: Mapping[str, ProcessPool]) -> None:
        self._pools = pools

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        children = GaugeMetricFamily("apalis_worker_children", "Live child processes.", labels=["worker"])
        rss = GaugeMetricFamily(
            "apalis_child_rss_bytes", "Resident memory of each child process, by slot.", labels=["worker", "slot"]
        )
        recycles = CounterMetricFamily(
            "apalis_child_recycles",
            "Child processes replaced, by reason: max_tasks, max_memory, died, timeout_or_stop, killed.",
            labels=["worker", "reason"],
        )
        for name, pool in self._pools.items():
            stats = pool.stats()
            children.add_metric([name], len(stats.children))
            for child in stats.children:
                if child.rss is not None:
                    rss.add_metric([name, str(child.slot)], child.rss)
            for reason in RECYCLE_REASONS:
                recycles.add_metric([name, reason], stats.recycled.get(reason, 0))
        yield from (children, rss, recycles)
