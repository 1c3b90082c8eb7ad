"""The timeout layer: a run that takes longer than `after` fails with `TaskTimeout`.

Put it inside `retry` so the timeout becomes a persisted retry. A sync handler's thread cannot
be interrupted: its run fails only once the thread has returned (see `handlers._in_thread`), so
the task is never retried while its handler still runs. With `isolation = "process"` the
cancellation kills the handler's child process (SIGTERM, then SIGKILL after the grace period)
before the run ends, so the slot is really free again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..durations import format_duration
from ..service import Outcome, Service
from ..task import Task

__all__ = ["TaskTimeout", "TimeoutLayer"]


class TaskTimeout(Exception):
    """A run took longer than its timeout."""


class TimeoutLayer:
    """Fails a run that takes longer than `after` seconds."""

    def __init__(self, after: float) -> None:
        self.after = after

    def __repr__(self) -> str:
        return f"timeout({format_duration(self.after)})"

    def __call__(self, inner: Service) -> Service:
        after = self.after

        async def limited(task: Task[Any]) -> Outcome:
            try:
                async with asyncio.timeout(after):
                    return await inner(task)
            except TimeoutError:
                raise TaskTimeout(f"timed out after {format_duration(after)}") from None

        return limited
