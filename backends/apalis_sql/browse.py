"""The board's reads for every SQL store, written once over a store's `fetch(statement, params)`.

Each store's `sql/` files hold four named statements with the same parameters (`page_forward`,
`page_backward`, `oldest_waiting`, `finished_per_minute`); this module fills
the parameters and reads the rows. A page of one status is one index range read from its start
(`(queue, status, run_at, id)`); a page of every status reads that range for each status and
merges, which costs a few index probes instead of a sort of the whole queue.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from apalis_cli.browsing import FAILED_FOR_GOOD, MinuteCounts, PageCursor, QueueActivity, TaskSearch, like_pattern
from apalis_cli.task import Status, Task

from .rows import task_from_row

__all__ = ["Fetch", "browse_tasks", "queue_activity"]

Fetch = Callable[[str, Mapping[str, Any]], Awaitable[Sequence[Sequence[Any]]]]
"""Run the named statement with these parameters; its rows."""

# Past every run_at a store can hold (years 1..9999), and finite: MySQL cannot bind infinity.
_FAR = 1e300


def _search_params(queue: str, where: TaskSearch) -> dict[str, Any]:
    text = where.text or None
    return {"queue": queue, "search": text, "pattern": like_pattern(text) if text else None}


def _statuses(where: TaskSearch) -> list[Status]:
    return [where.status] if where.status is not None else list(Status)


async def browse_tasks(
    fetch: Fetch,
    queue: str,
    where: TaskSearch,
    *,
    after: PageCursor | None,
    limit: int,
    newest_first: bool,
    preview: int | None,
) -> list[Task[bytes]]:
    """`TaskBrowser.browse` over `fetch`."""
    params = _search_params(queue, where)
    if params["search"] is not None:
        # An id or a key is a question with one answer: two index lookups, no scan of errors.
        exact = [task_from_row(row) for row in await fetch("find_exact", params)]
        exact = [t for t in exact if where.status is None or t.ctx.status is where.status]
        if exact:
            return [] if after is not None else _ordered(exact, newest_first)[:limit]
    if after is None:
        params["run_at"], params["id"] = (_FAR, "") if newest_first else (-_FAR, "")
    else:
        params["run_at"], params["id"] = after.run_at, after.id
    params["limit"], params["preview"] = limit, preview
    statement = "page_backward" if newest_first else "page_forward"
    pages: list[list[Task[bytes]]] = []
    for status in _statuses(where):
        rows = await fetch(statement, {**params, "status": status.value})
        pages.append([task_from_row(row) for row in rows])
    if len(pages) == 1:
        return pages[0]
    merged = heapq.merge(*pages, key=_key, reverse=newest_first)
    return [task for task, _ in zip(merged, range(limit), strict=False)]


def _key(task: Task[bytes]) -> tuple[float, str]:
    return (task.ctx.run_at, task.id)


def _ordered(tasks: list[Task[bytes]], newest_first: bool) -> list[Task[bytes]]:
    return sorted(tasks, key=_key, reverse=newest_first)


async def queue_activity(fetch: Fetch, queue: str, since: float) -> QueueActivity:
    """`ActivitySource.activity` over `fetch`."""
    now = time.time()
    oldest_rows = await fetch("oldest_waiting", {"queue": queue})
    oldest = oldest_rows[0][0] if oldest_rows else None
    per_minute: dict[int, MinuteCounts] = {}
    for minute, status, count in await fetch("finished_per_minute", {"queue": queue, "since": since}):
        counts = per_minute.get(int(minute), MinuteCounts())
        if status == Status.DONE.value:
            counts = MinuteCounts(counts.done + int(count), counts.failed)
        elif Status(status) in FAILED_FOR_GOOD:
            counts = MinuteCounts(counts.done, counts.failed + int(count))
        per_minute[int(minute)] = counts
    ready = float(oldest) if oldest is not None and float(oldest) <= now else None
    return QueueActivity(oldest_ready_at=ready, per_minute=per_minute)
