"""`MysqlQueue`: one queue of a MySQL/MariaDB store: the shared SQL queue (`apalis_sql.SqlQueue`)
over this store's `Database`.

MariaDB has no `UPDATE ... RETURNING`, so a claim is one short transaction: `SELECT ... FOR
UPDATE SKIP LOCKED` then `UPDATE` of those ids; the tasks handed out are the selected rows with
the claim applied (`claims`). A batch of acknowledgements claims, in its own transaction, the
tasks for the slots it frees, so a busy worker waits for one commit per batch. Wake-ups: a push
in this process wakes its pollers at once; pushes from other processes end the sleep of this
process's listener (`listener`); a push of one task due now hands it to an idle worker
(`handing`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from apalis_cli.backend import WorkerContext
from apalis_cli.task import Task
from apalis_sql import SqlQueue

if TYPE_CHECKING:
    from .connection import Database  # imports the driver, which a store imports when built

__all__ = ["MysqlQueue"]


class MysqlQueue(SqlQueue):
    """One queue in a MySQL/MariaDB database (its Inspector is `apalis_sql.SqlInspector`)."""

    _db: Database

    def poll_compact(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        """The shared SQL poll stream; when it closes, the worker is no longer listed idle for
        hand-overs, and a task handed to it that it never read goes back (`handing`)."""
        return self._unlisted(worker.id, super().poll_compact(worker))

    async def _unlisted(
        self, worker_id: str, stream: AsyncIterator[Task[bytes] | None]
    ) -> AsyncIterator[Task[bytes] | None]:
        try:
            async for task in stream:
                yield task
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            with contextlib.suppress(Exception):  # the store is away: the listing lapses
                await self._db.stopped_polling(worker_id)
