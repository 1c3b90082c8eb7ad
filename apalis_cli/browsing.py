"""What a board asks a queue beyond the `Inspector`: pages of tasks by a keyset, and activity.

Capabilities, each a protocol checked with `isinstance` like the others in `backend.py`:

- `TaskBrowser`: tasks matching a `TaskSearch`, a page at a time after a `PageCursor` (the
  `(run_at, id)` of the last task seen), so the thousandth page costs what the first does: no
  OFFSET that makes the store walk and drop every earlier row.
- `CursorBrowser`: the same, in an order and by a cursor the store defines, for a store that
  keeps no index on `(run_at, id)` (Redis keeps a sorted set per state, each in its own order).
- `ActivitySource`: the run_at of the oldest task ready now, and how many tasks finished done or
  failed (killed) in each minute since a time.

A cron store is a `TickSource`: the board shows its next ticks.

A store that has neither is still shown, through `Inspector.list_tasks` (by offset) and `stats`.
`TaskSearch.select` is the reference meaning of a search: the memory store selects with it, and
a caller selects with it from what a store that cannot browse lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .task import Status, Task, TaskId

__all__ = [
    "ActivitySource",
    "BrowsedPage",
    "CursorBrowser",
    "MinuteCounts",
    "PageCursor",
    "QueueActivity",
    "TaskBrowser",
    "TaskSearch",
    "TickSource",
    "exact_page",
    "fold_ascii",
    "like_pattern",
    "previewed",
]

FAILED_FOR_GOOD = frozenset({Status.KILLED})
"""The final statuses counted as failures in `QueueActivity.per_minute`."""


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Where a page ended: the `(run_at, id)` of its last task, the key the pages are ordered by."""

    run_at: float
    id: TaskId

    @classmethod
    def of(cls, task: Task[bytes]) -> PageCursor:
        """The cursor just past `task`."""
        return cls(task.ctx.run_at, task.id)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSearch:
    """Which tasks a page lists: of one status (None: every status), found by a text.

    `text` finds the task whose id or idempotency key is exactly that text (a question with one
    answer, found by index); when no task has it as id or key, the tasks whose last error
    contains it, ignoring case (ASCII letters at least: SQLite's LIKE folds no others).
    """

    status: Status | None = None
    text: str | None = None

    def of_status(self, task: Task[bytes]) -> bool:
        """True when `task` has the status asked for (or any, when none was)."""
        return self.status is None or task.ctx.status is self.status

    def exactly(self, task: Task[bytes]) -> bool:
        """True when the text is the task's id or idempotency key."""
        return bool(self.text) and (task.id == self.text or task.ctx.idempotency_key == self.text)

    def in_error(self, task: Task[bytes]) -> bool:
        """True when there is no text, or the task's last error contains it (any case)."""
        if not self.text:
            return True
        return self.text.casefold() in (task.ctx.last_error or "").casefold()

    def select(self, tasks: Iterable[Task[bytes]]) -> list[Task[bytes]]:
        """What the search finds among `tasks`, in their order (the reference for every store)."""
        candidates = [t for t in tasks if self.of_status(t)]
        exact = [t for t in candidates if self.exactly(t)]
        return exact if exact else [t for t in candidates if self.in_error(t)]


@runtime_checkable
class TaskBrowser(Protocol):
    """Pages of a queue's tasks by keyset, ordered by `(run_at, id)`."""

    async def browse(
        self,
        where: TaskSearch,
        *,
        after: PageCursor | None = None,
        limit: int = 50,
        newest_first: bool = False,
        preview: int | None = None,
    ) -> list[Task[bytes]]:
        """Up to `limit` tasks matching `where`, ordered by `(run_at, id)` (descending with
        `newest_first`), strictly past `after`. With `preview`, each task's `args` holds at most
        that many bytes of its payload (a listing shows no more; a payload may be megabytes)."""
        ...


@dataclass(frozen=True, slots=True)
class BrowsedPage:
    """A page of a `CursorBrowser`: its tasks, and the store's cursor of the next (None: the last).

    A page may hold fewer tasks than asked and still have a next one: a search by error text
    reads a bounded number of tasks per page, so a page never scans a whole queue."""

    tasks: list[Task[bytes]]
    next: str | None
    newest_first: bool | None = None  # the order served, where the store cannot serve the one asked


def exact_page(
    where: TaskSearch, found: Task[bytes] | None, *, after: str | None, preview: int | None
) -> BrowsedPage | None:
    """The page of a search whose text is the id or key of `found`: that task alone, on the first
    page; None when no task was found or it has another status (then the text is looked for in
    errors, as `TaskSearch.select` does)."""
    if found is None or not where.of_status(found):
        return None
    return BrowsedPage([previewed(found, preview)] if after is None else [], None)


@runtime_checkable
class CursorBrowser(Protocol):
    """Pages of a queue's tasks by a keyset of the store's own: `after` is the `next` of the page
    before, opaque to everyone but the store. `order` says in one line what the pages follow."""

    order: str

    async def browse_page(
        self,
        where: TaskSearch,
        *,
        after: str | None = None,
        limit: int = 50,
        newest_first: bool = False,
        preview: int | None = None,
    ) -> BrowsedPage:
        """Up to `limit` tasks matching `where` past `after`, in the store's order (reversed with
        `newest_first`); `preview` as in `TaskBrowser.browse`. `ValueError` for an `after` the
        store did not make."""
        ...


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    """Tasks that finished in one minute: done, and failed for good (killed)."""

    done: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueActivity:
    """The oldest ready task's run_at (None: nothing is ready), and finished tasks per minute
    (keyed by the minute's start, in whole epoch minutes: `int(t // 60)`). `finished_kept` is
    False where the store keeps no record of finished tasks (rsmq deletes a done message): then
    `per_minute` is empty because nobody knows, not because nothing finished."""

    oldest_ready_at: float | None
    per_minute: Mapping[int, MinuteCounts] = field(default_factory=dict)
    finished_kept: bool = True


@runtime_checkable
class ActivitySource(Protocol):
    """A queue that can say how long its oldest ready task has waited and how much finished."""

    async def activity(self, since: float) -> QueueActivity:
        """The oldest ready task's run_at now, and the tasks finished at or after `since`."""
        ...


@runtime_checkable
class TickSource(Protocol):
    """A store whose tasks come from a clock (cron): the board shows its next ticks."""

    def next_ticks(self, after: float, count: int) -> list[float]:
        """The next `count` tick times strictly after `after` (epoch seconds)."""
        ...


def previewed(task: Task[bytes], preview: int | None) -> Task[bytes]:
    """`task` with at most `preview` bytes of its payload (None: all of it): what a listing shows."""
    if preview is None or len(task.args) <= preview:
        return task
    return Task(id=task.id, args=task.args[:preview], ctx=task.ctx)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_ascii(text: str) -> str:
    """`text` with its ASCII letters lowercased, as a store's script folds (Lua's string.lower)."""
    return text.translate(_ASCII_LOWER)


def like_pattern(text: str) -> str:
    """`%text%` for a SQL `LIKE ... ESCAPE '\\'`, with the wildcards in `text` taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
