"""Keyset pages, search and activity on the memory store: the reference the SQL stores follow
(they are held to the same answers over real HTTP in tests/integration/test_web_api.py)."""

from __future__ import annotations

import time

from apalis_cli.browsing import PageCursor, TaskSearch
from apalis_cli.codec import JsonCodec
from apalis_cli.memory import MemoryStore
from apalis_cli.task import Status


async def test_pages_follow_the_cursor_in_both_directions() -> None:
    queue = MemoryStore().backend("q", codec=JsonCodec())
    ids = [await queue.push({"n": i}, run_at=1000.0 + i // 3) for i in range(10)]  # ties on run_at
    seen, after = [], None
    while True:
        page = await queue.browse(TaskSearch(), after=after, limit=4)
        if not page:
            break
        seen += [t.id for t in page]
        after = PageCursor.of(page[-1])
    expected = sorted(ids, key=lambda i: (1000.0 + ids.index(i) // 3, i))
    assert seen == expected
    newest = await queue.browse(TaskSearch(), limit=3, newest_first=True)
    assert [t.id for t in newest] == expected[::-1][:3]
    older = await queue.browse(TaskSearch(), after=PageCursor.of(newest[-1]), limit=3, newest_first=True)
    assert [t.id for t in older] == expected[::-1][3:6]


async def test_a_search_is_an_id_or_key_first_else_a_piece_of_the_error() -> None:
    queue = MemoryStore().backend("q", codec=JsonCodec())
    keyed = await queue.push({"n": 1}, idempotency_key="oops")
    failing = await queue.push({"n": 2})
    await queue.kill(failing, "ValueError: OOPS, the disk is full")
    found = await queue.browse(TaskSearch(text="oops"))
    assert [t.id for t in found] == [keyed]  # the key answers: the error is not searched
    found = await queue.browse(TaskSearch(text="DISK IS"))
    assert [t.id for t in found] == [failing]
    assert await queue.browse(TaskSearch(text="DISK IS", status=Status.PENDING)) == []
    assert [t.id for t in await queue.browse(TaskSearch(text=failing))] == [failing]


async def test_activity_counts_finished_tasks_per_minute_and_the_oldest_ready() -> None:
    queue = MemoryStore().backend("q", codec=JsonCodec())
    waiting = await queue.push({"n": 1}, run_at=time.time() - 30)
    await queue.push({"n": 2}, delay=3600)  # scheduled: not ready
    killed = await queue.push({"n": 3})
    await queue.kill(killed)
    activity = await queue.activity(time.time() - 3600)
    task = await queue.get(waiting)
    assert task is not None
    assert activity.oldest_ready_at == task.ctx.run_at
    assert sum(c.failed for c in activity.per_minute.values()) == 1
    assert sum(c.done for c in activity.per_minute.values()) == 0
