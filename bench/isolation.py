"""`--isolation`: what running a sync handler in child processes costs next to threads.

For each backend, rounds of the same two measurements, thread then process (interleaved, so both
modes see the same machine load): a drain of a backlog at each `--conc`, and the enqueue->start
latency of a 200/s stream at concurrency 10. The handler is `bench.probe:stamp`, a sync no-op
loaded as the daemon loads it (`isolation = "thread"`: its thread pool; `"process"`: its
children); starts are stamped by the handler's own clock. Ratios are thread / process: a drain
ratio of 2 means threads drain twice as fast, a latency ratio of 0.5 that they start in half the time.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from apalis_cli.backend import Store
from rich.console import Console
from rich.table import Table

from .measure import Settings, drain, latency_and_wakeup
from .stores import Target

__all__ = ["compare_isolation", "print_isolation"]

MODES = ("thread", "process")


async def compare_isolation(store: Store, target: Target, s: Settings, log: Any, rounds: int) -> dict[str, Any]:
    """Medians over `rounds` interleaved rounds of drain (per concurrency) and latency, per mode."""
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for number in range(1, rounds + 1):
        for mode in MODES:
            settings = dataclasses.replace(s, handler=mode, wakeup_probes=0)
            one: dict[str, Any] = {}
            for conc in s.concs:
                log(f"{target.kind}: {mode} round {number}: drain c{conc}")
                one[f"drain_c{conc}"] = (await drain(store, target, conc, settings))[0]["rate"]
            log(f"{target.kind}: {mode} round {number}: latency at {s.lat_rate:.0f}/s")
            latency = (await latency_and_wakeup(store, target, settings)).get("latency", {})
            one["lat_p50_ms"], one["lat_p99_ms"] = latency.get("p50_ms"), latency.get("p99_ms")
            runs[mode].append(one)
    figures = {mode: {key: _median([r[key] for r in rows]) for key in rows[0]} for mode, rows in runs.items()}
    ratios = {key: _ratio(figures["thread"][key], figures["process"][key]) for key in figures["thread"]}
    return {"kind": target.kind, "rounds": rounds, "modes": figures, "thread_per_process": ratios, "runs": runs}


def print_isolation(results: list[dict[str, Any]]) -> None:
    """One table: each backend's figures in both modes and their ratio."""
    table = Table(title="sync handler: threads vs child processes (medians; ratio = thread / process)")
    table.add_column("backend")
    table.add_column("mode")
    keys = [key for key in results[0]["modes"]["thread"]] if results else []
    for key in keys:
        table.add_column(key.replace("_", " "), justify="right")
    for result in results:
        for mode in MODES:
            table.add_row(result["kind"], mode, *(_show(result["modes"][mode][key]) for key in keys))
        table.add_row(result["kind"], "thread/process", *(_show(result["thread_per_process"][key], 2) for key in keys))
    Console().print(table)


def _median(values: list[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, int | float) and v == v]
    return round(statistics.median(numbers), 3) if numbers else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _show(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"
