"""What the shared SQL queue asks of one server's `Database` (PostgreSQL, MySQL/MariaDB), and
what one process knows of its workers and waiters (`Controls`).

The queue, its inspector and its heartbeat are written once (`queue`, `inspector`); each store's
`connection.Database` holds the pool, runs named statements of its `sql/` files with retries,
and answers the few questions whose SQL differs in more than its text: how a batch is inserted,
how a claim locks and returns its rows, how one statement applies a batch of acknowledgements
(and claims ahead), how a transaction is opened, and how other processes are woken (NOTIFY; or
not at all, where they find work by polling).

Parameters are always named (`%(queue)s`); a list value is an array for PostgreSQL and an
`IN (...)` list for MySQL (its `Database` binds it so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from apalis_cli.ahead import Held
from apalis_cli.backend import NewTask, WorkerContext
from apalis_cli.contact import Contact
from apalis_cli.polling import Waker
from apalis_cli.task import Task, TaskId

from .acks import AckPlan

__all__ = [
    "Backlog",
    "BeatAsk",
    "Beaten",
    "Controls",
    "Handing",
    "Rows",
    "Session",
    "SqlDatabase",
    "WholeBeat",
    "WholeClaims",
    "told_reason",
]

_TOLD_BYTES = 6000
"""The most a cancel's reason takes of a control message (PostgreSQL refuses a NOTIFY payload of
8,000 bytes or more; the rest of the message is the worker's and the task's names)."""

T = TypeVar("T")
Rows = Sequence[Sequence[Any]]


class Backlog(Held):
    """Tasks claimed ahead for one polling worker, and whether its last claim got all it asked
    for (`backlog`). A store that claims ahead only then (`SqlDatabase.ahead_on_backlog`) keeps
    its acks one statement while tasks trickle in: a locking select in every ack would find
    nothing and cost the server for nothing."""

    __slots__ = ("backlog",)

    def __init__(self, worker_id: str, waker: Waker) -> None:
        super().__init__(worker_id, waker)
        self.backlog = False


class Controls:
    """This process's workers by id (told of cancels of their runs) and waiters by task id."""

    __slots__ = ("_waiters", "workers")

    def __init__(self) -> None:
        self.workers: dict[str, WorkerContext] = {}
        self._waiters: dict[TaskId, set[asyncio.Event]] = {}

    @contextlib.contextmanager
    def waiting(self, task_id: TaskId) -> Iterator[asyncio.Event]:
        """An event set when `task_id` is said to have ended, for the duration of the block."""
        event = asyncio.Event()
        self._waiters.setdefault(task_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._waiters.get(task_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[task_id]

    def waited(self) -> list[TaskId]:
        """The tasks waited for in this process."""
        return list(self._waiters)

    def ended(self, task_id: TaskId) -> None:
        """`task_id` ended: its waiters read it again."""
        for event in self._waiters.get(task_id, ()):
            event.set()

    def wake_waiters(self) -> None:
        """Every waiter reads its task again (a notification may have been missed)."""
        for events in self._waiters.values():
            for event in events:
                event.set()

    def cancel(self, worker_id: str | None, task_id: TaskId, reason: str) -> None:
        """Tell `worker_id`, if it runs in this process, that the run of `task_id` is cancelled."""
        worker = self.workers.get(worker_id or "")
        if worker is not None:
            worker.on_cancel(task_id, reason)

    def told(self, payload: str) -> None:
        """A message of the control channel: `d<id>` (a task ended) or `["c", worker, id, reason]`."""
        if payload.startswith("d"):
            self.ended(payload[1:])
            return
        with contextlib.suppress(ValueError, TypeError):
            kind, worker_id, task_id, reason = json.loads(payload)
            if kind == "c":
                self.cancel(worker_id, task_id, reason)


def told_reason(reason: str) -> str:
    """`reason` as a control message carries it to the worker running the task: whole, unless its
    JSON text passes `_TOLD_BYTES` (a long reason of emoji, or of control characters escaped in
    six bytes each), then its start. The task's row keeps it whole, and its heartbeats tell it."""
    if len(reason) * 6 <= _TOLD_BYTES:
        return reason
    used = 0
    for at, char in enumerate(reason):
        used += len(json.dumps(char, ensure_ascii=False).encode("utf-8", "surrogatepass")) - 2
        if used > _TOLD_BYTES:
            return reason[:at]
    return reason


class Session(Protocol):
    """Named statements on one connection (in a transaction where the store opens one)."""

    async def execute(self, name: str, params: Mapping[str, Any]) -> int:
        """Run the statement; the rows it changed (or returned)."""
        ...

    async def fetch(self, name: str, params: Mapping[str, Any]) -> Rows:
        """Run the statement; its rows."""
        ...


class WholeClaims(Protocol):
    """A store whose limited claim is one call of a server-side function, `limit_claim`
    (PostgreSQL, pgmq): no transaction of statements, one round trip (`apalis_sql.limits`)."""

    def lock_scope(self, lock: str, queue: str) -> str:
        """The scope of the advisory lock `locked` takes for `lock` and `queue`."""
        ...

    def ack_statement(self, queue: str, plan: AckPlan) -> tuple[str, dict[str, Any]]:
        """The statement that applies `plan` (`NAME_limit_claim` carries it) and its parameters."""
        ...

    async def fetch(self, name: str, params: Mapping[str, Any]) -> Rows:
        """All rows of the named statement."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class BeatAsk:
    """What one heartbeat sends, read just before it is sent (at each try): the statements'
    parameters, as `SqlQueue.heartbeat` gives them to `beat`, `cancels_requested`, `paused`,
    `release_lost`, `sweep_lock`, `recover`, `forget_workers` and `purge_expired`."""

    seen: Mapping[str, Any]
    """The worker's registry row, with how many tasks it runs or holds (`beat`)."""
    runs: list[str]
    """The tasks it runs: which have a cancel requested."""
    lost: Mapping[str, Any]
    """Its lost claims (`release_lost`)."""
    sweep: bool
    """Whether this process may sweep now (`Contact.may_sweep`)."""
    lock: Mapping[str, Any]
    """The queue's sweep lock."""
    stale: Mapping[str, Any]
    """The queue and `stale_after` (`recover`, `forget_workers`)."""
    retention: float
    keep_alive: float
    """A sweep that took longer beats again before it frees the lock."""


@dataclass(frozen=True, slots=True)
class Beaten:
    """What a heartbeat did."""

    woke: bool
    """It made tasks ready (released lost claims, recovered orphans)."""
    cancels: Rows
    """The runs with a cancel requested: (id, reason)."""
    paused: bool
    swept: bool


class WholeBeat(Protocol):
    """A store whose heartbeat is one round trip (MySQL/MariaDB: one script): its statements
    as `SqlQueue.heartbeat` runs them one by one elsewhere, the sweep under its lock only where
    the lock was free."""

    async def beat(self, ask: Callable[[], BeatAsk]) -> Beaten:
        """Beat with `ask()` (called at each try), retried while the connection is lost."""
        ...


class Handing(Protocol):
    """A store whose push may hand its task to an idle worker (PostgreSQL: `apalis_postgres.handing`)."""

    def enlist(self, queue: str, worker: WorkerContext, give: Callable[[str, list[Task[bytes]]], None]) -> None:
        """Pushes may hand `worker` its tasks from now on, given to it by `give(worker_id, tasks)`."""
        ...

    def received(self, worker_id: str) -> str | None:
        """The id of the last task handed to the worker that it received (its heartbeat's
        `release_lost` leaves alone one handed to it since: its notice is on the way)."""
        ...

    async def unlist(self, worker_id: str) -> None:
        """The worker's poll stream closed: nothing more is handed to it."""
        ...

    async def farewell(self, worker_id: str, *, stopped: bool) -> None:
        """The worker says farewell: a task handed to it and never received goes back; with
        `stopped` (its poll stream closed too) it is forgotten."""
        ...


class SqlDatabase(Protocol):
    """One server's pool, statements and dialect, as the shared queue uses them."""

    contact: Contact
    """This process's contact with the server: the orphan sweep waits for a steady one."""
    ahead_on_backlog: bool
    """Claim ahead in an ack only for a worker whose last claim came back full."""
    releases_sweep_lock: bool
    """The sweep lock outlives the transaction: `sweep_unlock` frees it after the sweep."""
    purges_beside: bool
    """The sweep's purge of expired tasks runs beside the heartbeat, in statements of at most
    `limit` tasks, rather than in the beat's own session (`SqlQueue._tidy_beside`)."""
    controls: Controls
    """This process's workers and waiters, told by the listener where the server can push."""
    wait_polls: tuple[float, float]
    """A waiter reads its task again after the first of these, then twice as long each time,
    up to the second (polling where the server cannot push; a safety net where it can)."""
    bulk_batch: int
    """How many tasks one statement of a bulk action changes at most."""
    claims_by_select: bool
    """The limited claim statements lock their rows and `limit_mark` claims them (no UPDATE
    ... RETURNING), rather than claim them themselves (`apalis_sql.limits`)."""

    @property
    def whole_claims(self) -> WholeClaims | None:
        """The store itself where its limited claim is one call (`apalis_sql.limits.WholeClaims`)."""
        ...

    @property
    def whole_beat(self) -> WholeBeat | None:
        """The store itself where a heartbeat is one round trip (None: one per statement)."""
        ...

    @property
    def handing(self) -> Handing | None:
        """Pushes hand their task to idle workers (None: the store's workers always claim)."""
        ...

    async def open(self) -> list[int]:
        """Connect and migrate; the migrations applied now."""
        ...

    async def close(self) -> None:
        """Close every connection."""
        ...

    def waker(self, queue: str) -> Waker:
        """The in-process `Waker` of `queue`."""
        ...

    def listen(self, queue: str | None = None) -> object:
        """Start hearing other processes' control messages and wake-ups (of `queue`, where the
        store listens per queue), where the server can push them."""
        ...

    async def listening(self) -> None:
        """Return once other processes' messages are heard (at once where the server cannot
        push them, or after a short wait for a listener that cannot connect)."""
        ...

    async def fetch(self, name: str, params: Mapping[str, Any]) -> Rows:
        """All rows of the named statement, retried while the connection is lost."""
        ...

    async def execute(self, name: str, params: Mapping[str, Any]) -> int:
        """Run the named statement, retried; the rows it changed (or returned)."""
        ...

    async def session(self, op: Callable[[Session], Awaitable[T]]) -> T:
        """`op` on one connection (a transaction where the dialect wants one), retried whole."""
        ...

    async def notify(self, queue: str) -> None:
        """Wake the pollers of `queue`, here and (where the server can push) in other processes."""
        ...

    async def tidy(self) -> None:
        """After a sweep: clean up the row versions claims and acks left, where the server
        would not by itself (PostgreSQL with autovacuum off). Run beside the heartbeat, which
        never waits for it (`SqlQueue._tidy_beside`); it reports its own failures."""
        ...

    async def notify_control(self) -> None:
        """Tell other processes to look at their runs' cancels and their waiters' tasks (after a
        cancel or an end that the statement itself did not announce, as PostgreSQL's do)."""
        ...

    async def locked(
        self, lock: str, queue: str, key: str, op: Callable[[Session], Awaitable[T]], *, durable: bool
    ) -> T:
        """`op` in one transaction holding the lock `lock` of `queue` and `key` (`limits`: the
        queue's limited claims; `unique`: a unique key's pushes) from before its first read to
        after its commit, retried whole; `durable`: its commit waits for the log flush as a
        push's does (a claim's need not)."""
        ...

    def sweep_params(self, queue: str) -> dict[str, Any]:
        """The parameters of `sweep_lock` (and `sweep_unlock`, where the store has one)."""
        ...

    async def insert(self, queue: str, tasks: Sequence[NewTask]) -> int:
        """Insert `tasks`, skipping ids and keys already stored, and wake other processes;
        how many rows were inserted."""
        ...

    async def claim(self, queue: str, worker_id: str, limit: int) -> list[Task[bytes]]:
        """Up to `limit` ready tasks locked for `worker_id`, highest priority and oldest first."""
        ...

    async def ack(self, queue: str, plan: AckPlan, slots: Sequence[tuple[str, int]]) -> list[list[Task[bytes]]]:
        """Apply `plan` and, in the same write, claim up to `n` tasks for each `(worker_id, n)`
        of `slots`; the tasks claimed per slot, in claim order."""
        ...
