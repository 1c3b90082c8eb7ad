"""The retry layer: turns a run's exception into a persisted decision (retry at, or kill).

Backoff is constant, linear or exponential, capped at `max`, with full jitter on request. The
decision is written by the store with the task, so a retry survives a restart and any worker
may take it. `Abort` and undecodable payloads kill at once; `Retry(delay)` picks its own delay.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..bounds import ATTEMPTS
from ..config_fields import Table, boolean, choice, duration, integer
from ..errors import Abort, DecodeError, Retry, describe_error
from ..service import Outcome, Service, stop_requested
from ..task import Task

__all__ = ["Backoff", "RetryLayer"]

BackoffKind = Literal["constant", "linear", "exponential"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """How long to wait before run number `attempt + 1`."""

    kind: BackoffKind = "exponential"
    base: float = 1.0
    max: float = 3600.0
    jitter: bool = True

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the `attempt`-th run failed (attempt >= 1)."""
        n = max(attempt, 1)
        if self.kind == "constant":
            raw = self.base
        elif self.kind == "linear":
            raw = self.base * n
        else:
            raw = self.base * 2.0 ** min(n - 1, 62)
        capped = min(raw, self.max)
        # Full jitter keeps a burst of failures from retrying in lock-step; at least half the
        # delay is kept so a retry is never immediate by chance.
        return capped * random.uniform(0.5, 1.0) if self.jitter else capped


class RetryLayer:
    """Catches a run's exception and decides: retry after the backoff, or kill.

    `max_attempts` is the worker's default number of runs per task when the config names it
    here; the decision itself reads each task's own `max_attempts`."""

    kind: ClassVar[str] = "retry"

    def __init__(self, backoff: Backoff | None = None, *, max_attempts: int | None = None) -> None:
        self.backoff = backoff or Backoff()
        self.max_attempts = max_attempts

    @classmethod
    def from_config(cls, table: Table) -> RetryLayer:
        """`{ kind = "retry", max_attempts = 5, backoff = "exponential", base = "1s", max = "1h", jitter = true }`"""
        backoff = Backoff(
            kind=table.take("backoff", choice("constant", "linear", "exponential"), "exponential"),
            base=table.take("base", duration, 1.0),
            max=table.take("max", duration, 3600.0),
            jitter=table.take("jitter", boolean, True),
        )
        return cls(backoff, max_attempts=table.take("max_attempts", integer(ATTEMPTS), None))

    def __repr__(self) -> str:
        b = self.backoff
        return f"retry({b.kind}, base={b.base:g}s, max={b.max:g}s{', jitter' if b.jitter else ''})"

    def __call__(self, inner: Service) -> Service:
        backoff = self.backoff

        async def retrying(task: Task[Any]) -> Outcome:
            try:
                return await inner(task)
            except asyncio.CancelledError:
                if stop_requested():
                    raise
                return _retry_or_kill(task, "CancelledError (not a stop of this run)", backoff.delay(task.ctx.attempts))
            except Abort as exc:
                return Outcome.kill(f"aborted: {exc.reason}")
            except DecodeError as exc:
                return Outcome.undecodable(exc)
            except Retry as exc:
                delay = exc.delay if exc.delay is not None else backoff.delay(task.ctx.attempts)
                return _retry_or_kill(task, exc.reason, delay)
            except BaseException as exc:  # SystemExit, KeyboardInterrupt: this run's failure, not the daemon's
                return _retry_or_kill(task, describe_error(exc), backoff.delay(task.ctx.attempts))

        return retrying


def _retry_or_kill(task: Task[Any], error: str, delay: float) -> Outcome:
    ctx = task.ctx
    if ctx.attempts >= ctx.max_attempts:
        return Outcome.kill(f"{error} (attempt {ctx.attempts} of {ctx.max_attempts}, giving up)")
    # max(0.0, ...) first: a negative or NaN delay is no delay (Outcome.retry caps the far end).
    return Outcome.retry(error, time.time() + max(0.0, delay))
