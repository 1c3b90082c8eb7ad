"""The tracing layer: one structured log line per run, with its id, attempt, outcome and time.

Outside `retry` it logs the final decision of each run; inside `retry` it also sees exceptions
(logged with their traceback) before retry turns them into a decision.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from ..config_fields import Table, choice
from ..service import Outcome, Service
from ..task import Task

__all__ = ["TracingLayer"]

_LEVELS = ("debug", "info", "warning", "error")


class TracingLayer:
    """Logs each run through structlog at `level`."""

    kind: ClassVar[str] = "tracing"

    def __init__(self, level: str = "info") -> None:
        self.level = level

    @classmethod
    def from_config(cls, table: Table) -> TracingLayer:
        """`{ kind = "tracing", level = "info" }` (debug, info, warning or error)"""
        return cls(table.take("level", choice(*_LEVELS), "info"))

    def __repr__(self) -> str:
        return f"tracing({self.level})"

    def __call__(self, inner: Service) -> Service:
        # Imported here: the config and every command import this package, most never trace.
        import structlog

        logger = structlog.get_logger("apalis.task")
        log = getattr(logger, self.level)

        async def traced(task: Task[Any]) -> Outcome:
            started = time.perf_counter()
            fields = {"task_id": task.id, "queue": task.ctx.queue, "attempt": task.ctx.attempts}
            try:
                outcome = await inner(task)
            except Exception:
                logger.exception("task raised", duration=time.perf_counter() - started, **fields)
                raise
            log(
                "task finished",
                outcome=outcome.kind.value,
                error=outcome.error,
                duration=round(time.perf_counter() - started, 6),
                **fields,
            )
            return outcome

        return traced
