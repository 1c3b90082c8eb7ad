"""The live view's table of child processes, for workers with `isolation = "process"`: how many
children run, their resident memory, and how many were replaced and why."""

from __future__ import annotations

from collections.abc import Mapping

from rich.table import Table

from ..isolation import ProcessPool

__all__ = ["children_table"]

_MIB = 1024 * 1024


def children_table(pools: Mapping[str, ProcessPool]) -> Table | None:
    """One row per worker with child processes; None when no worker has any."""
    if not pools:
        return None
    table = Table(title="child processes", title_justify="left")
    table.add_column("worker", no_wrap=True)
    for column in ("children", "RSS MiB", "recycled", "died", "killed"):
        table.add_column(column, justify="right", no_wrap=True)
    for name, pool in pools.items():
        stats = pool.stats()
        sizes = sorted(child.rss for child in stats.children if child.rss is not None)
        rss = (
            "-"
            if not sizes
            else f"{sizes[0] / _MIB:.0f}"
            if len(sizes) == 1
            else f"{sizes[0] / _MIB:.0f}-{sizes[-1] / _MIB:.0f}"
        )
        recycled = stats.recycled
        table.add_row(
            name,
            f"{len(stats.children)}/{pool.settings.size}",
            rss,
            str(recycled.get("max_tasks", 0) + recycled.get("max_memory", 0)),
            str(recycled.get("died", 0)),
            str(recycled.get("timeout_or_stop", 0) + recycled.get("killed", 0)),
        )
    return table
