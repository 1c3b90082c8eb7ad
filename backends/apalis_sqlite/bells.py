"""How the processes sharing one SQLite file tell each other of a cancel or of a task's end.

SQLite has no NOTIFY. Two doorbells stand in for it: files next to the database
(`<db>-cancel`, `<db>-done`), each written (one byte, in place) right after a commit that
someone in another process may wait for. Every process that watches the folder (`watch.py`,
inotify) hears the bell within a millisecond, and only then reads the database: a worker reads
the cancels requested of its runs, a waiter reads its task. A bell is rung after the commit,
never before, so whoever hears it reads what was committed.

Inside one process no bell is needed: the store calls its workers' `on_cancel` and wakes its
waiters at once. Where nothing is watched (no inotify, `watch = false`, `:memory:`), a worker
learns of a cancel at its next heartbeat and a waiter reads again every `_POLL` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Callable
from functools import partial
from typing import Any

from apalis_cli.backend import WorkerContext
from apalis_cli.polling import Waker
from apalis_sql import Queries

from .connection import Database

__all__ = ["CANCEL_SUFFIX", "DONE_SUFFIX", "Bells", "Doorbell"]

CANCEL_SUFFIX = "-cancel"
DONE_SUFFIX = "-done"


class Doorbell:
    """One file that is written to say "look again"; its content means nothing."""

    __slots__ = ("_fd", "_path")

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd = -1

    def ring(self) -> None:
        """Write one byte at the start of the file (made if missing): an inotify IN_MODIFY."""
        try:
            if self._fd < 0:
                self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.pwrite(self._fd, b"\0", 0)
        except OSError:  # a read-only folder, say: listeners fall back to heartbeats and polling
            self.close()

    def close(self) -> None:
        """Release the file descriptor (the file stays)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


class Bells:
    """The store's doorbells, and what this process does when one rings.

    `register`ed workers (those heartbeating in this process) are told of the cancels requested
    of their runs; `finished` wakes this process's waiters whenever a task may have ended.
    """

    def __init__(self, db: Database, queries: Queries, path: str | None) -> None:
        self._db = db
        self._q = queries
        self._cancel = Doorbell(path + CANCEL_SUFFIX) if path is not None else None
        self._done = Doorbell(path + DONE_SUFFIX) if path is not None else None
        self.finished = Waker()
        """Notified when a task may have ended (here, or in another process that rang)."""
        self.watching: Callable[[], bool] = lambda: False
        """True while another process's bells are heard (set by the store)."""
        self._workers: dict[str, WorkerContext] = {}
        self._reading: asyncio.Task[None] | None = None
        self._again = False

    def listeners(self) -> dict[str, Callable[[], None]]:
        """The file suffixes to watch, and what to do when each is written."""
        return {CANCEL_SUFFIX: self._cancel_rang, DONE_SUFFIX: self.finished.notify}

    def register(self, worker: WorkerContext) -> None:
        """Tell `worker` of cancels from now on (until `forget`)."""
        self._workers[worker.id] = worker

    def forget(self, worker_id: str) -> None:
        """Stop telling this worker."""
        self._workers.pop(worker_id, None)

    def cancel_requested(self, requests: list[tuple[str, str, str | None]]) -> None:
        """After the commit of `(task id, reason, lock_by)` cancel requests: tell the workers of
        this process that hold them, and ring for the others."""
        for task_id, reason, lock_by in requests:
            worker = self._workers.get(lock_by or "")
            if worker is not None:
                worker.on_cancel(task_id, reason)
        if requests and self._cancel is not None:
            self._cancel.ring()

    def ended(self) -> None:
        """After the commit of tasks that ended: wake the waiters here, ring for the others."""
        self.finished.notify()
        if self._done is not None:
            self._done.ring()

    def close(self) -> None:
        """Release the doorbells' files and stop reading."""
        for bell in (self._cancel, self._done):
            if bell is not None:
                bell.close()
        if self._reading is not None:
            self._reading.cancel()

    def _cancel_rang(self) -> None:
        """Another process requested a cancel: read those of this process's workers' runs."""
        if not self._workers:
            return
        if self._reading is not None and not self._reading.done():
            self._again = True  # a bell while reading: read once more after this read
            return
        self._reading = asyncio.get_running_loop().create_task(self._read_cancels())

    async def _read_cancels(self) -> None:
        statement = self._q.cancels_running_in
        while True:
            self._again = False
            workers = self._workers
            try:
                rows = await self._db.read(partial(_cancels, statement, sorted({w.queue for w in workers.values()})))
            except Exception:  # the next heartbeat tells the workers as well
                return
            for task_id, reason, lock_by in rows:
                worker = workers.get(lock_by)
                if worker is not None:
                    worker.on_cancel(task_id, reason)
            if not self._again:
                return


def _cancels(statement: str, queues: list[str], conn: sqlite3.Connection) -> list[Any]:
    return conn.execute(statement, {"queues": json.dumps(queues)}).fetchall()
