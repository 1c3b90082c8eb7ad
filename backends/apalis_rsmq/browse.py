"""What the board reads of an rsmq queue beyond the `Inspector`: pages of its tasks (a
`CursorBrowser`), a keyset walk through the queue's sorted set and its dead letters', by
`lua/browse.lua` (on apalis_redis's `walk.lua`), so a page deep in a million messages costs what
the first does; and the oldest ready message (an `ActivitySource` that keeps no record of
finished tasks: rsmq deletes a done message).

The order is the store's: waiting and running messages by the time they become visible (rsmq's
own score), then dead letters by when they died; pending, running and failed are told apart by
our side hash, so a page of one of them reads past the others, at most `SCAN_BUDGET` messages a
page, for at most apalis_redis's `SCAN_SECONDS` (a short page then has a next one). Done
messages are deleted by rsmq: none is listed. The cursor is `[set, score, id]` of the last
message of a page, as JSON.
"""

from __future__ import annotations

import json

from apalis_cli.browsing import BrowsedPage, QueueActivity, TaskSearch, exact_page, fold_ascii
from apalis_cli.task import Status
from apalis_redis.browse import Row, parse_cursor, walk_sets

from .inspector import RsmqInspector

__all__ = ["ORDER", "SCAN_BUDGET", "RsmqBrowser"]

ORDER = "messages by the time they become visible, then dead letters by when they died"
SCAN_BUDGET = 10_000  # messages a page reads at most

_SETS: dict[Status | None, tuple[str, ...]] = {
    None: ("live", "dead"),
    Status.PENDING: ("live",),
    Status.RUNNING: ("live",),
    Status.FAILED: ("live",),
    Status.DONE: (),
    Status.KILLED: ("dead",),
    Status.CANCELLED: ("dead",),
}


def _cursor(text: str) -> tuple[str, str, str]:
    return parse_cursor(text, "rsmq", lambda name: name in ("live", "dead"))


class RsmqBrowser(RsmqInspector):
    """The `Inspector` and `browse_page` over one rsmq queue and its dead letters."""

    order = ORDER

    async def browse_page(
        self,
        where: TaskSearch,
        *,
        after: str | None = None,
        limit: int = 50,
        newest_first: bool = False,
        preview: int | None = None,
    ) -> BrowsedPage:
        """Up to `limit` messages matching `where` past `after`, in the store's order (see above)."""
        resume = _cursor(after) if after else None
        if where.text and (exact := exact_page(where, await self.get(where.text), after=after, preview=preview)):
            return exact
        sets = list(_SETS[where.status])
        if newest_first:
            sets.reverse()
        if resume is not None and resume[0] in sets:
            sets = sets[sets.index(resume[0]) :]
        args: list[str | bytes | int] = [
            "",
            "1" if newest_first else "",
            "",
            "",
            0,
            0,
            where.status.value if where.status is not None else "",
            fold_ascii(where.text or ""),
            preview if preview is not None else "",
        ]
        script, keys = self.connection.scripts["browse"], self.keys.all[:6]

        async def call(name: str, args: list[str | bytes | int]) -> bytes:
            args[0] = name
            reply: bytes = await script(keys=keys, args=args)
            return reply

        return self._page(*await walk_sets(call, sets, args, resume, limit, SCAN_BUDGET))

    async def activity(self, since: float) -> QueueActivity:
        """The oldest message visible now (by rsmq's clock, Redis TIME); nothing per minute: rsmq
        deletes done messages, so what finished is not known (`finished_kept` is False)."""
        client = self.connection.client
        seconds, micros = await client.time()
        now_ms = seconds * 1000 + micros // 1000
        head = await client.zrangebyscore(self.keys.zset, "-inf", now_ms, start=0, num=1, withscores=True)
        oldest = head[0][1] / 1000 if head else None
        return QueueActivity(oldest_ready_at=oldest, finished_kept=False)

    def _page(self, rows: list[Row], cursor: list[str] | None) -> BrowsedPage:
        tasks = [self._task(member, float(score), name == "dead", fields) for name, member, score, fields in rows]
        return BrowsedPage(tasks, json.dumps(cursor, separators=(",", ":")) if cursor is not None else None)
