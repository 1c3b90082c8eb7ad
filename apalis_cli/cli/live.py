"""The live view of `apalis run`: the overview of a running daemon, drawn for the terminal's width.

Three parts, each readable in 80 columns:

- workers: state (paused while the store says its queue is), runs in flight,
  done/retried/killed/cancelled, tasks per second (with room for a
  per-worker extra, e.g. the child processes of a process worker, on lines below its row);
- queues: depth as the store counts it (ready, scheduled, running), read now and then through
  the Inspector by the daemon (`set_depth`), and the start latency p50 over the last minute,
  from the runs this daemon started, and "paused" while the queue is;
- recent errors: the last few, with the task id to look up (`apalis inspect --id`).

`Dashboard` is an `on_event` listener; everything it shows of the store's text goes through
`printable` (a handler's error can hold escape sequences) and is drawn as `Text` (never markup).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from rich.console import Console, ConsoleOptions
from rich.text import Text

from ..backend import QueueStats
from ..events import (
    BackendUnavailable,
    Event,
    HeartbeatFailed,
    HeartbeatSent,
    Idle,
    QueuePaused,
    Started,
    Stopped,
    TaskFinished,
    WaitingForRuns,
    WorkerCrashed,
)
from ..printable import printable
from ..redact import redact
from ..task import Status
from .columns import Column, layout
from .latency import RollingQuantile

__all__ = ["Dashboard", "WorkerDetails", "WorkerView"]

WorkerDetails = Callable[[str], Sequence[str]]
"""Extra lines shown under a worker's row, by worker name (e.g. its child processes)."""

_RATE_WINDOW = 5.0
_ERRORS_SHOWN = 5
_ERROR_BESIDE = 32  # an error gets its own line when less than this is left beside its task id
_STATE_STYLE = {
    "running": "green",
    "idle": "cyan",
    "paused": "yellow",
    "stopped": "dim",
    "crashed": "red",
    "reconnecting": "yellow",
}
_VERDICT = {"retry": "will retry", "kill": "killed", "error": "not acknowledged"}

_WORKER_COLUMNS = (
    Column("worker", foldable=True),
    Column("queue", foldable=True),
    Column("state"),
    Column("running", "run", numeric=True),
    Column("done", numeric=True),
    Column("retried", "retry", numeric=True),
    Column("killed", "kill", numeric=True),
    Column("cancelled", "cncl", numeric=True),  # shown once a run was cancelled: room is short
    Column("tasks/s", "/s", numeric=True),
)
_CANCELLED = 7
_QUEUE_COLUMNS = (
    Column("queue", foldable=True),
    Column("ready", numeric=True),
    Column("scheduled", "sched", numeric=True),
    Column("running", "run", numeric=True),
    Column("start p50", "p50", numeric=True),
    Column("state"),
)


@dataclass(slots=True)
class WorkerView:
    """The counters of one worker in the live view."""

    name: str
    queue: str
    state: str = "starting"
    done: int = 0
    retried: int = 0
    killed: int = 0
    cancelled: int = 0
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    @property
    def failed(self) -> int:
        """Runs that ended in an error (retried or killed)."""
        return self.retried + self.killed

    def rate(self, now: float) -> float:
        """Finished runs per second over the last few seconds."""
        finished = self.done + self.failed + self.cancelled
        self.samples.append((now, finished))
        while len(self.samples) > 2 and now - self.samples[0][0] > _RATE_WINDOW:
            self.samples.popleft()
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


@dataclass(slots=True)
class QueueView:
    """One queue: its depth as last counted, and the start latency of the runs started here."""

    name: str
    depth: QueueStats | None = None
    depth_stale: bool = False  # the last count failed: the figures shown are older
    paused: bool = False  # as the store last said (asked with the depth, or told to a worker)
    latency: RollingQuantile = field(default_factory=RollingQuantile)


@dataclass(slots=True)
class ErrorSeen:
    """One recent error: of a run (with its task id) or of the worker itself."""

    at: float
    worker: str
    what: str
    error: str
    task_id: str | None = None
    repeats: int = 1


class Dashboard:
    """Collects worker events (an `on_event` listener) and draws the overview (`render`)."""

    def __init__(
        self,
        workers: Sequence[tuple[str, str]],
        running: Callable[[str], int],
        stopping: Callable[[], bool],
        *,
        details: WorkerDetails | None = None,
    ) -> None:
        self.views = {name: WorkerView(name=name, queue=queue) for name, queue in workers}
        self.queues = {queue: QueueView(name=queue) for _, queue in workers}
        self.errors: deque[ErrorSeen] = deque(maxlen=_ERRORS_SHOWN)
        self._running = running
        self._stopping = stopping
        self._details = details
        self._started = time.monotonic()

    # -- what the daemon tells it ------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Update the counters from one worker event."""
        view = self.views.get(event.worker)
        if view is None:
            return
        if isinstance(event, TaskFinished):
            if event.outcome == "done":
                view.done += 1
            elif event.outcome == "retry":
                view.retried += 1
            elif event.outcome == "kill":
                view.killed += 1
            elif event.outcome == "cancel":
                view.cancelled += 1
            if event.waited is not None:
                self.queues[view.queue].latency.add(event.waited, time.monotonic())
            if event.error:
                what = f"#{event.attempt} {_VERDICT.get(event.outcome, event.outcome)}"
                self._error(view.name, what, event.error, event.task_id)
            if view.state == "reconnecting":
                view.state = "up"
        elif isinstance(event, Started | Idle | HeartbeatSent):
            if view.state != "stopped":
                view.state = "up"
        elif isinstance(event, QueuePaused):
            self.queues[view.queue].paused = event.paused
        elif isinstance(event, HeartbeatFailed):
            view.state = "reconnecting"
            self._error(view.name, "heartbeat failed", event.error)
        elif isinstance(event, BackendUnavailable):
            view.state = "reconnecting"
            self._error(view.name, "store unavailable", event.error)
        elif isinstance(event, WorkerCrashed):
            view.state = "crashed"
            self._error(view.name, "crashed", event.error)
        elif isinstance(event, WaitingForRuns):
            self._error(
                view.name,
                "stopping",
                f"waiting for {event.running} run(s) in threads, which cannot be stopped"
                " (Ctrl-C again exits at once; their tasks come back after stale_after)",
            )
        elif isinstance(event, Stopped):
            view.state = "stopped"

    def set_depth(self, queue: str, stats: QueueStats | None) -> None:
        """The store's latest counts for `queue`; None: counting failed (the last figures stay)."""
        view = self.queues.get(queue)
        if view is None:
            return
        if stats is None:
            view.depth_stale = True
        else:
            view.depth, view.depth_stale = stats, False

    def set_paused(self, queue: str, paused: bool) -> None:
        """Whether `queue` is paused, as its store said when asked."""
        view = self.queues.get(queue)
        if view is not None:
            view.paused = paused

    def _error(self, worker: str, what: str, error: str, task_id: str | None = None) -> None:
        last = self.errors[-1] if self.errors else None
        if last and task_id is None and (last.worker, last.what, last.error) == (worker, what, error):
            last.repeats += 1  # a store that stays down: one line that counts, not five alike
            last.at = time.time()
            return
        self.errors.append(ErrorSeen(at=time.time(), worker=worker, what=what, error=error, task_id=task_id))

    # -- what it draws -----------------------------------------------------------------------

    def render(self) -> Dashboard:
        """The overview as it is now (a rich renderable, drawn for the console's width)."""
        return self

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Text]:
        width = options.max_width
        now = time.monotonic()
        yield _clipped(self._title(now))
        # The stop notice takes the blank line under the title: the view keeps its height.
        still_running = any(view.state not in ("stopped", "crashed") for view in self.views.values())
        stopping = self._stopping() and still_running
        notice = "stopping: finishing running tasks (Ctrl-C again: stop now)" if stopping else ""
        yield _clipped(Text(notice, style="yellow"))
        yield from self._workers(width, now)
        yield Text()
        header, laid = layout(_QUEUE_COLUMNS, [self._queue_row(q, now) for q in self.queues.values()], width)
        yield header
        for lines in laid:
            yield from lines
        if self.errors:
            yield Text()
            yield Text("recent errors", style="bold")
            for seen in self.errors:
                yield from _error_lines(seen, width)
        # A blank last line: the cursor rests at its start, so the terminal's echo of a Ctrl-C
        # cannot wrap past a full-width line and shift the next frame down by one.
        yield Text()

    def _title(self, now: float) -> Text:
        up = int(now - self._started)
        count = len(self.views)
        title = Text("apalis", style="bold")
        title.append(f"  {count} worker{'s' if count != 1 else ''}  up {up // 3600}:{up // 60 % 60:02}:{up % 60:02}")
        return title

    def _workers(self, width: int, now: float) -> Iterator[Text]:
        stopping = self._stopping()
        cancels = any(view.cancelled for view in self.views.values())
        rows, extras = [], []
        for view in self.views.values():
            running = self._running(view.name)
            state = view.state
            if state == "up":
                state = "running" if running else "paused" if self.queues[view.queue].paused else "idle"
            if stopping and state not in ("stopped", "crashed"):
                state = "stopping"
            rows.append(
                [
                    Text(printable(view.name)),
                    Text(printable(view.queue)),
                    Text(state, style=_STATE_STYLE.get(state, "")),
                    Text(str(running)),
                    Text(str(view.done)),
                    Text(str(view.retried)),
                    Text(str(view.killed), style="red" if view.killed else ""),
                    Text(str(view.cancelled), style="yellow" if view.cancelled else ""),
                    Text(f"{view.rate(now):.1f}"),
                ]
            )
            if not cancels:
                del rows[-1][_CANCELLED]
            extras.append(self._details(view.name) if self._details else ())
        columns = _WORKER_COLUMNS if cancels else _WORKER_COLUMNS[:_CANCELLED] + _WORKER_COLUMNS[_CANCELLED + 1 :]
        header, laid = layout(columns, rows, width)
        yield header
        for lines, extra in zip(laid, extras, strict=True):
            yield from lines
            for detail in extra:
                yield _clipped(Text("  " + printable(detail), style="dim"))

    def _queue_row(self, queue: QueueView, now: float) -> list[Text]:
        counts = queue.depth.counts if queue.depth else {}
        scheduled = queue.depth.scheduled if queue.depth else None
        pending, failed = counts.get(Status.PENDING), counts.get(Status.FAILED)
        # Ready: waiting to run and due (a failed task whose backoff is over is as ready as a
        # new one). Where the store cannot tell scheduled tasks apart: every waiting task.
        ready = None if pending is None else pending + (failed or 0) - (scheduled or 0)
        style = "dim" if queue.depth_stale else ""
        p50 = queue.latency.quantile(0.5, now)
        return [
            Text(printable(queue.name)),
            *(Text("-" if n is None else str(n), style=style) for n in (ready, scheduled, counts.get(Status.RUNNING))),
            Text("-" if p50 is None else _duration(p50)),
            Text("paused", style="yellow") if queue.paused else Text(""),
        ]


def _error_lines(seen: ErrorSeen, width: int) -> Iterator[Text]:
    head = Text(time.strftime("%H:%M:%S", time.localtime(seen.at)), style="dim")
    if seen.task_id is not None:
        head.append("  ").append(printable(seen.task_id), style="bold")
    head.append(f"  {printable(seen.worker)} {seen.what}")
    if seen.repeats > 1:
        head.append(f" (x{seen.repeats})")
    error = Text(printable(redact(seen.error)), style="red")
    if width - head.cell_len - 2 >= _ERROR_BESIDE:
        yield _clipped(head.append("  ").append_text(error))
    else:
        yield _clipped(head)
        yield _clipped(Text("  ").append_text(error))


def _clipped(text: Text) -> Text:
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def _duration(seconds: float) -> str:
    if seconds < 1.0:
        return f"{seconds * 1000:.3g}ms"
    if seconds < 60.0:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02}m"
