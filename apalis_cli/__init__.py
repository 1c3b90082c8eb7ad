"""apalis-cli: background jobs as a CLI worker daemon over any store.

The public API for applications: `open_sink` / `open_sink_sync` to push tasks from code, the
handler-facing `Retry` and `Abort`, and the contract types for writing a backend.
"""

from __future__ import annotations

import importlib
import typing

if typing.TYPE_CHECKING:
    from .api import Sink, SyncSink, WaitTimeout, open_sink, open_sink_sync, result_of
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
    from .control import BulkAction, BulkFilter, CancelResult, CancelState
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
    "BulkAction",
    "BulkFilter",
    "CancelResult",
    "CancelState",
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
    "Sink",
    "Status",
    "Store",
    "StoreSpec",
    "SyncSink",
    "Task",
    "TaskContext",
    "TaskId",
    "TaskSink",
    "WaitTimeout",
    "Worker",
    "WorkerContext",
    "WorkerInfo",
    "__version__",
    "compose",
    "open_sink",
    "open_sink_sync",
    "result_of",
]

# Where each public name is defined. A name's module is imported on first use, so that a handler
# module that needs only `Retry`, or `apalis --help`, does not import the whole package (asyncio,
# the config and store registry, structlog, rich).
_HOMES: dict[str, str] = {
    "open_sink": "api",
    "result_of": "api",
    "Sink": "api",
    "SyncSink": "api",
    "WaitTimeout": "api",
    "BulkAction": "control",
    "BulkFilter": "control",
    "CancelResult": "control",
    "CancelState": "control",
    "open_sink_sync": "api",
    "Backend": "backend",
    "BackendExt": "backend",
    "Capabilities": "backend",
    "Capability": "backend",
    "Inspector": "backend",
    "NewTask": "backend",
    "QueueStats": "backend",
    "Store": "backend",
    "StoreSpec": "backend",
    "TaskSink": "backend",
    "WorkerContext": "backend",
    "WorkerInfo": "backend",
    "Codec": "codec",
    "JsonCodec": "codec",
    "MsgpackCodec": "codec",
    "Abort": "errors",
    "ApalisError": "errors",
    "ConfigError": "errors",
    "Retry": "errors",
    "Layer": "service",
    "Outcome": "service",
    "OutcomeKind": "service",
    "Service": "service",
    "compose": "service",
    "Status": "task",
    "Task": "task",
    "TaskContext": "task",
    "TaskId": "task",
    "Worker": "worker",
}


def __getattr__(name: str) -> typing.Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
