"""A push of one task without an idempotency key, meta, limit key or unique key: lua/push.lua.

A batch, or a task with any of those, goes through lua/enqueue.lua (`RedisQueue.enqueue`).

`now` is the usual push, with no option at all (`RedisQueue.push_compact`): a new id, due now at
priority 0, its queue's attempts. It reads the clock once, in microseconds, for the task's id,
its run_at, its ready score and its creation time, writes that time as decimal text without a
float's formatting, and packs its EVALSHA itself around the part that never changes (EVALSHA,
the sha, the keys, the base, the channel and the attempts, packed once per queue): 174,400
instructions a push in the client on asyncio went to 94,900 (bench/README.md, "Redis, session
13: a push one at a time"). Before, a push built a `NewTask` (19,000), formatted two floats
by `repr` (8,700 each) and packed nine arguments one by one (25,000).
"""

from __future__ import annotations

import time
from typing import Any

from apalis_cli.backend import NewTask
from apalis_cli.task import TaskId, task_id_at

from .connection import Connection
from .keys import QueueKeys
from .scripts import Script, pack_items

__all__ = ["LonePush"]


class LonePush:
    """The lone pushes of one queue, through its store's connection."""

    __slots__ = ("_args", "_connection", "_head", "_keys")

    def __init__(self, connection: Connection, keys: QueueKeys) -> None:
        self._connection = connection  # its scripts are registered when the store opens
        # A tuple: the script packs it once (`Script.head`).
        self._keys = tuple(key.encode() for key in (keys.ready, keys.scheduled, keys.idle, keys.handed, keys.running))
        self._args = (keys.base.encode(), keys.wake.encode())
        self._head: tuple[int, bytes] | None = None  # max_attempts, and the packed EVALSHA up to them

    async def now(self, payload: bytes, max_attempts: int) -> TaskId:
        """Push `payload` as a new task due now at priority 0; its id."""
        script = self._connection.scripts["push"]
        micros = time.time_ns() // 1000
        digits = str(micros)
        now = f"{digits[:-6]}.{digits[-6:]}"  # the same number as micros / 1e6, and no float's repr
        task_id = task_id_at(micros // 1000)
        args = (*self._args, max_attempts, now, task_id, payload)
        kept = self._head
        if kept is None or kept[0] != max_attempts:
            head, constant = script.head(self._keys), pack_items((*self._args, max_attempts))
            if head is None or constant is None:  # never: bytes and an int
                return await self._generic(script, args, task_id)
            kept = self._head = (max_attempts, b"*14\r\n%s%s" % (head, constant))  # 3 + 5 keys + 6 arguments
        # The time and the id are ASCII: their lengths in characters are their lengths in bytes.
        tail = f"${len(now)}\r\n{now}\r\n${len(task_id)}\r\n{task_id}\r\n${len(payload)}\r\n".encode()
        await script.packed(self._keys, args, b"".join((kept[1], tail, payload, b"\r\n")))
        return task_id

    async def task(self, new: NewTask) -> TaskId:
        """Push `new` (no idempotency key, meta, limit key or unique key); its id."""
        clock, run_at, priority = time.time(), float(new.run_at), int(new.priority)
        at = repr(run_at)
        # The ready set's score (lua/pushing.lua's ready_score: the same double; run_at itself at
        # priority 0), or '' for a task not due yet.
        score = "" if run_at > clock else at if priority == 0 else repr(-priority * 1e10 + run_at)
        args = (*self._args, int(new.max_attempts), repr(clock), new.id, new.payload, at, priority, score)
        return await self._generic(self._connection.scripts["push"], args, new.id)

    async def _generic(self, script: Script, args: tuple[Any, ...], task_id: TaskId) -> TaskId:
        await script(keys=self._keys, args=args)
        return task_id
