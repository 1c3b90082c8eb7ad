"""Unique pushes on a pgmq queue (`apalis_cli.fleet.unique`), in the same database.

The holders of a key are listed in `apalis_pgmq.uniques` (queue, key, message, end of window);
whether one holds the key now is read from its message: its status in the queue table, or in
the archive once it ended (`unique_holder`). A push that meets a holder answers `skip` from that
one read (the holder was committed: the push is as if it came just then). Otherwise it takes a
transaction-scoped advisory lock of its queue and key, reads again, and sends the message and
lists it, or extends the holder's window, or gives a pending holder (never read) the new
message, headers and run time, all in that transaction: no lock outlives it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from apalis_cli.backend import NewTask
from apalis_cli.task import TaskId

from .messages import encode_headers, encode_message

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["PgmqUnique"]

T = TypeVar("T")


class PgmqUnique:
    """The unique half of a `PgmqQueue`."""

    queue: str
    _sql: dict[str, str]
    _as_json: bool

    if TYPE_CHECKING:

        async def _rows(self, name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]: ...

        async def _checked(self, op: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T: ...

        async def _send(self, conn: AsyncConnection[Any], tasks: Sequence[NewTask]) -> list[int]: ...

        async def _send_keyed(self, conn: AsyncConnection[Any], tasks: Sequence[NewTask]) -> list[int]: ...

    async def _push_unique(self, task: NewTask) -> tuple[TaskId, bool]:
        """Push `task` (it has a unique key); the id of the message that holds the key after
        it, and whether a message is new or changed."""
        unique = task.unique
        assert unique is not None
        params = {
            "queue": self.queue,
            "key": unique.key,
            "now": time.time(),  # the clock `until` was stamped with
            "states": unique.state_names(),
        }
        if unique.on_conflict == "skip":
            found = await self._rows("unique_holder", params)
            if found:
                return str(found[0][0]), False
        sql = self._sql

        async def push(conn: AsyncConnection[Any]) -> tuple[TaskId, bool]:
            async with conn.transaction():
                await conn.execute(sql["unique_lock"], params)
                found = await (await conn.execute(sql["unique_holder"], params)).fetchall()
                if not found:
                    send = self._send if task.idempotency_key is None else self._send_keyed
                    (msg_id,) = await send(conn, [task])
                    await conn.execute(sql["unique_hold"], {**params, "id": msg_id, "until": unique.until})
                    return str(msg_id), True
                held = found[0][0]
                if unique.on_conflict == "extend":
                    await conn.execute(sql["unique_extend"], {**params, "id": held, "until": unique.until})
                elif unique.on_conflict == "replace":
                    text, enc = encode_message(task.payload, self._as_json)
                    replaced = {
                        "id": held,
                        "message": text,
                        "headers": encode_headers(task, enc, text),
                        "run_at": task.run_at,
                    }
                    return str(held), (await conn.execute(sql["unique_replace"], replaced)).rowcount > 0
                return str(held), False

        return await self._checked(push)
