"""The Monitor: runs many workers, restarts a crashed one with backoff, stops them gracefully.

Signals belong here (and to the CLI), never to `Worker`: the first SIGTERM or SIGINT asks every
worker to stop taking tasks and finish within its `shutdown_timeout`; a second SIGINT (or
SIGTERM) cancels the runs still going, which go back to their queues. Runs that no cancel can
stop (a sync handler's threads) end only with the process: given `exit_now`, the second signal
calls it once the runs that could be stopped were released (or after a few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator, Sequence

from .errors import describe_error
from .events import EventListener, WorkerCrashed
from .retrying import delays
from .worker import Worker

__all__ = ["Supervisor", "WorkerFactory"]

WorkerFactory = Callable[[], Worker]
"""Builds a fresh worker; called once at start and again after each crash."""

_HEALTHY_AFTER = 60.0  # a worker that ran this long before crashing restarts without delay
_HURRY_GRACE = 3.0  # after a second signal, how long released runs may take to be written


class Supervisor:
    """Runs workers built by `factories` until stopped (or, with `burst`, until all are done)."""

    def __init__(
        self,
        factories: Sequence[WorkerFactory],
        *,
        restart_backoff: float = 0.5,
        restart_backoff_max: float = 30.0,
        on_event: Sequence[EventListener] = (),
    ) -> None:
        self._factories = list(factories)
        self._restart_backoff = restart_backoff
        self._restart_backoff_max = restart_backoff_max
        self._listeners = list(on_event)
        self._stop = asyncio.Event()
        self._ended = asyncio.Event()
        self._signals = 0
        self._exit_now: Callable[[int], None] | None = None
        self._forcing: asyncio.Task[None] | None = None
        self.workers: list[Worker | None] = [None] * len(self._factories)

    def subscribe(self, listener: EventListener) -> None:
        """Hear every event of every worker, from the next (re)start on."""
        self._listeners.append(listener)

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for."""
        return self._stop.is_set()

    async def run(self, *, burst: bool = False) -> None:
        """Run every worker until a stop (each restarted after a crash, with backoff)."""
        try:
            await asyncio.gather(*(self._keep_running(i, burst) for i in range(len(self._factories))))
        finally:
            self._ended.set()

    def stop(self) -> None:
        """Stop taking tasks; running ones get their worker's `shutdown_timeout` to finish."""
        self._stop.set()

    def stop_now(self) -> None:
        """Stop at once: cancel every run (each goes back to its queue)."""
        self._stop.set()
        for worker in self.workers:
            if worker is not None:
                worker.hurry()

    def install_signal_handlers(self, *, exit_now: Callable[[int], None] | None = None) -> None:
        """SIGTERM/SIGINT: first a graceful stop, then an immediate one. Call inside the loop.

        With `exit_now`, the second signal also ends the process: `exit_now(signal_number)` is
        called (it must not return) unless every worker stopped within a few seconds. That is
        what ends runs no cancel can stop; their tasks come back once the heartbeat is stale."""
        self._exit_now = exit_now
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)

    def remove_signal_handlers(self) -> None:
        """Give the signals back to Python's defaults."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            self.stop()
            return
        self.stop_now()
        if self._exit_now is not None and self._forcing is None:
            self._forcing = asyncio.ensure_future(self._exit_unless_ended(self._exit_now, signum))

    async def _exit_unless_ended(self, exit_now: Callable[[int], None], signum: int) -> None:
        ended = asyncio.ensure_future(self._ended.wait())
        deadline = asyncio.get_running_loop().time() + _HURRY_GRACE
        try:
            # Looked at every 20 ms: the runs that could stop are released, or time is up.
            while not self._only_unstoppable_runs() and asyncio.get_running_loop().time() < deadline:
                await asyncio.wait({ended}, timeout=0.02)
                if ended.done():
                    return
        finally:
            ended.cancel()
        exit_now(signum)

    def _only_unstoppable_runs(self) -> bool:
        """True when runs go on and none of them can be stopped: the released ones are written."""
        workers = [w for w in self.workers if w is not None and w.running]
        return bool(workers) and not any(w.stoppable for w in workers)

    def _restart_delays(self) -> Iterator[float]:
        # Without jitter: a restart is this process's own worker's, and the store operations
        # and reconnects inside it spread themselves already.
        return delays(self._restart_backoff, self._restart_backoff_max, jitter=False)

    async def _keep_running(self, index: int, burst: bool) -> None:
        waits = self._restart_delays()
        while not self._stop.is_set():
            worker = self._factories[index]()
            for listener in self._listeners:
                worker.subscribe(listener)
            self.workers[index] = worker
            started = asyncio.get_running_loop().time()
            try:
                await worker.run(self._stop, burst=burst)
                return  # a clean return: stopped, or a burst that found nothing left
            except Exception as exc:
                if asyncio.get_running_loop().time() - started > _HEALTHY_AFTER:
                    waits = self._restart_delays()
                delay = next(waits)
                event = WorkerCrashed(
                    worker=worker.name, queue=worker.context.queue, error=describe_error(exc), restart_in=delay
                )
                for listener in self._listeners:
                    listener(event)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):  # not wait_for: 3.11's can swallow a cancel
                        await self._stop.wait()
