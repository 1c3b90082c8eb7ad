"""The timeout layer: a run that takes longer than `after` fails with `TaskTimeout`.

Put it inside `retry` so the timeout becomes a persisted retry. A sync handler's thread cannot
be interrupted: its run fails only once the thread has returned (see `handlers._in_thread`), so
the task is never retried while its handler still runs. With `isolation = "process"` the
cancellation kills the handler's child process (SIGTERM, then SIGKILL after the grace period)
before the run ends, so the slot is really free again.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any, ClassVar

from ..config_fields import Table, duration
from ..durations import format_duration
from ..service import Outcome, Service
from ..task import Task

__all__ = ["TaskTimeout", "TimeoutLayer", "handler_started"]


class TaskTimeout(Exception):
    """A run took longer than its timeout."""


_RESTART: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("apalis_timeout", default=None)


def handler_started() -> None:
    """Start the run's timeout clock again, now: called by a handler that first waited for its
    turn (a child process to start), so that wait is not counted as the handler's time."""
    restart = _RESTART.get()
    if restart is not None:
        restart()


class TimeoutLayer:
    """Fails a run that takes longer than `after` seconds."""

    kind: ClassVar[str] = "timeout"

    def __init__(self, after: float) -> None:
        self.after = after

    @classmethod
    def from_config(cls, table: Table) -> TimeoutLayer:
        """`{ kind = "timeout", after = "30s" }`"""
        return cls(table.take("after", duration, positive=True))

    def __repr__(self) -> str:
        return f"timeout({format_duration(self.after)})"

    def __call__(self, inner: Service) -> Service:
        after = self.after

        async def limited(task: Task[Any]) -> Outcome:
            try:
                async with asyncio.timeout(after) as clock:
                    loop = asyncio.get_running_loop()
                    token = _RESTART.set(lambda: clock.reschedule(loop.time() + after))
                    try:
                        return await inner(task)
                    finally:
                        _RESTART.reset(token)
            except TimeoutError:
                raise TaskTimeout(f"timed out after {format_duration(after)}") from None

        return limited
