"""The live view's line under a worker with `isolation = "process"`: its children, their
resident memory, and how many were replaced and why (the Dashboard's `details` hook)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..isolation import ProcessPool
from .live import WorkerDetails

__all__ = ["children_details", "children_line"]

_MIB = 1024 * 1024


def children_details(pools: Mapping[str, ProcessPool]) -> WorkerDetails:
    """Lines for the Dashboard: one under each worker that has child processes."""

    def details(worker: str) -> Sequence[str]:
        pool = pools.get(worker)
        return () if pool is None else (children_line(pool),)

    return details


def children_line(pool: ProcessPool) -> str:
    """`4/4 children, RSS 25-61 MiB, recycled 12, died 1, killed 2`."""
    stats = pool.stats()
    sizes = sorted(child.rss for child in stats.children if child.rss is not None)
    low, high = (round(sizes[0] / _MIB), round(sizes[-1] / _MIB)) if sizes else (None, None)
    rss = "-" if low is None else f"{low} MiB" if low == high else f"{low}-{high} MiB"
    recycled = stats.recycled
    return (
        f"{len(stats.children)}/{pool.settings.size} children, RSS {rss}, "
        f"recycled {recycled.get('max_tasks', 0) + recycled.get('max_memory', 0)}, "
        f"died {recycled.get('died', 0)}, killed {recycled.get('timeout_or_stop', 0) + recycled.get('killed', 0)}"
    )
