"""Where this process's control messages go (see `apalis_pgmq.control`): cancels to the
workers of the queue, pauses to them too, finished tasks to the waiters."""

from __future__ import annotations

from apalis_cli.backend import WorkerContext
from apalis_cli.control import tell_cancel
from apalis_cli.polling import Waker

__all__ = ["ControlHub"]


class ControlHub:
    """Where this process's control messages go: cancels to the workers of the queue, pauses to
    them too (for the live view, and a resume wakes the pollers), finished tasks to waiters."""

    def __init__(self, pollers: dict[str, Waker]) -> None:
        self._pollers = pollers
        self._workers: dict[str, dict[str, WorkerContext]] = {}
        self._finals: dict[str, Waker] = {}

    def register(self, worker: WorkerContext) -> None:
        """Tell `worker` of cancels and pauses of its queue from now on."""
        self._workers.setdefault(worker.queue, {})[worker.id] = worker

    def unregister(self, worker: WorkerContext) -> None:
        """Stop telling `worker`."""
        self._workers.get(worker.queue, {}).pop(worker.id, None)

    def finals(self, queue: str) -> Waker:
        """Notified whenever tasks of `queue` become final (for waiters)."""
        return self._finals.setdefault(queue, Waker())

    def wake_waiters(self) -> None:
        """Every waiter looks again (after a reconnection: notifications may have been missed)."""
        for waker in self._finals.values():
            waker.notify()

    def dispatch(self, payload: str) -> None:
        """Act on one control message (unknown ones are ignored: a newer apalis may send more)."""
        kind, _, rest = payload.partition(" ")
        if kind == "f":
            if (waker := self._finals.get(rest)) is not None:
                waker.notify()
        elif kind == "c":
            queue, _, rest = rest.partition(" ")
            task_id, _, reason = rest.partition(" ")
            for worker in list(self._workers.get(queue, {}).values()):
                tell_cancel(worker, task_id, reason)
        elif kind == "p":
            queue, _, flag = rest.partition(" ")
            for worker in list(self._workers.get(queue, {}).values()):
                worker.on_paused(flag == "1")
            if flag == "0" and (waker := self._pollers.get(queue)) is not None:
                waker.notify()
