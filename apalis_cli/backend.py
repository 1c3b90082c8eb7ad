"""The contract between the core and a store.

A `Store` is what one `[backends.NAME]` table builds: connections, pools, listeners, shared by
every queue on it. `Store.backend(queue, ...)` gives a queue-bound object that implements the
protocols below, each a capability checked with `isinstance`:

- `Backend` / `BackendExt`: what a worker needs (poll, heartbeat, the acknowledging layer).
- `TaskSink`: push tasks (cron without `pipe_to` has none).
- `Inspector`: list/get/stats/workers/retry/kill/purge (a broker may lack random access).
- The control plane (`apalis_cli.control`, re-exported here): `Canceller`, `Pausable`, `Waiter`,
  `BulkActor`; how a store implements them is told in that module's docstring.

A store may offer more than queues of its own: a `PipeSource` (cron) feeds another store's queue.

What a store cannot do is declared in its `Capabilities`, each with the reason; the conformance
suite skips exactly those cases and the CLI prints that reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypedDict, Unpack, final, runtime_checkable

from .codec import Codec
from .control import (
    DEFAULT_KILL_REASON,
    NOT_BUILT,
    BulkAction,
    BulkActor,
    BulkFilter,
    Canceller,
    CancelResult,
    CancelState,
    Pausable,
    Waiter,
)
from .service import Layer
from .task import Status, Task, TaskId

if TYPE_CHECKING:
    from .fleet.limits import FleetLimits
    from .fleet.unique import Unique

__all__ = [
    "CONTROL_NOT_BUILT",
    "OPT_IN",
    "Backend",
    "BackendExt",
    "BulkAction",
    "BulkActor",
    "BulkFilter",
    "CancelResult",
    "CancelState",
    "Canceller",
    "Capabilities",
    "Capability",
    "Inspector",
    "NewTask",
    "Pausable",
    "PipeSource",
    "Preparable",
    "PushOptions",
    "QueueStats",
    "Store",
    "StoreSpec",
    "TaskSink",
    "Waiter",
    "WorkerContext",
    "WorkerInfo",
]


class Capability(StrEnum):
    """Things a store may or may not be able to do."""

    SCHEDULE = "schedule"  # run_at / delay honoured
    PRIORITY = "priority"  # higher priority first among ready tasks
    RESULTS = "results"  # a handler's return value is kept
    IDEMPOTENCY = "idempotency"  # the same key twice makes one task
    INSPECT = "inspect"  # list/get without consuming
    ORPHANS = "orphans"  # a vanished worker's tasks come back after stale_after
    WORKERS = "workers"  # a registry of workers with heartbeats
    ADMIN = "admin"  # retry/kill/purge by id or status
    MAX_ATTEMPTS = "max_attempts"  # attempts counted and exhausted tasks killed
    RECONNECT = "reconnect"  # a dropped connection is re-established by itself
    OWNED_LEASES = "owned_leases"  # a lease names its worker: a claim whose reply was lost is
    # handed back by that worker without counting an attempt (an anonymous lease cannot be)
    CANCEL = "cancel"  # cancel a task: never starts if pending, its worker stops it if running
    PAUSE = "pause"  # pause/resume a queue, the state kept in the store
    WAIT = "wait"  # wait for a task to end, woken by the store
    BULK = "bulk"  # retry/cancel/kill/purge by filter, a statement per batch
    CLAIMS_AHEAD = "claims_ahead"  # the write that acknowledges a worker's runs also claims the
    # tasks for the slots they free (apalis_cli/ahead.py): a busy worker saves a round trip a batch
    FLEET_LIMITS = "fleet_limits"  # scope = "global" rate and concurrency limits, per key, held
    # by the claim itself for every daemon at once (`apalis_cli.fleet`)
    UNIQUE = "unique"  # push(unique=...): one task per key per window, from the store's rows


CONTROL_NOT_BUILT: Mapping[Capability, str] = {
    Capability.CANCEL: NOT_BUILT,
    Capability.PAUSE: NOT_BUILT,
    Capability.WAIT: NOT_BUILT,
    Capability.BULK: NOT_BUILT,
}
"""The control plane as lacking, for a store that has not implemented it yet (spread it into the
store's `Capabilities`, and drop it, or the entries it has done, once it has)."""


OPT_IN: Mapping[Capability, str] = {
    Capability.FLEET_LIMITS: "its claim does not enforce global limits yet",
    Capability.UNIQUE: "its push does not check unique keys yet",
}
"""Capabilities a store has only by saying so (`Capabilities(offers=...)`), with the reason given
for a store that does not: a store written before them (a third party's too) cannot hold them,
and must not be taken to."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a store lacks, each with the reason; everything not listed is offered, except the
    `OPT_IN` capabilities, offered only when named in `offers`."""

    lacking: Mapping[Capability, str] = field(default_factory=dict)
    offers: frozenset[Capability] = frozenset()

    def has(self, capability: Capability) -> bool:
        """True when the store offers `capability`."""
        return capability not in self.lacking and (capability not in OPT_IN or capability in self.offers)

    def why_not(self, capability: Capability) -> str | None:
        """Why the store lacks `capability`, or None when it has it."""
        if capability in self.lacking:
            return self.lacking[capability]
        if capability in OPT_IN and capability not in self.offers:
            return OPT_IN[capability]
        return None


async def _no_wait() -> None:
    """A slot is free (a context without a worker: `free_slots` answers for it)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerContext:
    """Who is asking: one running worker instance, with the settings stores need to honour.

    `free_slots()` is how many more tasks the worker can start now: a poll fetches at most that
    many (backpressure). `running()` is the ids the worker is running now: a heartbeat extends
    their leases and may release tasks locked by this worker that it is not running.

    `on_cancel(task_id, reason)` is how a store tells the worker that a task it runs was
    cancelled (from its listener, and from each heartbeat while the request stands); the worker
    stops that run and acknowledges it cancelled, and ignores ids it does not run. `on_paused`
    tells it whether its queue is paused, for the live view (the store's claim enforces it).
    Both are called on the worker's event loop.

    `start(task)` starts a task the store claimed for the worker at once, in the caller's
    callback (a task handed over on push, as its message is read: `ClaimsAhead.start`), and says
    whether it did: False when no slot is free or the worker is not taking tasks now (the store
    then gives it to the poll stream, as before). `slot()` waits until a slot is free: a poll
    stream whose slots such starts took waits there before it claims again.
    """

    id: str
    name: str
    queue: str
    concurrency: int = 1
    keep_alive: float = 10.0
    stale_after: float = 30.0
    poll_interval: float = 1.0
    retention: float = 7 * 86400.0
    host: str = ""
    pid: int = 0
    started_at: float = 0.0
    layers: tuple[str, ...] = ()
    free_slots: Callable[[], int] = lambda: 1
    running: Callable[[], Collection[TaskId]] = lambda: ()
    on_cancel: Callable[[TaskId, str], object] = lambda task_id, reason: None
    on_paused: Callable[[bool], None] = lambda paused: None
    start: Callable[[Task[bytes]], bool] = lambda task: False
    slot: Callable[[], Awaitable[None]] = _no_wait
    limits: FleetLimits | None = None
    """The worker's `scope = "global"` limits, which its store's claim enforces."""


@final  # its __init__ relies on the layout of exactly these slots
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class NewTask:
    """A task about to be pushed, already encoded."""

    id: TaskId
    payload: bytes
    run_at: float
    priority: int = 0
    max_attempts: int = 1
    idempotency_key: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    limit_key: str | None = None
    """The key its queue's global limits count it under (None: pushed without one)."""
    unique: Unique | None = None
    """One task per key per window (`apalis_cli.fleet.unique`)."""
    waited: bool = False
    """Someone will wait for its end: a store that deletes a done task (rsmq) keeps this one's end
    for the wait, even when the run ends before the wait is registered."""

    def __init__(
        self,
        *,
        id: TaskId,
        payload: bytes,
        run_at: float,
        priority: int = 0,
        max_attempts: int = 1,
        idempotency_key: str | None = None,
        meta: Mapping[str, Any] | None = None,
        limit_key: str | None = None,
        unique: Unique | None = None,
        waited: bool = False,
    ) -> None:
        # One is built for every task pushed with options (and every task of a batch). The
        # generated __init__ of a frozen dataclass sets each field through object.__setattr__:
        # 19,000 of the 32,000 instructions of `sink.new_task`; written while the object is its
        # unfrozen twin, as `TaskContext.__init__` does (bench/README.md, "Redis, session 14").
        cls = type(self)
        object.__setattr__(self, "__class__", _UnfrozenNewTask)
        new: Any = self
        new.id = id
        new.payload = payload
        new.run_at = run_at
        new.priority = priority
        new.max_attempts = max_attempts
        new.idempotency_key = idempotency_key
        new.meta = {} if meta is None else meta
        new.limit_key = limit_key
        new.unique = unique
        new.waited = waited
        object.__setattr__(self, "__class__", cls)


class _UnfrozenNewTask:
    """NewTask's slots without its frozen __setattr__: only ever seen inside its __init__."""

    __slots__ = NewTask.__slots__


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """A worker as the store's registry knows it."""

    id: str
    name: str
    queue: str
    host: str
    pid: int
    started_at: float
    last_seen: float
    layers: tuple[str, ...] = ()
    running: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStats:
    """How many tasks a queue holds in each status (None: the store cannot count it).

    `scheduled` is how many of the tasks waiting to run (pending, or failed and waiting for their
    retry) have a `run_at` still to come: delayed pushes and retries in their backoff. None where
    the store cannot tell them from the tasks that are due.
    """

    queue: str
    counts: Mapping[Status, int | None]
    scheduled: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreSpec:
    """One `[backends.NAME]` table: its kind, its URL and the store's own options."""

    name: str
    kind: str
    url: str
    options: Mapping[str, Any] = field(default_factory=dict)
    base_dir: Path = field(default_factory=Path.cwd)


@runtime_checkable
class Backend(Protocol):
    """The minimum a worker needs from a store, for one queue."""

    def poll(self, worker: WorkerContext) -> AsyncIterator[Task[Any] | None]:
        """Decoded tasks as they become ready; None each time the queue is found idle.

        A task whose payload cannot be decoded is killed in the store ("decode error: ..."), as
        the worker kills it, and the stream goes on. The worker itself takes `poll_compact`
        (worker.py says why); the conformance suite proves both on every store."""
        ...

    def heartbeat(self, worker: WorkerContext) -> AsyncIterator[None]:
        """One item per successful beat, every `keep_alive`; an exception is a failed beat."""
        ...

    def middleware(self) -> Layer:
        """The store's own layer, outermost: it acknowledges each run's final outcome."""
        ...


@runtime_checkable
class BackendExt(Backend, Protocol):
    """A backend whose payloads are compact bytes under a codec."""

    codec: Codec
    queue: str
    capabilities: Capabilities

    def get_queue(self) -> str:
        """The queue this backend is bound to."""
        ...

    def poll_compact(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        """Tasks with their stored bytes, undecoded; None each time the queue is found idle."""
        ...


class PushOptions(TypedDict, total=False):
    """What a push may say about its task besides the payload; each is optional."""

    run_at: float | None  # when it is due (epoch seconds); not with `delay`
    delay: float | None  # due this many seconds from now; not with `run_at`
    priority: int  # higher first among ready tasks (default 0)
    max_attempts: int | None  # runs before it is killed (default: the queue's)
    task_id: TaskId | None  # its id (default: a new one)
    idempotency_key: str | None  # the same key twice makes one task
    meta: Mapping[str, Any] | None  # kept with the task, shown by inspect
    limit_key: str | None  # the key its queue's global limits count it under (apalis_cli.fleet)
    unique: Unique | Mapping[str, Any] | None  # one task per key per window (apalis_cli.fleet.unique)
    waited: bool  # someone will wait for its end (`Sink.push(wait=True)`): kept even where done is deleted


@runtime_checkable
class TaskSink(Protocol):
    """Pushes tasks into a queue."""

    async def push(self, args: Any, **options: Unpack[PushOptions]) -> TaskId:
        """Encode `args` and enqueue it; returns the id (the existing one for a known key, or
        for a `unique` duplicate)."""
        ...

    async def push_bulk(self, items: Iterable[Any], **options: Unpack[PushOptions]) -> list[TaskId]:
        """Enqueue many argument values with the same options, in as few round trips as can be."""
        ...

    async def push_compact(self, compact: bytes, **options: Unpack[PushOptions]) -> TaskId:
        """Enqueue already-encoded bytes as they are."""
        ...

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[TaskId]:
        """The store's primitive: insert encoded tasks, returning their ids in order."""
        ...


@runtime_checkable
class Inspector(Protocol):
    """Answers questions about a queue without consuming it (`list_tasks`, not `list`, keeps the
    builtin usable in annotations)."""

    async def list_tasks(self, status: Status | None = None, limit: int = 50, offset: int = 0) -> list[Task[bytes]]:
        """Tasks in the queue (optionally of one status), oldest run_at first."""
        ...

    async def get(self, task_id: TaskId) -> Task[bytes] | None:
        """One task by id."""
        ...

    async def stats(self) -> QueueStats:
        """Counts per status."""
        ...

    async def workers(self) -> list[WorkerInfo]:
        """The workers registered on this queue."""
        ...

    async def retry(self, task_id: TaskId) -> bool:
        """Make a failed or killed task pending again now, attempts reset; False if not found."""
        ...

    async def kill(self, task_id: TaskId, reason: str = DEFAULT_KILL_REASON) -> bool:
        """Kill a pending, failed or running task; False if not found or already final."""
        ...

    async def purge(self, status: Status, older_than: float | None = None) -> int:
        """Delete tasks of `status` finished (or created) more than `older_than` seconds ago."""
        ...


@runtime_checkable
class Preparable(Protocol):
    """A queue that exists in its broker apart from the tasks in it (an AMQP queue, a NATS
    stream and consumer, an rsmq or pgmq queue): `apalis check` creates it, so another program
    can send to it before any worker ran."""

    async def prepare(self) -> None:
        """Create the queue (and what it needs) unless it exists; idempotent."""
        ...


@runtime_checkable
class PipeSource(Protocol):
    """A store whose worker consumes another store's queue, which this store feeds (cron with
    `pipe_to`: its ticks are pushed into a durable store's queue)."""

    def pipe(self, sink: BackendExt) -> BackendExt:
        """The backend a worker consumes: `sink`'s queue, with this store feeding it."""
        ...


class Store(Protocol):
    """What a `[backends.NAME]` table builds: the connections every queue on it shares."""

    kind: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> Store:
        """Validate the table (raising `ConfigError(key=...)`) and build the store, unopened."""
        ...

    async def open(self) -> None:
        """Connect and create or migrate what the store needs; idempotent."""
        ...

    async def close(self) -> None:
        """Release every connection."""
        ...

    def backend(self, queue: str, *, codec: Codec, max_attempts: int = 1) -> BackendExt:
        """The queue-bound backend; `max_attempts` is the default for pushes without one."""
        ...
