"""Worker lifecycle events, handed to `on_event` callbacks (the console, logs, metrics).

Events are not middleware: they observe, they cannot change a run. Task events are created only
when someone listens, so an unobserved worker pays nothing for them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .redact import redact

__all__ = [
    "BackendUnavailable",
    "CancelRequested",
    "Event",
    "EventListener",
    "HeartbeatFailed",
    "HeartbeatSent",
    "Idle",
    "QueuePaused",
    "Started",
    "Stopped",
    "TaskFinished",
    "WaitingForRuns",
    "WorkerCrashed",
    "masking",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Something that happened to a worker."""

    worker: str
    queue: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Started(Event):
    """The worker registered and is taking tasks."""

    worker_id: str
    concurrency: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Idle(Event):
    """The queue had no ready task (sent once per idle spell)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFinished(Event):
    """A run ended: `outcome` is done, retry, kill, cancel or release. `waited` is how long the task
    waited from its `run_at` until this run started (its start latency), None where the store
    does not say when it was due."""

    task_id: str
    attempt: int
    outcome: str
    duration: float
    error: str | None = None
    waited: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRequested(Event):
    """The store told the worker that a task it runs was cancelled: the run is being stopped
    (its `TaskFinished` follows, with the outcome `cancel`)."""

    task_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuePaused(Event):
    """The store said the worker's queue was paused (`paused`) or resumed: a paused queue's
    claims hand out nothing; running tasks finish."""

    paused: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatSent(Event):
    """A heartbeat reached the store (once per keep_alive)."""

    stale_after: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatFailed(Event):
    """A heartbeat could not reach the store."""

    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendUnavailable(Event):
    """Polling failed; the worker keeps its running tasks and tries again after `retry_in`."""

    error: str
    retry_in: float


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerCrashed(Event):
    """The worker failed; the supervisor starts a new one after `restart_in` seconds."""

    error: str
    restart_in: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Stopped(Event):
    """The worker stopped; `released` tasks went back to the queue unfinished."""

    released: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitingForRuns(Event):
    """A stop's `shutdown_timeout` passed with `running` runs that cannot be stopped (a sync
    handler's threads): the worker waits for them, their tasks still its own."""

    running: int


EventListener = Callable[[Event], None]


def masking(listeners: Sequence[EventListener], secrets: Iterable[str]) -> EventListener:
    """One listener handing each event to `listeners` with the `secrets` in its error masked
    (the console, the logs and `/healthz` then show the same masked text)."""
    known = frozenset(secrets)

    def on_event(event: Event) -> None:
        error = getattr(event, "error", None)
        if error:
            event = dataclasses.replace(event, error=redact(error, known))  # type: ignore[call-arg]
        for listener in listeners:
            listener(event)

    return on_event
