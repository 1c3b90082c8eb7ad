"""What is special to global limits and unique pushes on the SQL stores (PostgreSQL,
MySQL/MariaDB): the lock a limited claim or a unique push takes lives no longer than a live
transaction. The shared behaviour is proven by the conformance suite (`test_limits.py`,
`test_unique.py`) and with real daemons by `tests/acceptance/test_fleet_limits.py`."""

from __future__ import annotations

import asyncio
import contextlib

from apalis_cli.codec import JsonCodec
from apalis_mysql import MysqlStore
from apalis_postgres import PostgresStore
from apalis_sql import Session

STORE_KINDS = ("postgres", "mysql")
"""The store kind(s) the tests taking `store` run on (tests/integration/conftest.py)."""


async def test_a_holder_whose_process_froze_does_not_keep_the_lock(store: PostgresStore | MysqlStore) -> None:
    """A process that stops inside a locked transaction (frozen: its connection stays open) is
    ended by the server once it has been idle in it for 10 s, which frees the lock: a unique
    push of the same key behind it goes through, where it would have waited for ever."""
    backend = store.backend("reports", codec=JsonCodec())

    async def frozen(session: Session) -> None:
        await asyncio.sleep(3600)

    holder = asyncio.create_task(store.database.locked("unique", "reports", "report-7", frozen, durable=True))
    await asyncio.sleep(0.5)  # the holder has the lock
    try:
        pushed = await backend.push({"n": 1}, unique={"key": "report-7"})
        stored = await backend.get(pushed)
        assert stored is not None, "the push behind the frozen holder stored its task"
        assert not holder.done(), "the holder's process is still frozen: the server ended its transaction"
    finally:
        holder.cancel()
        with contextlib.suppress(BaseException):
            await holder
