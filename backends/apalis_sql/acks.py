"""A batch of outcomes grouped into the parameters of one statement per outcome kind.

Each statement applies only to a task still running under the same lock, so every tuple ends
with `(id, lock_by)` for the WHERE clause; the SET values come first, in the order documented on
each field. With positional placeholders, a store writes its UPDATEs (one per kind) to match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from apalis_cli.service import Outcome, OutcomeKind
from apalis_cli.storable import encode_result
from apalis_cli.task import Task, TaskId

__all__ = ["AckPlan", "AckRow", "plan_acks"]

Row4 = tuple[Any, float, TaskId, str | None]
AckRow = tuple[TaskId, str | None, str, Any, str | None, float | None]
"""`(id, lock_by, new_status, result, error, run_at)`: one outcome as one row of a statement
that joins the tasks to its outcomes (`result` only for done, `error` for failed, killed and
cancelled, `run_at` for failed)."""


@dataclass(slots=True)
class AckPlan:
    """Statement parameters per outcome kind for one batch of acknowledgements."""

    done: list[Row4] = field(default_factory=list)
    """`(result_json, done_at, id, lock_by)`: status done, result kept, lock cleared."""
    retry: list[Row4] = field(default_factory=list)
    """`(error, run_at, id, lock_by)`: status failed, runs again at run_at, attempts kept."""
    kill: list[Row4] = field(default_factory=list)
    """`(error, done_at, id, lock_by)`: status killed."""
    cancel: list[Row4] = field(default_factory=list)
    """`(reason, done_at, id, lock_by)`: status cancelled (a run stopped by an operator's cancel;
    see `apalis_cli.control`), the cancel request cleared."""
    release: list[tuple[float, TaskId, str | None]] = field(default_factory=list)
    """`(now, id, lock_by)`: status pending, attempts - 1, run_at = min(run_at, now)."""
    wake: bool = False
    """True when some task became ready at once (released, or retried with no delay): pollers
    waiting on this queue should be woken."""

    def __bool__(self) -> bool:
        return bool(self.done or self.retry or self.kill or self.cancel or self.release)

    def rows(self, *, done: bool = True) -> list[AckRow]:
        """Every outcome as an `AckRow` (done ones left out with `done=False`), for a store whose
        one statement applies a batch of mixed outcomes."""
        out: list[AckRow] = []
        if done:
            out += [(task_id, lock_by, "done", result, None, None) for result, _, task_id, lock_by in self.done]
        out += [(task_id, lock_by, "failed", None, error, at) for error, at, task_id, lock_by in self.retry]
        out += [(task_id, lock_by, "killed", None, error, None) for error, _, task_id, lock_by in self.kill]
        out += [(task_id, lock_by, "cancelled", None, error, None) for error, _, task_id, lock_by in self.cancel]
        out += [(task_id, lock_by, "pending", None, None, None) for _, task_id, lock_by in self.release]
        return out


def plan_acks(items: Sequence[tuple[Task[Any], Outcome]], now: float) -> AckPlan:
    """Group `items` by outcome kind into statement parameters (see `AckPlan`)."""
    plan = AckPlan()
    done, retry, kill, release = plan.done, plan.retry, plan.kill, plan.release
    for task, outcome in items:
        kind = outcome.kind
        if kind is OutcomeKind.DONE:
            done.append((encode_result(outcome.result), now, task.id, task.ctx.lock_by))
        elif kind is OutcomeKind.RETRY:
            run_at = outcome.run_at if outcome.run_at is not None else now
            retry.append((outcome.error, run_at, task.id, task.ctx.lock_by))
            if run_at <= now:
                plan.wake = True
        elif kind is OutcomeKind.KILL:
            kill.append((outcome.error, now, task.id, task.ctx.lock_by))
        elif kind is OutcomeKind.CANCEL:
            plan.cancel.append((outcome.error, now, task.id, task.ctx.lock_by))
        else:
            release.append((now, task.id, task.ctx.lock_by))
            plan.wake = True
    return plan
