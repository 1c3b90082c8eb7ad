"""The NATS store's pages of a queue's tasks (a `CursorBrowser`): each subject of the queue read
forwards by stream sequence (`STREAM.MSG.GET` next_by_subj from the sequence after a page's last
message), so a page deep in the stream costs what the first does.

JetStream reads a subject forwards only: pages go oldest first whatever is asked, and say so
(`BrowsedPage.newest_first`). The order: work messages by sequence (the delivered ones, running,
before the pending ones), then scheduled ones, dead letters and cancelled ones. Done tasks have
left the stream, and a failed one waiting out its delay looks running: neither is listed. The
cursor is `[subject, seq]` of a page's last message; a search by error text reads at most
`SCAN_BUDGET` messages, for at most `SCAN_SECONDS`, a page (a short page then has a next one).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from apalis_cli.browsing import BrowsedPage, TaskSearch, exact_page, previewed
from apalis_cli.task import Status, Task
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from . import messages as m
from .inspector import NatsInspector

__all__ = ["ORDER", "SCAN_BUDGET", "SCAN_SECONDS", "NatsBrowser"]

ORDER = "by stream sequence, oldest first only: running, pending, scheduled, killed, cancelled"
SCAN_BUDGET = 5_000  # messages a page reads at most (one request each)
SCAN_SECONDS = 0.1  # ... and for how long

_SETS: dict[Status | None, tuple[str, ...]] = {
    None: ("work", "sched", "dead", "cancelled"),
    Status.PENDING: ("work", "sched"),
    Status.RUNNING: ("work",),
    Status.FAILED: (),
    Status.DONE: (),
    Status.KILLED: ("dead",),
    Status.CANCELLED: ("cancelled",),
}


def _cursor(text: str) -> tuple[str, int]:
    value = json.loads(text)
    if not (isinstance(value, list) and len(value) == 2 and value[0] in _SETS[None] and type(value[1]) is int):
        raise ValueError("not a cursor of the nats store")
    return value[0], value[1]


class NatsBrowser(NatsInspector):
    """The `Inspector` and `browse_page` over one queue's subjects."""

    order = ORDER

    async def _from(self, subject: str, seq: int) -> AsyncIterator[RawStreamMsg]:
        """The messages of `subject` from sequence `seq` on."""
        js = await self._conn.js()
        while True:
            try:
                raw = await js.get_msg(self.stream, seq=seq, subject=subject, next=True)
            except NotFoundError:
                return
            if raw.seq is None:
                return
            yield raw
            seq = raw.seq + 1

    async def browse_page(
        self,
        where: TaskSearch,
        *,
        after: str | None = None,
        limit: int = 50,
        newest_first: bool = False,
        preview: int | None = None,
    ) -> BrowsedPage:
        """Up to `limit` tasks matching `where` past `after`, oldest first (see above)."""
        resume = _cursor(after) if after else None
        if where.text and (exact := exact_page(where, await self.get(where.text), after=after, preview=preview)):
            return BrowsedPage(exact.tasks, None, newest_first=False)
        names = list(_SETS[where.status])
        if resume is not None:
            names = names[names.index(resume[0]) :] if resume[0] in names else []
        delivered, _ = await self._delivered_upto() if "work" in names else (0, 0)
        subjects = {"work": self.work, "sched": self.sched, "dead": self.dead, "cancelled": self.cancelled}
        states = {"sched": Status.PENDING, "dead": Status.KILLED, "cancelled": Status.CANCELLED}
        tasks: list[Task[bytes]] = []
        kept: list[str | int] = []  # where the last task kept is: the next page's cursor
        read, deadline = 0, time.monotonic() + SCAN_SECONDS
        for name in names:
            start = resume[1] + 1 if resume is not None and name == resume[0] else 1
            if name == "work" and where.status is Status.PENDING:
                start = max(start, delivered + 1)  # the delivered ones are running
            last = start - 1
            async for raw in self._from(subjects[name], start):
                seq = raw.seq or last + 1
                if name == "work" and where.status is Status.RUNNING and seq > delivered:
                    break
                if read >= SCAN_BUDGET or (read and time.monotonic() > deadline):
                    return self._page(tasks, [name, last], preview)  # the next page goes on here
                read += 1
                last = seq
                if (raw.headers or {}).get(m.TOMBSTONE):
                    continue
                state = states.get(name) or (Status.RUNNING if seq <= delivered else Status.PENDING)
                task = self._task(raw, state)
                if where.of_status(task) and where.in_error(task):
                    if len(tasks) == limit:  # one more than the page: there is a next one
                        return self._page(tasks, kept, preview)
                    tasks.append(task)
                    kept = [name, seq]
        return self._page(tasks, None, preview)

    def _page(self, tasks: list[Task[bytes]], cursor: list[str | int] | None, preview: int | None) -> BrowsedPage:
        text = json.dumps(cursor, separators=(",", ":")) if cursor is not None else None
        return BrowsedPage([previewed(t, preview) for t in tasks], text, newest_first=False)
