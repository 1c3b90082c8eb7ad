"""The rsmq queue's control plane (`apalis_cli.control`): cancel, pause, wait and bulk actions.

rsmq has no status per message, so apalis keeps a small control record next to the queue, in
keys other rsmq clients ignore (lua/control.lua): the paused flag, the ids someone waits for,
and the end of a waited-for task that rsmq deleted once done. A cancelled message moves to the
dead-letter queue, marked cancelled; being a script, the move is atomic with our receive, and a
message that any rsmq client receives next is already gone. A running message's cancel is
recorded in our side hash and published on `ns:apalis-ctl:<q>`, where the process running it
hears it (`apalis_redis.signals`); its worker's heartbeat answers it too.

What rsmq's own clients do is beyond the record: they receive from a paused queue, and a
message they hold is not "running" in our eyes (a cancel moves it to the dead letters).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from apalis_cli.control import DEFAULT_CANCEL_REASON, BulkAction, BulkFilter, CancelResult, bulk_reason
from apalis_cli.task import Status, Task, TaskContext, TaskId
from apalis_redis.control import BATCH, bulk_in_batches, cancel_result, wait_published

from .inspector import created_at

if TYPE_CHECKING:
    from apalis_redis.connection import Connection

    from .keys import RsmqKeys

__all__ = ["RsmqControl"]

_REMEMBERED = 10_000


def _done_unseen(task_id: TaskId, queue: str, max_attempts: int) -> Task[bytes]:
    """A task known to have been sent and deleted by rsmq (done), whose end nobody kept."""
    sent_at = created_at(task_id)
    return Task(
        id=task_id,
        args=b"",
        ctx=TaskContext(
            queue=queue,
            status=Status.DONE,
            attempts=1,
            max_attempts=max_attempts,
            run_at=sent_at,
            created_at=sent_at,
            done_at=time.time(),
        ),
    )


class RsmqControl:
    """Control-plane methods over the queue's `connection`, `keys`, `queue` and `_channel`."""

    queue: str
    keys: RsmqKeys
    connection: Connection
    max_attempts: int
    _channel: str
    _sent: OrderedDict[str, None]

    ensure_queue: Callable[[], Awaitable[None]]  # the queue's: createQueue unless it exists
    get: Callable[[TaskId], Awaitable[Task[bytes] | None]]  # the inspector's

    async def cancel(self, task_id: TaskId, reason: str = DEFAULT_CANCEL_REASON) -> CancelResult:
        """Cancel `task_id`: at once if it is not running, by telling its worker if it runs."""
        k = self.keys
        return cancel_result(await self.connection.scripts["cancel"](keys=k.all, args=[task_id, reason, k.control]))

    async def pause(self) -> None:
        """Our receives hand out nothing from now on."""
        await self.connection.client.set(self.keys.paused, b"1")

    async def resume(self) -> None:
        """Our receives hand out messages again; idle pollers listening are woken."""
        client, k = self.connection.client, self.keys
        await client.delete(k.paused)
        if self._channel:
            await client.publish(self._channel, await client.zcard(k.zset))
        else:
            self.connection.waker(self.queue).notify()

    async def paused(self) -> bool:
        """True while the queue is paused."""
        return bool(await self.connection.client.exists(self.keys.paused))

    async def wait(self, task_id: TaskId, timeout: float | None = None) -> Task[bytes] | None:  # noqa: ASYNC109
        """The task once it is done, killed or cancelled; None after `timeout` seconds or when
        there is no such task. Woken by the message its end publishes."""
        client, waiting = self.connection.client, self.keys.waiting

        async def register() -> None:
            await client.zadd(waiting, {task_id: time.time() * 1000})

        async def read(task_id: TaskId) -> Task[bytes] | None:
            task = await self.get(task_id)
            if task is None and task_id in self._sent:
                # Pushed here, and gone before the wait was registered: rsmq deleted it, done,
                # before anyone asked to keep its end (a worker faster than this process).
                return _done_unseen(task_id, self.queue, self.max_attempts)
            return task

        return await wait_published(self.connection, self.queue, task_id, timeout, register, read)

    def sent(self, ids: list[TaskId]) -> None:
        """Remember the ids this queue object pushed last (a wait right after the push tells a
        message done before the wait began from one that never was)."""
        sent = self._sent
        for task_id in ids:
            sent[task_id] = None
        while len(sent) > _REMEMBERED:
            sent.popitem(last=False)

    async def bulk(
        self, action: BulkAction, where: BulkFilter, *, dry_run: bool = False, reason: str | None = None
    ) -> int:
        """Apply `action` to every message `where` matches: one script per batch of `BATCH`, the
        queue then its dead letters, until `where.limit` tasks changed."""
        kept = bulk_reason(action, reason)
        if where.limit is not None and where.limit <= 0:
            return 0
        await self.ensure_queue()
        statuses = where.statuses_for(action)
        live = sorted(s.value for s in statuses & {Status.PENDING, Status.FAILED, Status.RUNNING})
        dead = sorted(s.value for s in statuses & {Status.KILLED, Status.CANCELLED})
        k, script = self.keys, self.connection.scripts["bulk"]
        needle = where.error_contains.lower() if where.error_contains else ""
        since = "" if where.since is None else str(int(where.since * 1000))
        until = "" if where.until is None else str(int(where.until * 1000))

        async def batch(source: tuple[int, list[str]], cursor: str, room: int) -> Sequence[Any]:
            collection, names = source
            answer: Sequence[Any] = await script(
                keys=k.all,
                args=[
                    action.value,
                    "1" if dry_run else "",
                    collection,
                    cursor,
                    BATCH,
                    room,
                    f",{','.join(names)},",
                    since,
                    until,
                    needle,
                    kept,
                    k.control,
                    self._channel,
                ],
            )
            return answer

        sources = [(collection, names) for collection, names in ((1, live), (4, dead)) if names]
        return await bulk_in_batches(batch, sources, where.limit)
