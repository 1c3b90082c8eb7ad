"""apalis-cli: background jobs as a CLI worker daemon over any store.

The public API for applications: `open_sink` / `open_sink_sync` to push tasks from code, the
handler-facing `Retry` and `Abort`, and the contract types for writing a backend.
"""

from __future__ import annotations

from .api import open_sink, open_sink_sync
from .backend import (
    Backend,
    BackendExt,
    Capabilities,
    Capability,
    Inspector,
    NewTask,
    QueueStats,
    Store,
    StoreSpec,
    TaskSink,
    WorkerContext,
    WorkerInfo,
)
from .codec import Codec, JsonCodec, MsgpackCodec
from .errors import Abort, ApalisError, ConfigError, Retry
from .service import Layer, Outcome, OutcomeKind, Service, compose
from .task import Status, Task, TaskContext, TaskId
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "Abort",
    "ApalisError",
    "Backend",
    "BackendExt",
    "Capabilities",
    "Capability",
    "Codec",
    "ConfigError",
    "Inspector",
    "JsonCodec",
    "Layer",
    "MsgpackCodec",
    "NewTask",
    "Outcome",
    "OutcomeKind",
    "QueueStats",
    "Retry",
    "Service",
    "Status",
    "Store",
    "StoreSpec",
    "Task",
    "TaskContext",
    "TaskId",
    "TaskSink",
    "Worker",
    "WorkerContext",
    "WorkerInfo",
    "__version__",
    "compose",
    "open_sink",
    "open_sink_sync",
]
