"""Handlers in child processes (`isolation = "process"`): hard timeouts, recycling, crashes that
cost one task. `ProcessPool` is the pool; `handler.process_handler` builds one from a worker's config.

The names below are imported on first use: a child process imports `isolation.child` at its
start and must not pay for the pool (asyncio, the layers) it never uses.
"""

from __future__ import annotations

import importlib
import typing

if typing.TYPE_CHECKING:
    from .pool import (
        RECYCLE_REASONS,
        ChildInfo,
        ChildKilled,
        ChildLost,
        ChildStartFailed,
        PoolSettings,
        PoolStats,
        ProcessPool,
    )

__all__ = [
    "RECYCLE_REASONS",
    "ChildInfo",
    "ChildKilled",
    "ChildLost",
    "ChildStartFailed",
    "PoolSettings",
    "PoolStats",
    "ProcessPool",
]


def __getattr__(name: str) -> typing.Any:
    if name in __all__:
        return getattr(importlib.import_module(".pool", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
