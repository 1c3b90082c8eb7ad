"""Tower-style services: a task goes in, an `Outcome` comes out, and layers wrap services.

`Service = Callable[[Task], Awaitable[Outcome]]` and `Layer = Callable[[Service], Service]`.
`compose([a, b, c], handler)` builds `a(b(c(handler)))`: the first layer listed is outermost and
sees the call first and the outcome last. Order matters: a `timeout` inside `retry` limits each
run and lets retry turn the timeout into a persisted retry; a `tracing` layer outside `retry`
logs one line per run with the final decision, inside it logs the raw exception.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .errors import storable_text
from .task import Task

__all__ = ["MAX_RETRY_DELAY", "Layer", "Outcome", "OutcomeKind", "Service", "compose", "stop_requested"]

MAX_RETRY_DELAY = 365 * 86400.0
"""The furthest ahead a retry is scheduled: past it, a delay is a mistake (an infinite `Retry`
delay), and some stores cannot keep it (RabbitMQ's message TTL ends at about 8 years)."""


class OutcomeKind(StrEnum):
    """What the store must do with a task after a run."""

    DONE = "done"  # finished: keep the result until retention ends
    RETRY = "retry"  # failed: run again at `run_at` (the attempt is counted)
    KILL = "kill"  # failed for good: attempts exhausted, aborted or undecodable
    RELEASE = "release"  # not run (graceful stop): back to pending, the attempt not counted
    CANCEL = "cancel"  # stopped on an operator's cancel: status cancelled, `error` the reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """The decision about one run of a task, handed to the store's acknowledgement."""

    kind: OutcomeKind
    result: Any = None
    error: str | None = None
    run_at: float | None = None

    @classmethod
    def done(cls, result: Any = None) -> Outcome:
        """The task succeeded with `result`."""
        if result is None and cls is Outcome:
            return _DONE  # most handlers return nothing: one frozen instance serves every run
        return cls(kind=OutcomeKind.DONE, result=result)

    @classmethod
    def retry(cls, error: str, run_at: float) -> Outcome:
        """The task failed with `error` and runs again at `run_at` (epoch seconds).

        `error` is kept as every store takes it (see `storable_text`), and `run_at` at most
        `MAX_RETRY_DELAY` ahead (NaN: now), a time every store can keep and schedule."""
        if not run_at <= (latest := time.time() + MAX_RETRY_DELAY):
            run_at = latest if run_at > latest else time.time()
        return cls(kind=OutcomeKind.RETRY, error=storable_text(error), run_at=run_at)

    @classmethod
    def kill(cls, error: str) -> Outcome:
        """The task failed for good with `error` (kept as every store takes it)."""
        return cls(kind=OutcomeKind.KILL, error=storable_text(error))

    @classmethod
    def undecodable(cls, error: Exception) -> Outcome:
        """The task's payload cannot be decoded (`DecodeError`): killed, never retried, since
        the same bytes would fail the same way."""
        return cls.kill(f"decode error: {error}")

    @classmethod
    def cancel(cls, reason: str) -> Outcome:
        """The run was stopped because an operator cancelled the task: it ends cancelled, with
        `reason` as its last error, and is never retried."""
        return cls(kind=OutcomeKind.CANCEL, error=storable_text(reason))

    @classmethod
    def release(cls) -> Outcome:
        """The task goes back to pending without counting the attempt."""
        return _RELEASE if cls is Outcome else cls(kind=OutcomeKind.RELEASE)


_DONE = Outcome(kind=OutcomeKind.DONE)
_RELEASE = Outcome(kind=OutcomeKind.RELEASE)


Service = Callable[[Task[Any]], Awaitable[Outcome]]
Layer = Callable[[Service], Service]


def compose(layers: Iterable[Layer], service: Service) -> Service:
    """Wrap `service` in `layers`, the first one outermost."""
    for layer in reversed(list(layers)):
        service = layer(service)
    return service


def stop_requested() -> bool:
    """True when the running asyncio task was asked to stop (`cancel()`: a stop, a timeout).

    A `CancelledError` is a real cancellation only then; one that a handler raises on its own,
    or gets from awaiting something else that was cancelled, is that run's error."""
    import asyncio  # here: the command line imports this module, and starts faster without asyncio

    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
