"""`--soak TASKS`: does a worker's memory stay flat over a long drain?

One worker process (daemon defaults, the no-op recording handler) drains TASKS tasks while the
driver keeps a backlog of about `WINDOW` tasks ahead of it, so the store never holds TASKS tasks
at once. The worker keeps finished tasks for `RETENTION` only and beats every `KEEP_ALIVE` (its
heartbeat purges what is past retention), so a Redis or a database that other work shares does
not fill up with a million done tasks either. The worker's RSS is read from /proc at every tenth
of the run: its peak (VmHWM) and its current size (VmRSS). The figure that says "flat" is the
peak after the whole run against the peak after the first tenth (100k of 1M): a leak of even a
few dozen bytes per task would show in the 900k tasks between them.
"""

from __future__ import annotations

import time
from typing import Any

from apalis_cli.backend import Store
from rich.console import Console
from rich.table import Table

from .measure import ProcessWorker, Settings, _proc_status
from .stores import CODEC, Target

__all__ = ["FLAT_WITHIN", "print_soak", "soak"]

WINDOW = 20_000  # tasks pushed ahead of the worker
CHUNK = 1_000  # tasks per push_bulk
RETENTION = 5.0  # seconds a done task is kept (purged by the worker's heartbeat)
KEEP_ALIVE = 2.0
STALL = 60.0
FLAT_WITHIN = 0.10  # the peak after the whole run may exceed the peak after a tenth by this much


async def soak(store: Store, target: Target, s: Settings, log: Any, total: int, conc: int) -> dict[str, Any]:
    """Drain `total` tasks through one worker at `conc`; its RSS at every tenth of the way."""
    queue_name = target.queue("soak")
    queue: Any = store.backend(queue_name, codec=CODEC, max_attempts=1)  # a TaskSink too
    worker = ProcessWorker(
        target, queue_name, conc, loop=s.loop, settings={"keep_alive": KEEP_ALIVE, "retention": RETENTION}
    )
    body = {"enq_ts": 0.0}  # no latency recorded: the recorder itself must not grow
    checkpoints = [total * k // 10 for k in range(1, 11)]
    samples: list[dict[str, Any]] = []
    pushed = done = 0
    await worker.start()
    t0 = progress = time.monotonic()
    try:
        for checkpoint in checkpoints:
            while done < checkpoint:
                while pushed < total and pushed - done < WINDOW:
                    size = min(CHUNK, total - pushed)
                    await queue.push_bulk([body] * size)
                    pushed += size
                count = (await worker.wait(min(checkpoint, pushed), within=1.0, stall=60.0))["count"]
                if count > done:
                    done, progress = count, time.monotonic()
                elif time.monotonic() - progress > STALL:
                    raise RuntimeError(f"the worker ran nothing for {STALL:.0f} s, at {done:,} of {total:,} tasks")
            assert worker.proc is not None
            samples.append(
                {
                    "tasks": done,
                    "secs": round(time.monotonic() - t0, 3),
                    "peak_mb": round(_proc_status(worker.proc.pid, "VmHWM"), 1),
                    "rss_mb": round(_proc_status(worker.proc.pid, "VmRSS"), 1),
                }
            )
            log(f"{target.kind}: {done:,} tasks, peak RSS {samples[-1]['peak_mb']} MB, now {samples[-1]['rss_mb']} MB")
    finally:
        await worker.stop()
    first, last = samples[0], samples[-1]
    growth = last["peak_mb"] / first["peak_mb"] - 1
    before_last = samples[-2] if len(samples) > 1 else {"tasks": 0, "secs": 0.0}
    return {
        "kind": target.kind,
        "conc": conc,
        "tasks": total,
        "rate": round(total / last["secs"], 1),
        "rate_first_tenth": round(first["tasks"] / first["secs"], 1),
        "rate_last_tenth": round((last["tasks"] - before_last["tasks"]) / (last["secs"] - before_last["secs"]), 1),
        "peak_mb_first_tenth": first["peak_mb"],
        "peak_mb_end": last["peak_mb"],
        "growth": round(growth, 4),
        "flat": growth <= FLAT_WITHIN,
        "samples": samples,
    }


def print_soak(results: list[dict[str, Any]]) -> None:
    """One row per backend: the peak RSS after a tenth and after all of the run."""
    table = Table(title=f"worker RSS over a long drain (flat: end peak within {FLAT_WITHIN:.0%} of the 1/10 peak)")
    names = ("backend", "tasks", "conc", "drain/s", "first/last 1/10", "peak MB 1/10", "peak MB end", "growth")
    for name in names:
        table.add_column(name, justify="left" if name == "backend" else "right", no_wrap=True)
    for r in results:
        if "error" in r:
            table.add_row(r["kind"], *["-"] * 6, r["error"])  # the error in the last column
            continue
        table.add_row(
            r["kind"],
            f"{r['tasks']:,}",
            str(r["conc"]),
            f"{r['rate']:,.0f}",
            f"{r['rate_first_tenth']:,.0f} / {r['rate_last_tenth']:,.0f}",
            f"{r['peak_mb_first_tenth']:.1f}",
            f"{r['peak_mb_end']:.1f}",
            f"{r['growth']:+.1%}" + ("" if r["flat"] else " NOT FLAT"),
        )
    Console(width=max(Console().width, 110)).print(table)
