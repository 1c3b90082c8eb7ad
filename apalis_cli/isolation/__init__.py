"""Handlers in child processes (`isolation = "process"`): hard timeouts, recycling, crashes that
cost one task. `ProcessPool` is the pool; `handler.process_handler` builds one from a worker's config."""

from __future__ import annotations

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
