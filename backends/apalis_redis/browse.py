"""What the board reads of a Redis queue beyond the `Inspector`: pages of its tasks (a
`CursorBrowser`), a keyset walk through the sorted set of each state by `lua/browse.lua`, so a page
deep in a million tasks costs what the first does; and its activity (an `ActivitySource`, by
`lua/activity.lua`: counts of the done and killed sets by minute, and the oldest ready task).

The order is the store's: pending tasks due now (by priority, then run_at), then those not due
yet (by run_at), then those held at a global limit (by key), then running ones (by claim time),
then done, killed and cancelled ones (by when they ended); a status lists its own sets in that
order. The cursor is `[set, score, id]` of the last task of a page, as JSON. A search by error
text reads at most `SCAN_BUDGET` tasks, for at most `SCAN_SECONDS`, per page, so it may answer a
short page with a next one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence

import msgpack
from apalis_cli.browsing import BrowsedPage, MinuteCounts, QueueActivity, TaskSearch, exact_page, fold_ascii, previewed
from apalis_cli.task import Status, Task

from .inspector import RedisInspector, task_from_hash

__all__ = ["ORDER", "SCAN_BUDGET", "SCAN_SECONDS", "RedisBrowser", "Row", "parse_cursor", "walk_sets"]

ORDER = (
    "due tasks by priority then run_at, then later ones by run_at, running by claim, ended by end time"
    " (failed ones alone: by run_at)"
)
SCAN_BUDGET = 10_000  # tasks a page reads at most (a search by error text walks, no index has it)
SCAN_SECONDS = 0.1  # ... and for how long, however loaded the server is (then a short page ends)
FAILED_WHOLE = 10_000  # failed tasks read whole (by their set) to page them by run_at; past that, the walk
_STEP = 1_000  # tasks one script call reads at most: Redis serves nobody else meanwhile

Row = tuple[str, bytes, bytes, list[bytes]]
"""One task a walk found: its set, id, score and the fields the script read of it."""


async def walk_sets(
    call: Callable[[str, list[str | bytes | int]], Awaitable[bytes]],
    sets: Sequence[str],
    args: list[str | bytes | int],
    resume: tuple[str, str, str] | None,
    limit: int,
    budget: int,
    seconds: float = SCAN_SECONDS,
) -> tuple[list[Row], list[str] | None]:
    """A page by keyset over `sets` in turn (Redis's and rsmq's `browse` scripts, on
    `lua/walk.lua`): `call(set, args)` runs the script, which reads from `args[2:4]` (the score
    and id to go on after) at most `args[5]` entries and answers at most `args[4]` rows. The rows
    (up to `limit`) and the cursor of the next page, `[set, score, id]`, or None after the last;
    a page that read `budget` entries, or read for `seconds`, ends there, short."""
    rows: list[Row] = []
    deadline, asked = time.monotonic() + seconds, False
    for name in sets:
        args[2], args[3] = (resume[1], resume[2]) if resume is not None and name == resume[0] else ("", "")
        while True:
            if budget <= 0 or (asked and time.monotonic() > deadline):  # the next page goes on here
                return rows, [name, _text(args[2]), _text(args[3])]
            args[4], args[5] = limit + 1 - len(rows), min(_STEP, budget)
            asked = True
            got, last_score, last_member, done, read = msgpack.unpackb(await call(name, args), raw=True)
            rows += [(name, member, score, fields) for member, score, fields in got]
            budget -= read
            if len(rows) > limit:
                name, member, score, _ = rows[limit - 1]
                return rows[:limit], [name, score.decode(), member.decode()]
            if done:
                break
            args[2], args[3] = last_score, last_member
    return rows, None


# The sets of each state, in the order a page walks them ('parked': the sets of keys at a limit).
_GROUPS: dict[Status | None, tuple[str, ...]] = {
    None: ("ready", "scheduled", "parked", "running", "done", "killed", "cancelled"),
    Status.PENDING: ("ready", "scheduled", "parked"),
    Status.FAILED: ("ready", "scheduled", "parked"),
    Status.RUNNING: ("running",),
    Status.DONE: ("done",),
    Status.KILLED: ("killed",),
    Status.CANCELLED: ("cancelled",),
}
_RANK = {name: n for n, name in enumerate(_GROUPS[None])}


def _text(value: str | bytes | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_cursor(text: str, store: str, sets: Callable[[str], bool]) -> tuple[str, str, str]:
    """The `[set, score, id]` of a page's cursor (`walk_sets`); `ValueError` for a text that is
    not one of `store`'s, whose set names pass `sets`."""
    value = json.loads(text)
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value)):
        raise ValueError(f"not a cursor of the {store} store")
    name, score, member = value
    if score or member:
        float(score)  # a score Redis gave, or this is no cursor ('' and '': the set's start)
    if not sets(name):
        raise ValueError(f"not a cursor of the {store} store")
    return name, score, member


def _cursor(text: str) -> tuple[str, str, str]:
    return parse_cursor(text, "redis", lambda name: name.split(":", 1)[0] in ("kp", "failed", *_RANK))


def _place(name: str) -> tuple[int, str]:
    """Where the set `name` ('ready', 'kp:<key>', ...) is in the walk's order."""
    return (_RANK["parked"], name) if name.startswith("kp:") else (_RANK[name], "")


class RedisBrowser(RedisInspector):
    """The `Inspector` and `browse_page` over one queue's keys."""

    order = ORDER

    async def _exact(self, where: TaskSearch) -> Task[bytes] | None:
        """The task whose id, or idempotency key, is the search's text."""
        client, k = self.connection.client, self.keys
        text = where.text or ""
        h = await client.hgetall(k.task(text))
        task_id = text
        if not h:
            owner = await client.get(k.base + "k:" + text)
            if owner is None:
                return None
            task_id = owner.decode()
            h = await client.hgetall(k.task(task_id))
        return task_from_hash(task_id, self.queue, h) if h else None

    async def browse_page(
        self,
        where: TaskSearch,
        *,
        after: str | None = None,
        limit: int = 50,
        newest_first: bool = False,
        preview: int | None = None,
    ) -> BrowsedPage:
        """Up to `limit` tasks matching `where` past `after`, in the store's order (see above)."""
        resume = _cursor(after) if after else None
        if where.text and (exact := exact_page(where, await self._exact(where), after=after, preview=preview)):
            return exact
        if where.status is Status.FAILED:
            failed = await self._failed_page(where, resume, limit, newest_first, preview)
            if failed is not None:
                return failed
        if resume is not None and resume[0] == "failed":  # the failed set has grown past FAILED_WHOLE
            resume = None
        k = self.keys
        sets: list[str] = []
        for group in _GROUPS[where.status]:
            if group == "parked":
                sets += sorted(key.removeprefix(k.base) for key in await self._parked())
            else:
                sets.append(group)
        if newest_first:
            sets.reverse()
        if resume is not None:
            here = _place(resume[0])
            sets = [s for s in sets if (_place(s) <= here if newest_first else _place(s) >= here)]
        args: list[str | bytes | int] = [
            k.base,
            "1" if newest_first else "",
            "",
            "",
            0,
            0,
            where.status.value if where.status is not None else "",
            fold_ascii(where.text or ""),
            preview if preview is not None else "",
        ]
        script = self.connection.scripts["browse"]

        async def call(name: str, args: list[str | bytes | int]) -> bytes:
            reply: bytes = await script(keys=[k.base + name], args=args)
            return reply

        return self._page(*await walk_sets(call, sets, args, resume, limit, SCAN_BUDGET))

    async def _failed_page(
        self,
        where: TaskSearch,
        resume: tuple[str, str, str] | None,
        limit: int,
        newest_first: bool,
        preview: int | None,
    ) -> BrowsedPage | None:
        """A page of failed tasks (waiting for a retry) by (run_at, id), from the failed set read
        whole: they are few, and a walk would read every pending task around them, a short page
        at a time. None when there are more than `FAILED_WHOLE`."""
        client, k = self.connection.client, self.keys
        if await client.scard(k.failed) > FAILED_WHOLE:
            return None
        ids = [raw.decode() for raw in await client.smembers(k.failed)]
        async with client.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hmget(k.task(task_id), ["s", "r", "e"])
            heads = await pipe.execute()
        needle = (where.text or "").casefold()
        keyed = sorted(
            (
                (float(run_at), task_id)
                for task_id, (status, run_at, error) in zip(ids, heads, strict=True)
                if status == b"failed" and (not needle or needle in (error or b"").decode(errors="replace").casefold())
            ),
            reverse=newest_first,
        )
        if resume is not None and resume[0] == "failed" and resume[1]:
            key = (float(resume[1]), resume[2])
            keyed = [head for head in keyed if (head < key if newest_first else head > key)]
        page = keyed[:limit]
        async with client.pipeline(transaction=False) as pipe:
            for _, task_id in page:
                pipe.hgetall(k.task(task_id))
            hashes = await pipe.execute()
        tasks = []
        for (_, task_id), h in zip(page, hashes, strict=True):
            if h:
                tasks.append(previewed(task_from_hash(task_id, self.queue, h), preview))
        more = len(keyed) > limit
        cursor = json.dumps(["failed", repr(page[-1][0]), page[-1][1]], separators=(",", ":")) if more else None
        return BrowsedPage(tasks, cursor)

    async def activity(self, since: float) -> QueueActivity:
        """The oldest ready task's run_at now, and the tasks done and killed each minute since
        `since` (from the done and killed sets, by when they ended: kept for `retention`)."""
        k, now = self.keys, time.time()
        first, last = int(since // 60), int(now // 60)
        reply = await self.connection.scripts["activity"](
            keys=[k.ready, k.scheduled, k.done, k.killed], args=[k.base, repr(now), first, last]
        )
        oldest, done, killed = msgpack.unpackb(reply, raw=True)
        per_minute = {
            first + n: MinuteCounts(d, f) for n, (d, f) in enumerate(zip(done, killed, strict=True)) if d or f
        }
        return QueueActivity(oldest_ready_at=float(oldest) if oldest is not False else None, per_minute=per_minute)

    def _page(self, rows: list[Row], cursor: list[str] | None) -> BrowsedPage:
        tasks = [
            task_from_hash(member.decode(), self.queue, dict(zip(fields[::2], fields[1::2], strict=True)))
            for _, member, _, fields in rows
        ]
        return BrowsedPage(tasks, json.dumps(cursor, separators=(",", ":")) if cursor is not None else None)
