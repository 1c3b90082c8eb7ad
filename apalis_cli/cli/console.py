"""What people see: the rich live view of `apalis run` and the tables of the other commands."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..events import (
    BackendUnavailable,
    Event,
    HeartbeatFailed,
    HeartbeatSent,
    Idle,
    Started,
    Stopped,
    TaskFinished,
    WorkerCrashed,
)
from ..registry import redact_text
from ..task import Status

__all__ = ["Dashboard", "WorkerView", "print_stats", "print_tasks", "print_workers"]

_RATE_WINDOW = 5.0
_STATE_STYLE = {"running": "green", "idle": "cyan", "stopped": "dim", "crashed": "red", "reconnecting": "yellow"}
_STATUS_STYLE = {"pending": "cyan", "running": "green", "done": "dim", "failed": "yellow", "killed": "red"}


@dataclass(slots=True)
class WorkerView:
    """The counters of one worker in the live view."""

    name: str
    queue: str
    state: str = "starting"
    done: int = 0
    retried: int = 0
    killed: int = 0
    last_error: str | None = None
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    @property
    def failed(self) -> int:
        """Runs that ended in an error (retried or killed)."""
        return self.retried + self.killed

    def rate(self, now: float) -> float:
        """Finished runs per second over the last few seconds."""
        finished = self.done + self.failed
        self.samples.append((now, finished))
        while len(self.samples) > 2 and now - self.samples[0][0] > _RATE_WINDOW:
            self.samples.popleft()
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class Dashboard:
    """Collects worker events (an `on_event` listener) and renders the live table."""

    def __init__(
        self, workers: Sequence[tuple[str, str]], running: Callable[[str], int], stopping: Callable[[], bool]
    ) -> None:
        self.views = {name: WorkerView(name=name, queue=queue) for name, queue in workers}
        self._running = running
        self._stopping = stopping

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
            if event.error:
                view.last_error = event.error
            if view.state == "reconnecting":
                view.state = "up"
        elif isinstance(event, Started | Idle | HeartbeatSent):
            if view.state != "stopped":
                view.state = "up"
        elif isinstance(event, HeartbeatFailed | BackendUnavailable):
            view.state, view.last_error = "reconnecting", event.error
        elif isinstance(event, WorkerCrashed):
            view.state, view.last_error = "crashed", event.error
        elif isinstance(event, Stopped):
            view.state = "stopped"

    def render(self) -> Table:
        """The table as it is now."""
        now = time.monotonic()
        stopping = self._stopping()
        table = Table(title="apalis" + (" - stopping, finishing running tasks" if stopping else ""))
        for column in ("worker", "queue", "state", "running", "done", "failed", "retried", "killed", "tasks/s"):
            left = column in ("worker", "queue", "state")
            table.add_column(column, justify="left" if left else "right", no_wrap=True)
        table.add_column("last error", overflow="ellipsis", max_width=60, no_wrap=True)
        for view in self.views.values():
            running = self._running(view.name)
            state = view.state
            if state == "up":
                state = "running" if running else "idle"
            if stopping and state not in ("stopped", "crashed"):
                state = "stopping"
            table.add_row(
                view.name,
                view.queue,
                Text(state, style=_STATE_STYLE.get(state, "")),
                str(running),
                str(view.done),
                str(view.failed),
                str(view.retried),
                str(view.killed),
                f"{view.rate(now):.1f}",
                Text(redact_text(view.last_error or ""), style="red"),
            )
        return table


def print_tasks(rows: Sequence[Mapping[str, Any]], *, decode: bool) -> None:
    """`apalis inspect` as a table."""
    table = Table()
    for column in ("id", "status", "att", "run_at (UTC)", "prio"):
        table.add_column(column, no_wrap=True)
    for column in ("args" if decode else "payload", "last error"):
        table.add_column(column, overflow="ellipsis", ratio=1, min_width=12)
    for row in rows:
        if not decode:
            shown = row["payload"]
        elif "args" in row:
            shown = json.dumps(row["args"], ensure_ascii=False, default=repr)
        else:
            shown = row.get("decode_error") or ""
        table.add_row(
            row["id"],
            Text(row["status"], style=_STATUS_STYLE.get(row["status"], "")),
            f"{row['attempts']}/{row['max_attempts']}",
            (row["run_at"] or "").replace("T", " ")[:19],
            str(row["priority"]),
            _clip(shown, 60),
            _clip(row["last_error"] or "", 60),
        )
    _out().print(table if rows else "no tasks")


def print_workers(rows: Sequence[Mapping[str, Any]]) -> None:
    """`apalis workers` as a table."""
    table = Table()
    for column in ("name", "queue", "host", "pid", "started", "last seen", "running", "layers"):
        table.add_column(column)
    for row in rows:
        running = "" if row["running"] is None else str(row["running"])
        table.add_row(
            row["name"],
            row["queue"],
            row["host"],
            str(row["pid"]),
            row["started_at"],
            row["last_seen"],
            running,
            ", ".join(row["layers"]),
        )
    _out().print(table if rows else "no workers registered")


def print_stats(rows: Sequence[Mapping[str, Any]]) -> None:
    """`apalis stats` as a table."""
    table = Table()
    table.add_column("queue")
    for status in Status:
        table.add_column(status.value, justify="right")
    for row in rows:
        counts = [row.get(status.value) for status in Status]
        table.add_row(row["queue"], *("-" if n is None else str(n) for n in counts))
    _out().print(table)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _out() -> Console:
    console = Console(soft_wrap=False)
    if not console.is_terminal:  # piped: no terminal to fit, keep rows readable
        console = Console(soft_wrap=False, width=200)
    return console


def note(text: str) -> None:
    """A one-line remark on stderr, so stdout stays clean for `--json`."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"note: {text}", markup=False)
