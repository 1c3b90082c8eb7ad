"""One worker: polls a queue, runs its tasks through the layers, and lets the store acknowledge.

Three things run side by side: the heartbeat stream (registration, leases, orphan sweep), the
poll loop (takes a task only when a slot is free: backpressure), and the runs themselves. The
whole loop, for a store that claims ahead (apalis_cli/ahead.py):

    heartbeat() ── every keep_alive ──▶ store: register, renew leases, sweep orphans
                                          │  (tasks held ahead count as this worker's)
    _poll_loop ◀── poll_compact() ◀───────┤  tasks held ahead first, else a claim of
        │          (None when idle)       │  free_slots() tasks; idle: wait for a wake-up
        ▼                                 │
    _start ─▶ _run_one: one asyncio task a run, through the service (outermost first):
                store ack (middleware())  ->  cancel  ->  safety-net retry  ->  the layers  ->  decode + handler
                   │
                   ▼
              AckBatcher (acks.py): the outcomes of one loop turn go in one write, `ack_batch`;
              that write also claims, for each worker whose runs it ends, as many tasks as
              those runs free, and hands them to that worker's poll stream (ClaimsAhead)

A store without claims ahead runs the same loop: its ack only acknowledges, and the next claim
is the poll stream's own. Releasing a slot wakes the poll loop (`_slot_freed`).

The worker takes `poll_compact`, not the seed's decoded `poll` (the contract keeps both, and the
conformance suite proves both on every store): decoding is part of a run, not of the poll loop.
A payload that cannot be decoded is then that run's outcome (killed by the safety net, seen by
the layers and events like any other ending, written in the same batched acknowledgement),
where `poll` has to kill it out of band (queue_base.decoded); decoding runs in each run's own
asyncio task, not serially in the loop that claims for every slot; and the handler's task keeps
the bytes as stored (a command handler gets them on stdin as they are).

The safety net turns any exception that escapes the configured layers into a persisted retry or a
kill, so no run can end without an acknowledgement. Whatever a handler returns or raises fails
its own run at worst: a result no store can keep and a `SystemExit` or `KeyboardInterrupt` are
that run's errors, and a `CancelledError` is a stop only when the run was really cancelled.
Signals are not handled here: the supervisor (or any caller) sets the `stop` event.

A cancel (`WorkerContext.on_cancel`, called by the store) stops one run where it runs: its asyncio
task is cancelled, so an async handler gets `CancelledError`, a command gets SIGTERM then SIGKILL,
a handler in a child process has its child killed, and a sync handler in a thread, which nothing
can stop, sees `ctx.cancelled` turn true and the run ends when the thread returns. The cancel
layer, just inside the store's acknowledgement, turns that cancellation into `Outcome.cancel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

from .backend import BackendExt, WorkerContext
from .errors import HandlerExit, describe_error
from .events import (
    BackendUnavailable,
    CancelRequested,
    Event,
    EventListener,
    HeartbeatFailed,
    HeartbeatSent,
    Idle,
    QueuePaused,
    Started,
    Stopped,
    TaskFinished,
    WaitingForRuns,
)
from .fleet.limits import FleetLimits, fleet_limits
from .layers.retry import Backoff, RetryLayer
from .polling import woken
from .retrying import delays
from .service import Layer, Outcome, Service, compose, stop_requested
from .storable import check_result
from .task import Task, TaskId

__all__ = ["Handler", "Worker"]

Handler = Callable[[Any, Task[bytes]], Awaitable[Any]]
"""The adapted user handler: called with the decoded args and the task (for its context)."""

_MAX_RECONNECT_WAIT = 5.0
_TOLD_MAX = 10_000
_FIRST_RETRY = 0.1


class Worker:
    """Runs one queue's tasks with up to `concurrency` in flight."""

    def __init__(
        self,
        *,
        name: str,
        backend: BackendExt,
        handler: Handler,
        concurrency: int = 1,
        layers: Sequence[Layer] = (),
        keep_alive: float = 10.0,
        stale_after: float | None = None,
        poll_interval: float = 1.0,
        shutdown_timeout: float = 30.0,
        retention: float = 7 * 86400.0,
        backoff: Backoff | None = None,
        on_event: Sequence[EventListener] = (),
        stoppable: bool = True,
    ) -> None:
        """`stoppable=False` says a cancel cannot stop `handler`'s runs (a sync callable's
        threads): a stop then waits for them past `shutdown_timeout`, their tasks kept under
        this worker's heartbeat, rather than release tasks whose handler still runs."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.name = name
        self.backend = backend
        self.concurrency = concurrency
        self.shutdown_timeout = shutdown_timeout
        self.stoppable = stoppable
        self._listeners = list(on_event)
        self._running: dict[TaskId, asyncio.Task[None]] = {}
        self._handling: dict[TaskId, tuple[asyncio.Task[Any], Task[Any]]] = {}
        """The runs a cancel may stop now: between the acknowledgement and the handler."""
        self._told: dict[TaskId, tuple[str, float]] = {}
        """Cancels told of tasks not running here yet (claimed ahead, or starting): the reason and
        when; such a task ends cancelled without running, if it starts within stale_after."""
        self.paused = False
        """Whether the store last said this worker's queue is paused: it then claims at most once
        per poll_interval (and the store's claim hands out nothing)."""
        self._resumed = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._beating = asyncio.Event()
        """Set while the last beat got through: the poll loop claims again only after one."""
        self._stopped = False
        self._consuming = False
        """True while the poll loop takes tasks: a store may then start one at once (`_start_now`)."""
        self._idle = False
        """Whether the poll stream said idle since the last task started (Idle was sent)."""
        self._heartbeat: AsyncIterator[None] = _no_beats()
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop `run` runs on: runs are made its tasks without `asyncio.create_task`'s
        look-up of the running loop (a `getpid` system call on Python 3.11) and its frame."""
        self.context = WorkerContext(
            # The random tail tells apart two processes with one host name and pid (containers).
            id=f"{name}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}",
            name=name,
            queue=backend.get_queue(),
            concurrency=concurrency,
            keep_alive=keep_alive,
            stale_after=stale_after if stale_after is not None else 3 * keep_alive,
            poll_interval=poll_interval,
            retention=retention,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=time.time(),
            layers=tuple(repr(layer) for layer in layers),
            free_slots=self.free_slots,
            running=self._running.keys,
            on_cancel=self.cancel_run,
            on_paused=self._paused,
            start=self._start_now,
            slot=self._slot,
            limits=_fleet_limits(backend, layers),
        )
        self._service = compose(
            [backend.middleware(), self._cancellable, RetryLayer(backoff), *layers],
            _handler_service(handler, backend.codec.decode),
        )

    # -- what the store and the console read -----------------------------------------------

    def free_slots(self) -> int:
        """How many more tasks this worker may start now."""
        return self.concurrency - len(self._running)

    @property
    def running(self) -> int:
        """How many runs are in flight."""
        return len(self._running)

    def hurry(self) -> None:
        """Stop now: cancel every run (each goes back to the queue) instead of waiting.

        Runs that cannot be stopped (`stoppable=False`) go on: only ending the process ends
        them, and their tasks then come back once this worker's heartbeat is stale."""
        if not self.stoppable:
            return
        for task in list(self._running.values()):
            task.cancel()

    def cancel_run(self, task_id: TaskId, reason: str) -> bool:
        """Stop the run of `task_id` (a store calls this, as `WorkerContext.on_cancel`): it is
        acknowledged cancelled with `reason`. False when no run of it was stopped now: it was
        already asked to, its outcome is being written (it stands), or it has not started here
        (then, if it starts within stale_after, it ends cancelled without running)."""
        handling = self._handling.get(task_id)
        if handling is None:
            # Not started yet (held ahead by the poll stream, or about to start): its run will
            # not start. Bounded, in case a store tells of tasks this worker never gets.
            if len(self._told) >= _TOLD_MAX:
                del self._told[next(iter(self._told))]
            self._told[task_id] = (reason, time.monotonic())
            return False
        run, task = handling
        if task.ctx.cancelled:
            return False
        task.ctx.mark_cancelled(reason)
        run.cancel()
        self._emit(CancelRequested(worker=self.name, queue=self.context.queue, task_id=task_id, reason=reason))
        return True

    def _cancellable(self, inner: Service) -> Service:
        """The layer that lets `cancel_run` stop a run, and writes a stopped run as cancelled."""
        handling = self._handling

        told = self._told
        stale_after = self.context.stale_after

        async def run(task: Task[Any]) -> Outcome:
            if told:
                early = told.pop(task.id, None)
                if early is not None and time.monotonic() - early[1] < stale_after:
                    task.ctx.mark_cancelled(early[0])
                    self._emit(
                        CancelRequested(worker=self.name, queue=self.context.queue, task_id=task.id, reason=early[0])
                    )
                    return Outcome.cancel(early[0])
            current = asyncio.current_task(self._loop)
            assert current is not None
            handling[task.id] = (current, task)
            try:
                outcome = await inner(task)
            except asyncio.CancelledError:
                reason = task.ctx.cancel_reason
                # A stop of the worker at the same time wins: the task is released (and the store
                # turns a released task with a cancel requested into a cancelled one).
                if reason is None or current.uncancel() > 0:
                    raise
                return Outcome.cancel(reason)
            finally:
                del handling[task.id]
            reason = task.ctx.cancel_reason
            if reason is not None and current.uncancel() == 0:
                return Outcome.cancel(reason)  # the handler swallowed the cancellation
            return outcome

        return run

    def _paused(self, paused: bool) -> None:
        if paused != self.paused:
            self.paused = paused
            if paused:
                self._resumed.clear()
            else:
                self._resumed.set()
            self._emit(QueuePaused(worker=self.name, queue=self.context.queue, paused=paused))

    def subscribe(self, listener: EventListener) -> None:
        """Call `listener` with every event of this worker from now on."""
        self._listeners.append(listener)

    # -- the life of a worker --------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, burst: bool = False) -> None:
        """Work until `stop` is set (or, with `burst`, until nothing is ready or running).

        On stop: take no more tasks, give running ones `shutdown_timeout` to finish, then cancel
        them (they go back to the queue), or wait on for runs that cannot be stopped. Nothing
        unacknowledged is lost either way, and no task goes back while its handler runs.
        """
        self._loop = asyncio.get_running_loop()
        self._heartbeat = self.backend.heartbeat(self.context)
        await self._first_beat(stop)
        beats = asyncio.create_task(self._beat_forever(), name=f"{self.name}-heartbeat")
        poller = asyncio.create_task(self._poll_loop(burst), name=f"{self.name}-poll")
        stopper = asyncio.create_task(stop.wait())
        released = 0
        try:
            await asyncio.wait({poller, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if poller.done():
                poller.result()  # a crash of the poll loop is the worker's crash
        finally:
            for task in (poller, stopper):
                task.cancel()
            await asyncio.gather(poller, stopper, return_exceptions=True)
            released = await self._drain()
            self._stopped = True
            await _cancelled(beats)
            with contextlib.suppress(Exception):
                await self._heartbeat.aclose()  # type: ignore[attr-defined]
            self._emit(Stopped(worker=self.name, queue=self.context.queue, released=released))

    async def _first_beat(self, stop: asyncio.Event) -> None:
        waits = self._beat_delays()
        while True:
            try:
                await anext(self._heartbeat)
                break
            except Exception as exc:
                if stop.is_set():
                    raise
                await self._beat_failed(exc, waits)
        self._beating.set()
        self._beat_sent()
        self._emit(
            Started(
                worker=self.name,
                queue=self.context.queue,
                worker_id=self.context.id,
                concurrency=self.concurrency,
            )
        )

    async def _beat_forever(self) -> None:
        waits = self._beat_delays()
        while not self._stopped:
            try:
                await anext(self._heartbeat)
            except StopAsyncIteration:
                return
            except Exception as exc:
                if self._stopped:
                    return
                await self._beat_failed(exc, waits)
                continue
            waits = self._beat_delays()
            self._beating.set()
            self._beat_sent()

    def _beat_delays(self) -> Iterator[float]:
        # The store has already retried the beat itself, so the worker tries again soon, and
        # never later than `keep_alive`: once the store answers, other workers must see this
        # one alive within `stale_after`, or they take its tasks.
        return delays(_FIRST_RETRY, min(self.context.keep_alive, _MAX_RECONNECT_WAIT))

    async def _beat_failed(self, exc: Exception, waits: Iterator[float]) -> None:
        """Report a failed beat, wait the next of `waits`, and start a new heartbeat stream (a
        failure ends the old one). Until it has beaten again the worker claims nothing
        (`_poll_loop`)."""
        self._beating.clear()
        self._emit(HeartbeatFailed(worker=self.name, queue=self.context.queue, error=describe_error(exc)))
        await asyncio.sleep(next(waits))
        self._heartbeat = self.backend.heartbeat(self.context)

    async def _poll_loop(self, burst: bool) -> None:
        waits = delays(_FIRST_RETRY, _MAX_RECONNECT_WAIT)
        while True:
            stream = self.backend.poll_compact(self.context)
            try:
                await self._consume(stream, burst)
                return
            except Exception as exc:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    # The worker stops, and a driver turned the cancellation into an error of its
                    # own (aiormq: an RPC cancelled mid-call closes its channel and raises the
                    # close's reason): a reconnect here would poll on for ever.
                    raise asyncio.CancelledError from exc
                wait = next(waits)
                self._emit(
                    BackendUnavailable(
                        worker=self.name, queue=self.context.queue, error=describe_error(exc), retry_in=wait
                    )
                )
                await asyncio.sleep(wait)
                # A reconnecting worker beats before it claims: a task claimed while the others
                # still see it gone would be swept from under it.
                await self._beating.wait()
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()  # type: ignore[attr-defined]

    async def _consume(self, stream: AsyncIterator[Task[bytes] | None], burst: bool) -> None:
        self._consuming = True
        try:
            await self._take_all(stream, burst)
        finally:
            self._consuming = False

    async def _take_all(self, stream: AsyncIterator[Task[bytes] | None], burst: bool) -> None:
        self._idle = False
        start = self._start
        while True:
            if len(self._running) >= self.concurrency:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            if self.paused and self._idle:
                # The store's claim refuses too. Meanwhile the worker asks at most once per
                # poll_interval: how it hears of a resume from a store that tells it only then.
                # Only after the stream said idle: tasks it gives come from a claim the store
                # granted (a resume in another process, which this worker's next heartbeat
                # would be the first to tell), and start at once, not one per poll_interval.
                await woken(self._resumed, self.context.poll_interval)
            task = await anext(stream)
            if task is not None:
                self._idle = False
                start(task)
                continue
            if burst and not self._running:
                return
            if not self._idle:
                self._idle = True
                self._emit(Idle(worker=self.name, queue=self.context.queue))

    def _start_now(self, task: Task[bytes]) -> bool:
        """Start `task`, which the store claimed for this worker, at once (`WorkerContext.start`):
        False, nothing done, when no slot is free or the poll loop is not taking tasks (stopping,
        or between two streams)."""
        if not self._consuming or len(self._running) >= self.concurrency:
            return False
        self._idle = False  # the next None from the stream is a new idle spell
        self._start(task)
        return True

    async def _slot(self) -> None:
        """Wait until a slot is free (`WorkerContext.slot`): runs started at once took them."""
        while len(self._running) >= self.concurrency:
            self._slot_freed.clear()
            await self._slot_freed.wait()

    def _start(self, task: Task[bytes]) -> None:
        if task.id in self._running:
            # The store handed out a task this worker is still running (its lease lapsed and it
            # was claimed again): the run in flight acknowledges it; a second would race it.
            return
        loop = self._loop
        assert loop is not None  # tasks start only while `run` runs
        self._running[task.id] = loop.create_task(self._run_one(task))

    async def _run_one(self, task: Task[bytes]) -> None:
        started = time.perf_counter()
        due = task.ctx.run_at
        waited = max(time.time() - due, 0.0) if due > 0 and self._listeners else None
        outcome: Outcome | None = None
        error: str | None = None
        try:
            outcome = await self._service(task)
        except asyncio.CancelledError:
            outcome = Outcome.release()
            raise
        except BaseException as exc:  # only the acknowledgement itself can fail here
            error = f"acknowledgement failed, the task will run again: {describe_error(exc)}"
        finally:
            del self._running[task.id]
            if self._told:
                self._told.pop(task.id, None)  # told while its outcome was being written: too late
            self._slot_freed.set()
            if self._listeners:
                self._emit(
                    TaskFinished(
                        worker=self.name,
                        queue=self.context.queue,
                        task_id=task.id,
                        attempt=task.ctx.attempts,
                        outcome=outcome.kind.value if outcome else "error",
                        duration=time.perf_counter() - started,
                        error=outcome.error if outcome else error,
                        waited=waited,
                    )
                )

    async def _drain(self) -> int:
        """Let running tasks finish within `shutdown_timeout`; cancel (release) the rest, or
        wait for them when they cannot be stopped (the heartbeat keeps their tasks meanwhile)."""
        if not self._running:
            return 0
        pending = set(self._running.values())
        _, late = await asyncio.wait(pending, timeout=self.shutdown_timeout)
        if late and not self.stoppable:
            self._emit(WaitingForRuns(worker=self.name, queue=self.context.queue, running=len(late)))
            await asyncio.wait(late)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        # Count every run that ended cancelled, so runs cut short by `hurry()` are counted too.
        return sum(1 for task in pending if task.cancelled())

    def _beat_sent(self) -> None:
        if self._listeners:
            self._emit(HeartbeatSent(worker=self.name, queue=self.context.queue, stale_after=self.context.stale_after))

    def _emit(self, event: Event) -> None:
        for listener in self._listeners:
            listener(event)


def _handler_service(handler: Handler, decode: Callable[[bytes], Any]) -> Service:
    async def invoke(task: Task[Any]) -> Outcome:
        try:
            result = await handler(decode(task.args), task)
        except Exception:
            raise
        except asyncio.CancelledError as exc:
            if stop_requested():
                raise
            raise HandlerExit("CancelledError") from exc
        except BaseException as exc:
            # SystemExit or KeyboardInterrupt from a handler would end the event loop, and the
            # daemon with it: carried as an ordinary error, it fails this run alone.
            raise HandlerExit(type(exc).__name__) from exc
        if result is not None:
            check_result(result)  # a result no store can keep fails this run, not its batch's ack
        return Outcome.done(result)

    return invoke


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it ends, asking again while it runs on: a driver may swallow
    a cancellation (Python 3.11's wait_for does, when it arrives as its awaitable finishes).
    Asked again only after a few seconds, so a heartbeat's farewell has time to finish."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=5.0)
    with contextlib.suppress(BaseException):
        task.result()


async def _no_beats() -> AsyncIterator[None]:
    """The heartbeat stream of a worker that has not started."""
    return
    yield


def _fleet_limits(backend: BackendExt, layers: Sequence[Layer]) -> FleetLimits | None:
    """The `scope = "global"` limits among `layers`, which `backend`'s claim must hold."""
    from .backend import Capability
    from .errors import Unsupported, UsageError

    try:
        limits = fleet_limits(layers)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if limits is not None and not backend.capabilities.has(Capability.FLEET_LIMITS):
        reason = backend.capabilities.why_not(Capability.FLEET_LIMITS)
        raise Unsupported(f"this store cannot hold a global limit ({limits}): {reason}")
    return limits
