"""Pushes hand their task to an idle worker, so a lone task starts without a claim round trip.

A polling worker whose claim found nothing is listed idle in `idle_workers` (by that claim's
own statement: `handing.sql`'s `_listing`), with the channel its process LISTENs on. A push of
one task that would be the next one claimed (due now, nothing else of its queue ready, the queue
not paused, no limit key) claims it for the worker listed the longest, in the push's own
call, and NOTIFYs the task on that channel (`enqueue_hand`: migration 0013's `push_lone`, which
runs the hand-over's statement only when a worker of the queue is listed, a plain insert
otherwise); the process gives it to the worker's poll stream, which starts it at once. The
listing is used up: the worker lists itself again with its next claim that finds nothing. A
durable push that hands its task commits without waiting for the WAL flush, so its NOTIFY is
not held back by it, and makes it durable after (`flush_push`) before it returns.

A handed task is an ordinary claim (running, its first attempt counted, locked by the worker):
- its NOTIFY lost with the LISTEN connection: once listening again, the process asks for the
  tasks handed to its workers that still run under them and gives those not received
  (`rejoined`); a worker is not listed while its process is not listening;
- its NOTIFY late (a slow LISTEN connection): the worker's heartbeats do not give it back as a
  lost claim (`release_lost` leaves alone the task handed to it that it has not `received`), so
  no other claim runs it meanwhile; it is never lost while the process listens, as above;
- its worker vanished: the listing holds only `poll_interval + keep_alive` after the worker's
  last claim, and the orphan sweep recovers a task handed just before, as any claim's, but with
  its attempt not counted when the worker never beat after the hand-over (`recover.sql`: killed
  while listed idle, no handler received it);
- its worker stops: the task still on its way goes back to the queue (`farewell`), and one that
  arrives after the worker's poll stream closed is released by the queue;
- a worker with global limits is never listed (its claims count within its limits), and a task
  with a limit key or a unique key is never handed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from apalis_cli.backend import WorkerContext
from apalis_cli.task import Status, Task, TaskContext
from apalis_sql import task_from_row

__all__ = ["Handing"]

Give = Callable[[str, list[Task[bytes]]], None]
"""`give(worker_id, tasks)`: the queue hands `tasks`, claimed for the worker, to its poll stream
(or releases them when the stream has closed)."""

_NO_META: Mapping[str, Any] = {}


class _Statements(Protocol):
    async def fetch(self, name: str, params: Mapping[str, Any]) -> list[Any]: ...
    async def execute(self, name: str, params: Mapping[str, Any]) -> int: ...


class _Listed:
    """One polling worker that pushes may hand a task to."""

    __slots__ = ("full", "give", "got", "queue", "span")

    def __init__(self, queue: str, span: float, give: Give) -> None:
        self.queue = queue
        self.span = span
        self.give = give
        self.got = ""
        """The id of the last task handed to it that it received."""
        self.full = False
        """Its last claim got all it asked for: under a backlog, acknowledgements do not list it."""


class Handing:
    """The handing side of one store's process: its channel and its listable workers."""

    __slots__ = ("_db", "_listed", "channel", "listening")

    def __init__(self, db: _Statements, listening: Callable[[], bool]) -> None:
        self._db = db
        self._listed: dict[str, _Listed] = {}
        self.listening = listening
        """Whether the store's LISTEN is in place: a worker is listed only while it is."""
        self.channel = f"apalis-h-{secrets.token_hex(8)}"
        """This process's channel: unique, so only this process hears the tasks handed to it."""

    def enlist(self, queue: str, worker: WorkerContext, give: Give) -> None:
        """Let pushes hand `worker`'s tasks from now on (its claims list it when idle). A worker
        that polls again after an error keeps what it received (`got`)."""
        listed = _Listed(queue, worker.poll_interval + worker.keep_alive, give)
        before = self._listed.get(worker.id)
        if before is not None:
            listed.got = before.got
        self._listed[worker.id] = listed

    def params(self, worker_ids: Sequence[str], *, ack: bool = False) -> dict[str, Any] | None:
        """The `_listing` parameters of a claim for `worker_ids` (those a push may hand to), or
        None when there are none; with `ack`, those whose last claim came back full are left out
        (under a backlog an acknowledgement's claim ahead gets them tasks, and `ack` is cheaper
        than `ack_listing`)."""
        listed = self._listed
        if not listed or not self.listening():
            return None
        workers = [w for w in worker_ids if w in listed and not (ack and listed[w].full)]
        if not workers:
            return None
        return {
            "channel": self.channel,
            "list_workers": workers,
            "list_spans": [listed[w].span for w in workers],
            "list_gots": [listed[w].got for w in workers],
        }

    def received(self, worker_id: str) -> str | None:
        """The id of the last task handed to `worker_id` that it received (None: none)."""
        listed = self._listed.get(worker_id)
        return listed.got or None if listed is not None else None

    def claimed(self, worker_id: str, full: bool) -> None:
        """A claim for `worker_id` got all it asked for (`full`), or not."""
        listed = self._listed.get(worker_id)
        if listed is not None:
            listed.full = full

    def heard(self, payload: str) -> None:
        """A task handed to one of this process's workers (`enqueue_hand`'s note)."""
        try:
            worker_id, task_id, data, max_attempts, run_at, priority, key, meta, created_at = json.loads(payload)
        except ValueError:
            return
        listed = self._listed.get(worker_id)
        if listed is None or listed.got == task_id:
            return  # its worker said farewell (the task went back then), or heard twice
        listed.got = task_id
        task = Task(
            id=task_id,
            args=base64.b64decode(data),
            ctx=TaskContext(
                queue=listed.queue,
                status=Status.RUNNING,
                attempts=1,
                max_attempts=max_attempts,
                run_at=run_at,
                priority=priority,
                idempotency_key=key,
                meta=meta or _NO_META,
                lock_by=worker_id,
                created_at=created_at,
            ),
        )
        listed.give(worker_id, [task])

    async def rejoined(self) -> None:
        """Listening again: the tasks handed to this process's workers meanwhile, whose NOTIFY
        may have been missed, are given to them (those already received are not)."""
        listed = self._listed
        if not listed:
            return
        for row in await self._db.fetch("handed_lost", {"workers": list(listed)}):
            task = task_from_row(row)
            worker_id = task.ctx.lock_by or ""
            one = listed.get(worker_id)
            if one is not None and one.got != task.id:
                one.got = task.id
                one.give(worker_id, [task])

    async def unlist(self, worker_id: str) -> None:
        """`worker_id`'s poll stream closed: nothing more is handed to it (best effort: a task
        handed meanwhile is released by the queue, or goes back with the farewell)."""
        if worker_id in self._listed:
            with contextlib.suppress(Exception):
                await self._db.execute("unlist", {"worker": worker_id})

    async def farewell(self, worker_id: str, *, stopped: bool) -> None:
        """`worker_id` says farewell: its listing goes, and a task handed to it that it never
        received goes back to the queue. `stopped`: its poll stream is closed too, so it is
        forgotten (a farewell after a failed beat, while it still polls, keeps it)."""
        listed = self._listed.get(worker_id)
        if listed is None:
            return
        try:
            await self._db.fetch("give_back", {"worker": worker_id, "got": listed.got or None})
        finally:
            if stopped:
                self._listed.pop(worker_id, None)
