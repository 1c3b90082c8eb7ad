"""Structured logging (structlog): console lines for people, JSON lines for machines.

Logs go to stderr, read at write time, so the rich live view can redirect them above itself.
Levels below the chosen one are dropped before any formatting: a quiet daemon pays nothing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal

import structlog

from .events import (
    BackendUnavailable,
    CancelRequested,
    Event,
    EventListener,
    HeartbeatFailed,
    Idle,
    QueuePaused,
    Started,
    Stopped,
    TaskFinished,
    WaitingForRuns,
    WorkerCrashed,
)
from .printable import printable
from .redact import redact

__all__ = ["LOG_LEVELS", "LogFormat", "event_logger", "setup_logging"]

LogFormat = Literal["console", "json"]
LOG_LEVELS = ("debug", "info", "warning", "error")


class _Stderr:
    """Whatever `sys.stderr` is at the moment of writing."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(fmt: LogFormat | None = None, level: str = "info", secrets: Iterable[str] = ()) -> LogFormat:
    """Configure structlog; `fmt` None picks console for a terminal, JSON otherwise. Every line
    is masked (`apalis_cli.redact`) with `secrets` known: drivers log through here too."""
    chosen: LogFormat = fmt or ("console" if sys.stderr.isatty() else "json")
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if chosen == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # a traceback is text to mask, like the rest
            _Masking(secrets),
            *([_printable_values] if chosen == "console" else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    # Drivers log through the standard library (psycopg's pool, aio-pika): same lines, same place.
    root = logging.getLogger()
    root.handlers[:] = [_ToStructlog()]
    root.setLevel(logging.getLevelNamesMapping()[level.upper()])
    return chosen


class _ToStructlog(logging.Handler):
    """Hands standard-library log records to structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger(record.name)
            log.log(record.levelno, record.getMessage(), logger=record.name)
        except Exception:
            self.handleError(record)


class _Masking:
    """A structlog processor: every text value of a line with its secrets masked."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = frozenset(secrets)

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = redact(value, self.secrets)
        return event


# structlog's console renderer prints a value with one of these characters as its `repr`, which
# escapes control characters already; escaping those values first would double the backslashes.
_QUOTED_BY_RENDERER = frozenset(" \t=\r\n\"'")


def _printable_values(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Console lines go to a terminal: a handler's error or a driver's message must not carry its
    # escape sequences there (JSON lines escape control characters by themselves). The message
    # itself is never quoted by the renderer, nor is a traceback (the plain one format_exc_info
    # made, printed below the line with its line breaks kept: rich's pretty traceback would
    # print the escape sequences in an exception's message as they are, and its locals unmasked);
    # a test checks each kind of value.
    for key, value in event.items():
        if not isinstance(value, str):
            continue
        if key == "exception":
            event[key] = printable(value, newlines=True)
        elif key == "event" or not _QUOTED_BY_RENDERER.intersection(value):
            event[key] = printable(value)
    return event


def event_logger(*, tasks: bool = True) -> EventListener:
    """An `on_event` listener writing one structured line per worker event.

    With `tasks` False the lines of successful runs are skipped (lifecycle and trouble are logged).
    """
    log = structlog.get_logger("apalis")

    def on_event(event: Event) -> None:
        fields = {"worker": event.worker, "queue": event.queue}
        if isinstance(event, TaskFinished):
            if not tasks and event.outcome == "done":
                return
            line = {**fields, "task_id": event.task_id, "attempt": event.attempt, "duration": round(event.duration, 6)}
            if event.outcome == "done":
                log.info("task done", **line)
            elif event.outcome == "retry":
                log.warning("task failed, will retry", error=event.error, **line)
            elif event.outcome == "kill":
                log.error("task killed", error=event.error, **line)
            elif event.outcome == "cancel":
                log.warning("task cancelled", reason=event.error, **line)
            else:
                log.info(f"task {event.outcome}", error=event.error, **line)
        elif isinstance(event, CancelRequested):
            log.info("cancel requested, stopping the run", task_id=event.task_id, reason=event.reason, **fields)
        elif isinstance(event, QueuePaused):
            if event.paused:
                log.warning("queue paused: taking no tasks", **fields)
            else:
                log.info("queue resumed", **fields)
        elif isinstance(event, Started):
            log.info("worker started", worker_id=event.worker_id, concurrency=event.concurrency, **fields)
        elif isinstance(event, Idle):
            log.debug("queue idle", **fields)
        elif isinstance(event, HeartbeatFailed):
            log.warning("heartbeat failed", error=event.error, **fields)
        elif isinstance(event, BackendUnavailable):
            log.warning("store unavailable, retrying", error=event.error, retry_in=event.retry_in, **fields)
        elif isinstance(event, WorkerCrashed):
            log.error("worker crashed, restarting", error=event.error, restart_in=event.restart_in, **fields)
        elif isinstance(event, WaitingForRuns):
            log.warning(
                "waiting for runs that cannot be stopped (a second signal exits at once; their tasks"
                " then come back after stale_after)",
                running=event.running,
                **fields,
            )
        elif isinstance(event, Stopped):
            log.info("worker stopped", released=event.released, **fields)

    return on_event
