"""The Redis queue's control plane (`apalis_cli.control`): cancel, pause, wait and bulk actions.

Every change is a script (lua/control.lua and the scripts that prepend it), so it is atomic with
the claim, which is a script too: Redis runs one at a time, and a cancelled task is never
claimed. A running task's cancel is recorded on its hash (`cr`) and published on the queue's
control channel, where the process that runs it hears it (`signals.py`); the worker's heartbeat
answers it too. Pause is a key the claim reads. A waiter adds its task's id to the queue's
`waiting` set, and the acknowledgement that ends the task publishes its id, once, on the
control channel. A bulk action walks one collection at a time, one script per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from apalis_cli.backend import WorkerContext
from apalis_cli.control import DEFAULT_CANCEL_REASON, BulkAction, BulkFilter, CancelResult, bulk_reason
from apalis_cli.task import Status, Task, TaskId

from .inspector import task_from_hash
from .limits import line_sets

if TYPE_CHECKING:
    from .connection import Connection
    from .keys import QueueKeys

__all__ = ["BATCH", "RedisControl", "bulk_in_batches", "cancel_result", "tell_beat", "wait_published"]

BATCH = 5000
"""Entries one bulk script looks at: each call holds the server for a few milliseconds at most."""
_RECHECK = 1.0
"""How often a waiter reads its task anyway (a message lost to a dropped connection costs this)."""
_NO_LIMIT = 2**31 - 1
T = TypeVar("T")


def cancel_result(answer: bytes) -> CancelResult:
    """What a cancel script answered ("cancelled", "requested", "final:<status>" or anything
    else for an unknown id), as a `CancelResult`: Redis's and rsmq's scripts answer alike."""
    state = answer.decode()
    if state == "cancelled":
        return CancelResult.cancelled()
    if state == "requested":
        return CancelResult.requested()
    if state.startswith("final:"):
        return CancelResult.already_final(Status(state.removeprefix("final:")))
    return CancelResult.not_found()


def tell_beat(worker: WorkerContext, cancels: Sequence[bytes], paused: object) -> None:
    """Tell `worker` what a heartbeat script answered: the runs with a cancel requested (id,
    reason, id, reason, ...: the floor under the control channel) and whether its queue is
    paused. Redis's and rsmq's scripts answer alike."""
    for i in range(0, len(cancels), 2):
        worker.on_cancel(cancels[i].decode(), cancels[i + 1].decode())
    worker.on_paused(bool(paused))


async def bulk_in_batches(
    call: Callable[[T, str, int], Awaitable[Sequence[Any]]], sources: Iterable[T], limit: int | None
) -> int:
    """A bulk action as Redis's and rsmq's scripts make it: `call(source, cursor, room)` acts on
    one batch (at most `BATCH` entries read, `room` tasks changed) of one collection and answers
    the cursor to go on from ("" at its end) and how many tasks it changed; collections in turn
    until `limit` tasks changed. How many changed in all."""
    total = 0
    for source in sources:
        cursor = "0"
        while cursor != "":
            room = _NO_LIMIT if limit is None else limit - total
            if room <= 0:
                return total
            raw_cursor, changed = await call(source, cursor, room)
            cursor = raw_cursor.decode() if isinstance(raw_cursor, bytes) else str(raw_cursor)
            total += int(changed)
    return total


class RedisControl:
    """Control-plane methods over the queue's `connection`, `keys`, `queue` and `retention`."""

    queue: str
    keys: QueueKeys
    connection: Connection
    retention: float

    async def cancel(self, task_id: TaskId, reason: str = DEFAULT_CANCEL_REASON) -> CancelResult:
        """Cancel `task_id`: at once if it has not started, by telling its worker if it runs."""
        k = self.keys
        answer = await self.connection.scripts["cancel"](
            keys=k.statuses,
            args=[k.base, repr(time.time()), int(self.retention * 1000), k.control, task_id, reason],
        )
        return cancel_result(answer)

    async def pause(self) -> None:
        """Claims hand out nothing from now on (the claim script reads the key)."""
        await self.connection.client.set(self.keys.paused, b"1")

    async def resume(self) -> None:
        """Claims hand out tasks again; idle pollers everywhere are woken."""
        client, k = self.connection.client, self.keys
        await client.delete(k.paused)
        await client.publish(k.wake, b"")

    async def paused(self) -> bool:
        """True while the queue is paused."""
        return bool(await self.connection.client.exists(self.keys.paused))

    async def wait(self, task_id: TaskId, timeout: float | None = None) -> Task[bytes] | None:  # noqa: ASYNC109
        """The task once it is done, killed or cancelled; None after `timeout` seconds or when
        there is no such task. Woken by the message its end publishes."""
        client, waiting = self.connection.client, self.keys.base + "waiting"

        async def register() -> None:
            await client.zadd(waiting, {task_id: time.time()})

        return await wait_published(self.connection, self.queue, task_id, timeout, register, self._task)

    async def _task(self, task_id: TaskId) -> Task[bytes] | None:
        h = await self.connection.client.hgetall(self.keys.task(task_id))
        return task_from_hash(task_id, self.queue, h) if h else None

    async def bulk(
        self, action: BulkAction, where: BulkFilter, *, dry_run: bool = False, reason: str | None = None
    ) -> int:
        """Apply `action` to every task `where` matches: one script per batch of `BATCH`
        entries of one collection, collections in turn, until `where.limit` tasks changed."""
        kept = bulk_reason(action, reason)
        statuses = where.statuses_for(action)
        if where.limit is not None and where.limit <= 0:
            return 0
        k, script = self.keys, self.connection.scripts["bulk"]
        # Where each status is kept: waiting tasks in the limit keys' lines (lua/lines.lua;
        # walked first: a head taken out of the ready set is followed by its line's next), ready
        # and scheduled (failed ones also in the failed set, walked for them alone), the others
        # in one sorted set each. A line is the script's eighth key (collection 8).
        lines = await line_sets(self.connection.client, k.base) if Status.PENDING in statuses else []
        sources: dict[Status, tuple[int | str, ...]] = {
            Status.PENDING: (*lines, 1, 2),
            Status.FAILED: (4,),
            Status.RUNNING: (3,),
            Status.DONE: (5,),
            Status.KILLED: (6,),
            Status.CANCELLED: (7,),
        }
        needle = where.error_contains.lower() if where.error_contains else ""
        since = "" if where.since is None else repr(where.since)
        until = "" if where.until is None else repr(where.until)

        async def batch(source: tuple[Status, int | str], cursor: str, room: int) -> Sequence[Any]:
            status, collection = source
            line = isinstance(collection, str)
            answer: Sequence[Any] = await script(
                keys=[*k.statuses, collection] if line else k.statuses,
                args=[
                    k.base,
                    repr(time.time()),
                    int(self.retention * 1000),
                    k.control,
                    k.wake,
                    action.value,
                    "1" if dry_run else "",
                    8 if line else collection,
                    cursor,
                    BATCH,
                    room,
                    f",{status.value},",
                    since,
                    until,
                    needle,
                    kept,
                ],
            )
            return answer

        return await bulk_in_batches(batch, [(s, c) for s in sorted(statuses) for c in sources[s]], where.limit)


async def wait_published(
    connection: Connection,
    queue: str,
    task_id: TaskId,
    timeout: float | None,  # noqa: ASYNC109 - as Waiter.wait: a timeout is an answer here
    register: Callable[[], Awaitable[None]],
    read: Callable[[TaskId], Awaitable[Task[bytes] | None]],
) -> Task[bytes] | None:
    """`Waiter.wait` for a store whose scripts publish a waited-for task's end on the control
    channel: subscribe, `register` the wait (where the scripts look), then `read` the task each
    time a message says it may have ended (and every `_RECHECK` seconds anyway)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    try:
        async with asyncio.timeout(timeout):  # a server away: the wait's own timeout still holds
            await connection.listen()  # subscribed before the wait is registered: its end is heard
    except TimeoutError:
        return None
    with connection.signals.waiting(queue, task_id) as event:
        await register()
        while True:
            event.clear()  # before the read: a message during the read is not lost
            task = await read(task_id)
            if task is None or task.ctx.status.is_final:
                return task
            left = _RECHECK if deadline is None else min(deadline - loop.time(), _RECHECK)
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await event.wait()
