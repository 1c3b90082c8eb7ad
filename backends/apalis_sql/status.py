"""The status machine as SQL sees it: which statuses a claim takes, which ones are final.

pending -> running (claimed: attempts + 1, lock_by = worker id) -> done | failed (runs again at
run_at, attempts kept) | killed. A release puts a running task back to pending with attempts - 1.
"""

from __future__ import annotations

from apalis_cli.task import Status

__all__ = ["CLAIMABLE", "FINAL", "orphan_error"]

CLAIMABLE: tuple[str, ...] = (Status.PENDING.value, Status.FAILED.value)
"""Statuses a claim may take once `run_at` has come."""

FINAL: tuple[str, ...] = (Status.DONE.value, Status.KILLED.value)
"""Statuses a task never leaves by itself; retention purges them."""


def orphan_error(worker_id: str | None) -> str:
    """The `last_error` of a task whose worker stopped sending heartbeats (as memory writes it);
    in SQL: `'worker ' || lock_by || ' stopped sending heartbeats while running this task'`."""
    return f"worker {worker_id} stopped sending heartbeats while running this task"
