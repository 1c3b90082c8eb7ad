"""The board's model: every queue of every backend in the config, opened once, and what can be
asked of each. Knows nothing of HTTP: the JSON API and the pages both call it.

A store that cannot be opened (its server is down) does not stop the board: its queues are
shown with the store's error (redacted), and opening it is tried again on a later refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..backend import BackendExt, Capability, Inspector, Store, TaskSink
from ..browsing import ActivitySource, CursorBrowser, TaskBrowser
from ..codec import codec_by_name
from ..config import Config, WorkerConfig
from ..errors import ApalisError, Unsupported
from ..redact import redact_url
from ..registry import build_store
from ..task import Task, TaskId
from .present import problem

__all__ = ["Board", "NotFound", "QueueView"]

_REOPEN_EVERY = 10.0
_OPEN_TIMEOUT = 10.0


class NotFound(ApalisError):
    """No such queue or task (the API answers 404)."""


@dataclass(slots=True)
class _StoreSlot:
    """One backend's store: opened by the board (owned) or lent by the daemon."""

    name: str
    store: Store
    owned: bool
    url: str = ""  # passwords masked
    opened: bool = False
    error: str | None = None
    tried_at: float = float("-inf")


@dataclass(slots=True, kw_only=True)
class QueueView:
    """One queue of one backend, as the board shows it: where it lives and what it can do."""

    backend_name: str
    queue: str
    kind: str
    codec: str
    workers: tuple[str, ...]
    backend: BackendExt
    slot: _StoreSlot = field(repr=False)
    limit_key: str | None = None
    """The argument whose value a pushed task's global limits count it under (`apalis_cli.fleet`)."""

    @property
    def key(self) -> str:
        """`backend/queue`: unique in the board."""
        return f"{self.backend_name}/{self.queue}"

    @property
    def url(self) -> str:
        """The store's URL, its password masked."""
        return self.slot.url

    @property
    def error(self) -> str | None:
        """Why the store is not open, or None."""
        return None if self.slot.opened else (self.slot.error or "not opened yet")

    def why_not(self, capability: Capability) -> str | None:
        """Why this queue's store lacks `capability` (None when it has it): the queue's own
        declaration or its store's (a queue may keep the default of a shared base)."""
        return self.backend.capabilities.why_not(capability) or self.slot.store.capabilities.why_not(capability)

    @property
    def inspector(self) -> Inspector | None:
        """The queue as an `Inspector`, where its store has one."""
        backend: Any = self.backend
        return backend if isinstance(backend, Inspector) else None

    @property
    def browser(self) -> TaskBrowser | None:
        """The queue as a `TaskBrowser` (keyset pages), where its store has one."""
        backend: Any = self.backend
        return backend if isinstance(backend, TaskBrowser) else None

    @property
    def cursor_browser(self) -> CursorBrowser | None:
        """The queue as a `CursorBrowser` (keyset pages in the store's order), where it is one."""
        backend: Any = self.backend
        return backend if isinstance(backend, CursorBrowser) else None

    @property
    def activity_source(self) -> ActivitySource | None:
        """The queue as an `ActivitySource`, where its store has one."""
        backend: Any = self.backend
        return backend if isinstance(backend, ActivitySource) else None

    @property
    def sink(self) -> TaskSink | None:
        """The queue as a `TaskSink`, where its store takes pushes."""
        backend: Any = self.backend
        return backend if isinstance(backend, TaskSink) else None

    def require_inspector(self, capability: Capability, doing: str) -> Inspector:
        """The inspector, or `Unsupported` saying why this queue cannot do `doing`."""
        inspector = self.inspector
        why = "the store has no random access to its tasks" if inspector is None else self.why_not(capability)
        if inspector is None or why is not None:
            raise Unsupported(f'queue "{self.queue}" on backend "{self.backend_name}" cannot {doing}: {why}')
        return inspector


class Board:
    """The queues of a config, over stores opened here or lent by a running daemon."""

    def __init__(self, config: Config, lent: Mapping[str, Store] | None = None) -> None:
        self.config = config
        self._slots: dict[str, _StoreSlot] = {}
        self.queues: list[QueueView] = []
        self.started_at = time.time()
        lent = dict(lent or {})
        for worker in config.workers:
            backend_name = _queue_backend(worker)
            if backend_name is None:
                continue  # a cron worker without pipe_to: its ticks live in its daemon only
            slot = self._slots.get(backend_name)
            if slot is None:
                store = lent.get(backend_name)
                table = config.backends.get(backend_name)
                slot = _StoreSlot(
                    backend_name,
                    store or build_store(config, backend_name),
                    owned=store is None,
                    url=redact_url(table.url) if table is not None else "",
                )
                slot.opened = store is not None
                self._slots[backend_name] = slot
            view = self.find_view(worker.queue, backend_name)
            if view is not None:
                view.workers = (*view.workers, worker.name)
                continue
            codec = codec_by_name(worker.codec)
            self.queues.append(
                QueueView(
                    backend_name=backend_name,
                    queue=worker.queue,
                    kind=slot.store.kind,
                    codec=worker.codec,
                    workers=(worker.name,),
                    backend=slot.store.backend(worker.queue, codec=codec, max_attempts=worker.max_attempts),
                    slot=slot,
                    limit_key=_limit_key(worker),
                )
            )

    @property
    def cron_workers(self) -> list[WorkerConfig]:
        """The config's cron workers (shown with their next ticks)."""
        return [w for w in self.config.workers if w.cron is not None]

    async def open(self) -> None:
        """Open every store the board owns; a store that fails is kept with its error."""
        await asyncio.gather(*(self._open(slot) for slot in self._slots.values()))

    async def reopen_failed(self) -> None:
        """Try again, now and then, to open the stores that failed."""
        now = time.monotonic()
        retry = [s for s in self._slots.values() if not s.opened and now - s.tried_at >= _REOPEN_EVERY]
        await asyncio.gather(*(self._open(slot) for slot in retry))

    async def _open(self, slot: _StoreSlot) -> None:
        if slot.opened:
            return
        slot.tried_at = time.monotonic()
        try:
            async with asyncio.timeout(_OPEN_TIMEOUT):
                await slot.store.open()
        except Exception as exc:
            slot.error = problem(exc, self.config.secrets)
            with contextlib.suppress(Exception):
                await slot.store.close()
        else:
            slot.opened, slot.error = True, None

    async def close(self) -> None:
        """Close the stores the board opened (lent ones belong to the daemon)."""
        for slot in self._slots.values():
            if slot.owned and slot.opened:
                slot.opened = False
                with contextlib.suppress(Exception):
                    await slot.store.close()

    def find_view(self, queue: str, backend: str | None = None) -> QueueView | None:
        """The queue named `queue` (on `backend`, when given), or None."""
        for view in self.queues:
            if view.queue == queue and (backend is None or view.backend_name == backend):
                return view
        return None

    def view(self, queue: str, backend: str | None = None) -> QueueView:
        """The queue named `queue` (on `backend`); `NotFound`, or a usage error when the name is
        on several backends and none was given."""
        matches = [v for v in self.queues if v.queue == queue and (backend is None or v.backend_name == backend)]
        if not matches:
            where = f' on backend "{backend}"' if backend is not None else ""
            raise NotFound(f'no queue "{queue}"{where} in {self.config.path}')
        if len(matches) > 1:
            names = ", ".join(v.backend_name for v in matches)
            raise Ambiguous(f'the queue "{queue}" is on several backends ({names}): say which with ?backend=')
        return matches[0]

    async def find_task(
        self, task_id: TaskId, queue: str | None = None, backend: str | None = None
    ) -> tuple[QueueView, Task[bytes]]:
        """The task `task_id`, looked for in `queue` (on `backend`) or, without one, in every
        queue that can be inspected; `NotFound` when none has it.

        A named queue whose store can inspect only part of its tasks (rsmq, NATS: not the done
        ones) is asked too, as `apalis inspect --id` asks it; a store that cannot find a task
        by id at all says so (`Unsupported`) and is passed over."""
        views = [self.view(queue, backend)] if queue is not None else self.queues
        for view in views:
            inspector = view.inspector
            if inspector is None or view.error is not None:
                continue
            if queue is None and view.why_not(Capability.INSPECT) is not None:
                continue
            try:
                task = await inspector.get(task_id)
            except Unsupported:
                continue
            if task is not None:
                return view, task
        raise NotFound(f"no task {task_id}" + (f' in queue "{queue}"' if queue is not None else ""))


class Ambiguous(Unsupported):
    """A queue name on several backends, none chosen."""


def _queue_backend(worker: WorkerConfig) -> str | None:
    if worker.pipe_to is not None:
        return worker.pipe_to
    if worker.cron is not None:
        return None
    return worker.backend


def _limit_key(worker: WorkerConfig) -> str | None:
    limits = worker.limits
    return limits.key if limits is not None and limits.keyed else None
