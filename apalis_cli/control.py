"""The control plane: cancel a task, pause a queue, wait for a result, act on many tasks at once.

Each is a capability (`Capability.CANCEL`, `PAUSE`, `WAIT`, `BULK`) and a protocol below that the
queue-bound backend implements; the CLI and the Python API check both (`isinstance` on the
protocol, `Capabilities.has` for the reason when it is missing). The conformance suite
(`tests/conformance/test_control*.py`; `test_control_store.py` drives the store by hand as a worker
would) proves each on every store that does not declare it lacking.

How to implement the control plane in a store
---------------------------------------------
1. **Cancel** (`Canceller.cancel(task_id, reason) -> CancelResult`):
   - a pending or failed (awaiting its retry, scheduled or not) task becomes `Status.CANCELLED` at
     once, `last_error = reason`, `done_at = now`, in the same atomic step a claim uses (one
     `UPDATE ... WHERE id = ? AND status IN ('pending', 'failed')`, one Lua script): a claim and a
     cancel never both win, so a cancelled task never starts. Answer `CancelResult.cancelled()`.
   - a running task keeps running in the store's eyes: record the request and its reason on the
     task (a `cancel_reason` column, a hash field) and tell the worker holding it (`lock_by`)
     through the store's push path (NOTIFY, pub/sub, the WAL doorbell, a control subject) within
     milliseconds. Answer `CancelResult.requested()`. The worker learns of it through
     `WorkerContext.on_cancel(task_id, reason)`: the store calls it, on the worker's event loop,
     from its listener, and in any case from every heartbeat for each task of `worker.running()`
     that has a cancel requested (a store that cannot push relies on that alone; calling it again
     for the same task is harmless). The worker then stops the run and acknowledges it with an
     `Outcome.cancel(reason)`; if the run ended before the cancel reached it, its own outcome
     stands when final (done, killed), and a retry is written as cancelled instead.
   - a done, killed or cancelled task is left as it is: `CancelResult.already_final(status)`.
   - an unknown id: `CancelResult.not_found()`.
2. **The acknowledgement of a cancelled run** (`OutcomeKind.CANCEL`, `outcome.error` the reason):
   like a kill, only the status is `cancelled` (under the same `WHERE id = ? AND lock_by = ?` as
   every other outcome). A running task with a cancel requested that would run again (its run
   ended in a retry, its worker released it while stopping, or vanished and the orphan sweep
   found it) is cancelled instead, with the requested reason: it never runs again.
3. **Retry** of a cancelled task (`Inspector.retry`, bulk retry) makes it pending as for a killed
   one, with its cancel request cleared.
4. **Pause** (`Pausable.pause()`, `resume()`, `paused()`): the state lives in the store (a
   `queues` row, a Redis key, a KV entry), so it holds for every daemon on every host and survives
   restarts. A paused queue's claim hands out nothing, checked in the claim itself where it can
   be (the same statement or script); pushes are still accepted and running tasks finish. A
   resume wakes the pollers as a push does. A store that learns of the state with a heartbeat
   calls `WorkerContext.on_paused(paused)` so the live view can show it (optional).
5. **Wait** (`Waiter.wait(task_id, timeout) -> Task[bytes] | None`): the task once it is final
   (done, killed, cancelled), at once if it already is; None on timeout or for an unknown id.
   Woken through the store's push path (a NOTIFY on the ack, a pub/sub message, the WAL doorbell);
   polling only where the store cannot push (`wait_by_polling` does it, every 50 ms at most).
6. **Bulk** (`BulkActor.bulk(action, where, dry_run=False, reason=None) -> int`): the number of
   tasks acted on (or, with `dry_run`, that would be). `where.statuses_for(action)` is the set of
   statuses to match; a store writes one statement or script per batch (of at most its own batch
   size), never one round trip per task. `cancel` behaves as `cancel` above for each task (running
   ones get a request and their workers are told); `kill` as `Inspector.kill`; `retry` as
   `Inspector.retry`; `purge` deletes. The reason a cancel or kill leaves on each task is
   `bulk_reason(action, reason)`: the operator's, as every store takes it, or the default one.
7. Until a store does one of these, it declares the capability lacking with the reason
   (`NOT_BUILT`), and the conformance suite skips its cases.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from .errors import storable_text
from .task import Status, Task, TaskId

__all__ = [
    "DEFAULT_CANCEL_REASON",
    "DEFAULT_KILL_REASON",
    "NOT_BUILT",
    "BulkAction",
    "BulkActor",
    "BulkFilter",
    "CancelResult",
    "CancelState",
    "Canceller",
    "Pausable",
    "Waiter",
    "bulk_reason",
    "operator_reason",
    "statuses_text",
    "tell_cancel",
    "wait_by_polling",
]

_TELL_AGAIN = 0.05
_TELL_TRIES = 40
"""A cancel that reaches a worker between handing a task out and starting it is told again, every
50 ms for up to 2 s (the heartbeat tells it anyway, but later)."""

NOT_BUILT = "not built yet for this store"
"""The reason a store gives for a control capability it does not implement yet."""

DEFAULT_CANCEL_REASON = "cancelled by an operator"
DEFAULT_KILL_REASON = "killed by an operator"


class CancelState(StrEnum):
    """What a cancel did."""

    CANCELLED = "cancelled"  # it had not started: it is cancelled now and will never start
    REQUESTED = "requested"  # it is running: the cancel is recorded and its worker told
    ALREADY_FINAL = "already_final"  # done, killed or cancelled before: nothing changed
    NOT_FOUND = "not_found"  # no task with this id in the queue


@dataclass(frozen=True, slots=True)
class CancelResult:
    """The answer to a cancel: what happened, and the task's status now (None: not found)."""

    state: CancelState
    status: Status | None = None

    @classmethod
    def cancelled(cls) -> CancelResult:
        """A task that had not started is cancelled."""
        return cls(CancelState.CANCELLED, Status.CANCELLED)

    @classmethod
    def requested(cls) -> CancelResult:
        """A running task's worker was asked to stop it."""
        return cls(CancelState.REQUESTED, Status.RUNNING)

    @classmethod
    def already_final(cls, status: Status) -> CancelResult:
        """The task had already ended with `status`."""
        return cls(CancelState.ALREADY_FINAL, status)

    @classmethod
    def not_found(cls) -> CancelResult:
        """No such task."""
        return cls(CancelState.NOT_FOUND, None)

    @property
    def changed(self) -> bool:
        """True when the cancel took effect (cancelled, or requested of a running task)."""
        return self.state in (CancelState.CANCELLED, CancelState.REQUESTED)


class BulkAction(StrEnum):
    """What a bulk request does to each task it matches."""

    RETRY = "retry"
    CANCEL = "cancel"
    KILL = "kill"
    PURGE = "purge"

    @property
    def applies_to(self) -> frozenset[Status]:
        """The statuses this action can change; `BulkFilter.statuses` narrows them."""
        return _APPLIES_TO[self]

    @property
    def default_statuses(self) -> frozenset[Status]:
        """What the action matches when the filter names no status."""
        return _DEFAULTS[self]

    @property
    def takes_reason(self) -> bool:
        """True for the actions that leave a reason on the tasks they end (cancel, kill)."""
        return self in (BulkAction.CANCEL, BulkAction.KILL)


_APPLIES_TO = {
    BulkAction.RETRY: frozenset({Status.FAILED, Status.KILLED, Status.CANCELLED}),
    BulkAction.CANCEL: frozenset({Status.PENDING, Status.FAILED, Status.RUNNING}),
    BulkAction.KILL: frozenset({Status.PENDING, Status.FAILED, Status.RUNNING}),
    BulkAction.PURGE: frozenset(set(Status) - {Status.RUNNING}),
}
_DEFAULTS = {
    # Retrying `failed` tasks (which retry by themselves) is asked for by name only.
    BulkAction.RETRY: frozenset({Status.KILLED, Status.CANCELLED}),
    BulkAction.CANCEL: _APPLIES_TO[BulkAction.CANCEL],
    BulkAction.KILL: _APPLIES_TO[BulkAction.KILL],
    # Purging work still to do is asked for by name only.
    BulkAction.PURGE: frozenset({Status.DONE, Status.KILLED, Status.CANCELLED}),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkFilter:
    """Which tasks of a queue a bulk action takes. Every condition given must hold.

    - `statuses`: the statuses to match (empty: the action's `default_statuses`); a status the
      action cannot change is ignored (`statuses_for`).
    - `since` / `until`: epoch seconds, inclusive, compared with the task's last change the
      store keeps: `done_at` when it has one, `created_at` otherwise (as `purge` does).
    - `error_contains`: a substring of `last_error`, ignoring case (ASCII letters at least).
    - `limit`: act on at most this many tasks (None: all that match); which ones is the store's
      choice, oldest first where it can.
    """

    statuses: frozenset[Status] = frozenset()
    since: float | None = None
    until: float | None = None
    error_contains: str | None = None
    limit: int | None = None

    def statuses_for(self, action: BulkAction) -> frozenset[Status]:
        """The statuses `action` matches under this filter (maybe empty: then nothing matches)."""
        if not self.statuses:
            return action.default_statuses
        return self.statuses & action.applies_to

    def matches(self, task: Task[bytes], action: BulkAction) -> bool:
        """True when `task` is one `action` takes under this filter (a store that filters in
        Python, such as memory, uses this; a SQL store says the same in its WHERE clause)."""
        ctx = task.ctx
        if ctx.status not in self.statuses_for(action):
            return False
        changed = ctx.done_at if ctx.done_at is not None else ctx.created_at
        if (self.since is not None and changed < self.since) or (self.until is not None and changed > self.until):
            return False
        if self.error_contains is not None:
            return self.error_contains.lower() in (ctx.last_error or "").lower()
        return True


@runtime_checkable
class Canceller(Protocol):
    """Cancels a task by id (`Capability.CANCEL`)."""

    async def cancel(self, task_id: TaskId, reason: str = DEFAULT_CANCEL_REASON) -> CancelResult:
        """Cancel `task_id`: at once if it has not started, by asking its worker if it runs."""
        ...


@runtime_checkable
class Pausable(Protocol):
    """Pauses and resumes a queue, the state kept in the store (`Capability.PAUSE`)."""

    async def pause(self) -> None:
        """Claims hand out nothing from now on (pushes are accepted, running tasks finish)."""
        ...

    async def resume(self) -> None:
        """Claims hand out tasks again; waiting workers are woken."""
        ...

    async def paused(self) -> bool:
        """True while the queue is paused."""
        ...


@runtime_checkable
class Waiter(Protocol):
    """Waits for a task to end (`Capability.WAIT`)."""

    # A timeout parameter (not the caller's asyncio.timeout): a store that polls must know when to
    # stop, and a timeout is an answer (None) here, not an error.
    async def wait(self, task_id: TaskId, timeout: float | None = None) -> Task[bytes] | None:  # noqa: ASYNC109
        """The task once it is done, killed or cancelled; None after `timeout` seconds (None:
        no limit) or when there is no such task."""
        ...


@runtime_checkable
class BulkActor(Protocol):
    """Retries, cancels, kills or purges every task a filter matches (`Capability.BULK`)."""

    async def bulk(
        self, action: BulkAction, where: BulkFilter, *, dry_run: bool = False, reason: str | None = None
    ) -> int:
        """How many tasks `action` changed (with `dry_run`: would change, changing nothing).
        `reason` (cancel and kill only) is kept on each task it ends: see `bulk_reason`."""
        ...


def bulk_reason(action: BulkAction, reason: str | None = None) -> str:
    """The reason a bulk cancel or kill leaves on each task it ends (its last error, a running
    task's cancel request): the operator's `reason` as every store takes it (`storable_text`,
    as a run's error is kept), or the default one. ValueError for a blank reason, or a reason
    given to an action that keeps none (retry, purge)."""
    if reason is not None and not action.takes_reason:
        raise ValueError(f"a bulk {action.value} keeps no reason (cancel and kill do)")
    return operator_reason(reason, DEFAULT_KILL_REASON if action is BulkAction.KILL else DEFAULT_CANCEL_REASON)


def operator_reason(reason: str | None, default: str) -> str:
    """An operator's reason for a cancel or a kill as every store keeps it (`storable_text`, as a
    run's error is kept: no NUL, at most `MAX_ERROR_CHARS`), or `default` when none is given.
    ValueError for a blank one."""
    if reason is None:
        return default
    if not reason.strip():
        raise ValueError("a reason cannot be blank")
    return storable_text(reason)


def statuses_text(statuses: Collection[Status]) -> str:
    """Statuses as a stable, readable list (for messages)."""
    return ", ".join(sorted(status.value for status in statuses))


async def wait_by_polling(
    get: Callable[[TaskId], Awaitable[Task[bytes] | None]],
    task_id: TaskId,
    timeout: float | None,  # noqa: ASYNC109 - as Waiter.wait: a timeout is an answer here
    *,
    every: float = 0.05,
) -> Task[bytes] | None:
    """`Waiter.wait` for a store that cannot push: `get(task_id)` until the task is final,
    starting at 5 ms between reads and doubling up to `every`; None on timeout or when there
    is no such task."""
    import asyncio  # here: the command line imports this module, and starts faster without asyncio

    deadline = None if timeout is None else time.monotonic() + timeout
    pause = min(0.005, every)
    while True:
        task = await get(task_id)
        if task is None or task.ctx.status.is_final:
            return task
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            pause = min(pause, left)
        await asyncio.sleep(pause)
        pause = min(pause * 2, every)


class Told(Protocol):
    """What `tell_cancel` needs of a worker (`WorkerContext` has it)."""

    @property
    def running(self) -> Callable[[], Collection[TaskId]]:
        """The ids of the tasks the worker holds (started or about to be)."""
        ...

    @property
    def on_cancel(self) -> Callable[[TaskId, str], object]:
        """Stop the run of a task; False when the worker does not run it (yet)."""
        ...


def tell_cancel(worker: Told, task_id: TaskId, reason: str, tries: int = _TELL_TRIES) -> None:
    """`worker.on_cancel`, told again shortly while the worker holds the task without having
    started it (it ignores a cancel of a task it does not run yet): for a store whose listener
    hears of a cancel once (a NOTIFY, a control subject)."""
    if worker.on_cancel(task_id, reason) is False and tries > 0 and task_id in worker.running():
        import asyncio  # here: the command line imports this module, and starts faster without asyncio

        asyncio.get_running_loop().call_later(_TELL_AGAIN, tell_cancel, worker, task_id, reason, tries - 1)
