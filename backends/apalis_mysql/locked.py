"""A transaction inside a named lock in as few round trips as its statements allow.

A limited claim (`apalis_sql.limits`) or a unique push runs its statements in one transaction
holding a named lock of the queue (`GET_LOCK`, freed after the commit). Sent one by one, the
lock, each statement and the commit are a round trip each: six for a limited claim of ~48
tasks (one now where its first turn takes all it asks for: `apalis_mysql.turns`), about as many
milliseconds of the claiming worker's time on a loaded machine, which a worker draining at full
speed waits for between two batches.

So the lock and `START TRANSACTION` ride with the transaction's first read (the server runs a
script's statements in order: the read starts once the lock is held), and the statements whose
answer the caller does not need (`later`: the UPDATE that claims the rows a select locked, the
rate states) ride with the next statement or with the commit. A lock not got (another session
held it for the whole wait) runs the script's statements in vain: the transaction is rolled back
and tried again (a script that commits itself, `finish_if`, commits only while it holds the
lock). A limited worker's acknowledgement rides with its next claim's first read
(`ahead`): one commit, one log flush, for both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

__all__ = ["LockBusy", "LockedSession", "in_named_lock"]

T = TypeVar("T")
Conn = Any  # asyncmy ships no usable annotations for its Cython classes
Bind = Callable[[Mapping[str, Any]], Any]


class LockBusy(Exception):
    """The named lock was not got within the server's wait: the transaction is tried again."""


class LockedSession:
    """Named statements in the locked transaction (`Session`), with `later` for those whose
    answer is not needed."""

    __slots__ = ("_ahead", "_bind", "_conn", "_kept", "_locking", "_sql", "finished")

    def __init__(self, conn: Conn, statements: Mapping[str, str], bind: Bind, take: list[str]) -> None:
        self._conn = conn
        self._sql = statements
        self._bind = bind
        self._ahead = list(take)  # bound statements not sent yet, in order
        self._locking = True  # the first of them is the GET_LOCK, its answer not read yet
        self._kept: dict[int, list[Any]] = {}  # where in `_ahead` a statement's rows are kept
        self.finished = False
        """Whether the transaction was committed and the lock freed (`finish_if`)."""

    @property
    def sent(self) -> bool:
        """Whether anything reached the server (the lock was asked for)."""
        return not self._locking

    @property
    def waiting(self) -> bool:
        """Whether statements wait to be sent besides the lock and BEGIN (`later`)."""
        return len(self._ahead) > (3 if self._locking else 0)

    def later(self, name: str, params: Mapping[str, Any]) -> None:
        """Send the statement with the next one (or the commit); its answer is not read."""
        self._ahead.append(self._bound(name, params))

    def ahead(self, query: str, args: Sequence[Any]) -> list[Any]:
        """Send `query` (bound to `args`) with the next statement; the list returned receives
        its rows once it is sent. Where that is the transaction's first read, it goes with the
        lock: a lock not got rolls it back with the rest, and the transaction is tried again."""
        rows: list[Any] = []
        self._kept[len(self._ahead)] = rows
        self._ahead.append(str(self._conn.cursor().mogrify(query, args)))
        return rows

    def read_later(self, name: str, params: Mapping[str, Any]) -> list[Any]:
        """Send the named statement with the next one (or the commit); the list returned
        receives its rows once it is sent."""
        rows: list[Any] = []
        self._kept[len(self._ahead)] = rows
        self._ahead.append(self._bound(name, params))
        return rows

    async def fetch(self, name: str, params: Mapping[str, Any]) -> list[Any]:
        cursor = await self._send([self._bound(name, params)])
        return list(await cursor.fetchall())

    async def execute(self, name: str, params: Mapping[str, Any]) -> int:
        if self._locking:  # a write waits until the lock is known to be held
            await self._send([])
        cursor = await self._send([self._bound(name, params)])
        return int(cursor.rowcount)

    async def finish_if(self, name: str, params: Mapping[str, Any]) -> bool:
        """Send what is left, then the named statements (`;`-separated), which commit and free
        the lock where the server finds the transaction's work done (`limit_claim_full`): the
        last answers 1 then, NULL where the transaction is left open for more statements."""
        cursor = await self._send(self._bound(name, params).split(";\n"))
        self.finished = (await cursor.fetchone())[0] is not None
        return self.finished

    async def finish(self, tail: list[str]) -> None:
        """Send what is left, then `tail` (the commit and the unlock)."""
        await self._send(tail)

    def _bound(self, name: str, params: Mapping[str, Any]) -> str:
        return str(self._conn.cursor().mogrify(self._sql[name], self._bind(params)))

    async def _send(self, last: list[str]) -> Any:
        """Send the statements ahead, then `last`, in one round trip; the cursor at the result of
        the script's last statement, the others' read past. Raises `LockBusy` when the lock ahead
        was not got."""
        script, kept = [*self._ahead, *last], self._kept
        self._ahead, self._kept = [], {}
        cursor = self._conn.cursor()
        await cursor.execute(";\n".join(script))
        if self._locking:
            self._locking = False
            if (await cursor.fetchone())[0] != 1:
                while await cursor.nextset():
                    pass
                raise LockBusy
        elif 0 in kept:
            kept[0].extend(await cursor.fetchall())
        for at in range(1, len(script)):
            await cursor.nextset()
            if at in kept:
                kept[at].extend(await cursor.fetchall())
        return cursor


async def in_named_lock(
    conn: Conn,
    statements: Mapping[str, str],
    bind: Bind,
    lock: str,
    unlock: str,
    op: Callable[[LockedSession], Awaitable[T]],
) -> T:
    """`op` in one transaction holding the named lock `lock` (a bound `GET_LOCK`), committed and
    freed (`unlock`) after; tried again while another session holds the lock for the whole wait."""
    take = [lock, statements["idle_limit"], "START TRANSACTION"]
    while True:
        session = LockedSession(conn, statements, bind, take)
        try:
            result = await op(session)
            if not session.finished and (session.sent or session.waiting):
                await session.finish(["COMMIT", unlock])
        except LockBusy:
            await conn.cursor().execute("ROLLBACK")
            continue
        return result
