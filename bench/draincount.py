"""`python -m bench.draincount`: the worker's instructions per task in a drain, counted by callgrind.

A drain's CPU a task on this shared machine moves by a sixth from run to run (the claims' and
acknowledgements' batch sizes follow the scheduler), so a change of a few percent needs a count,
not a clock. For each backlog size in `--tasks`, the backlog is pushed (`push_bulk`, 1,000 a
call) into a fresh queue, then `bench.workerproc` drains it at `--conc` under
`valgrind --tool=callgrind` (the bench's drain: the worker starts after the push). The count of
the larger backlog less the smaller's, over the difference in tasks, is the worker's
instructions per drained task, its start-up and stop left out:

    python -m bench.draincount --backend redis --url redis://127.0.0.1:15100/0 --tasks 1000,4000 --conc 50

`--lone` pushes the tasks one at a time every 50 ms to a worker already idle instead (a lone
task's path: hand-overs on Redis). Run the old and the new tree in turn (PYTHONPATH at each),
and more than once: the count itself swings by 1-2 % with the batch sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .stores import CODEC, open_store, prepare

__all__ = ["main"]

_ROOT = Path(__file__).resolve().parent.parent


async def count(kind: str, url: str | None, tasks: int, conc: int, lone: bool, out: str) -> int:
    """The callgrind count of one worker process that drains `tasks` tasks (or runs them one by one)."""
    target = prepare(kind, url, f"count{os.getpid()}_{int(time.time() * 1000) % 10**8}")
    store = await open_store(target)
    try:
        queue_name = target.queue(f"drain_c{conc}")
        queue: Any = store.backend(queue_name, codec=CODEC, max_attempts=1)
        body = {"enq_ts": 0.0}
        for start in range(0, 0 if lone else tasks, 1000):
            await queue.push_bulk([body] * min(1000, tasks - start))
        spec: dict[str, Any] = {"kind": kind, "url": target.url, "options": target.options, "queue": queue_name}
        spec |= {"concurrency": conc, "loop": "asyncio", "handler": "async", "settings": {}, "profile": None}
        proc = await asyncio.create_subprocess_exec(
            *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
            *(sys.executable, "-m", "bench.workerproc", json.dumps(spec)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=_ROOT,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        await proc.stdout.readline()  # started
        if lone:
            await asyncio.sleep(1.0)  # its first claims found nothing: listed idle
            for _ in range(tasks):
                await queue.push(body)
                await asyncio.sleep(0.05)
        proc.stdin.write(json.dumps({"cmd": "wait", "n": tasks, "within": 900, "stall": 120}).encode() + b"\n")
        reply = json.loads(await proc.stdout.readline())
        if reply["count"] < tasks:
            raise RuntimeError(f"the worker started {reply['count']} of {tasks} tasks")
        proc.stdin.write(b'{"cmd": "stop"}\n')
        await proc.stdin.drain()
        await proc.wait()
    finally:
        await store.close()
        await target.cleanup()
    with open(out) as counted:  # noqa: ASYNC230 - after the measurement
        totals = [int(m.group(1)) for line in counted if (m := re.match(r"(?:summary|totals): (\d+)", line))]
    return totals[0]


async def run(args: argparse.Namespace) -> None:
    sizes = sorted(int(n) for n in args.tasks.split(","))
    folder = tempfile.mkdtemp(prefix="draincount-")
    counts = {n: await count(args.backend, args.url, n, args.conc, args.lone, f"{folder}/{n}.cg") for n in sizes}
    small, large = sizes[0], sizes[-1]
    per_task = (counts[large] - counts[small]) / (large - small)
    print(json.dumps({"counts": counts, "per_task": round(per_task), "conc": args.conc, "lone": args.lone}))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.draincount", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="redis")
    parser.add_argument("--url", help="store URL (default: the local server)")
    parser.add_argument("--tasks", default="1000,4000", help="backlog sizes: the count's difference over theirs")
    parser.add_argument("--conc", type=int, default=50)
    parser.add_argument("--lone", action="store_true", help="push one at a time every 50 ms to an idle worker")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
