"""`python -m bench.lonereplay`: a lone task's instructions in a Redis worker, without its timers.

A lone task paced every 50 ms (`bench.draincount --lone`) runs the idle worker's timers between
tasks, and their number follows the scheduler: two runs of one tree counted 384,642 and 411,263
instructions a task. Here one real hand-over's pub/sub bytes are captured, then fed to the
worker's `Hearing.data_received` again and again, each run awaited to its end (handler,
acknowledgement written and answered by the server): the hand-over's read, the run, its ack,
and nothing else (no heartbeat, no idle claim: their number follows the run's length). Under
callgrind for each count of `--runs`, the larger count less the smaller over their difference
is one lone task's instructions in the worker's process:

    python -m bench.lonereplay --url redis://127.0.0.1:6379/0 --runs 100,400

Run the old and the new tree in turn (PYTHONPATH at each), more than once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

from .stores import CODEC, open_store, prepare

__all__ = ["main"]


async def replay(url: str, runs: int) -> None:
    """One worker (asyncio's loop), one real lone task, then `runs` replays of its hand-over."""
    from apalis_cli.worker import Worker
    from apalis_redis import wakeups

    target = prepare("redis", url, f"lonereplay{os.getpid()}")
    store = await open_store(target)
    captured: list[tuple[Any, bytes]] = []
    heard = wakeups.Hearing.data_received

    def capture(self: Any, data: bytes) -> None:
        if not captured and b"pmessage" in data:
            captured.append((self, data))
        heard(self, data)

    started: list[asyncio.Task[Any]] = []
    ran = asyncio.Event()

    async def handler(args: Any, task: Any) -> None:
        current = asyncio.current_task()
        assert current is not None
        started.append(current)
        ran.set()

    async def run_ended() -> None:
        await ran.wait()
        ran.clear()
        await started.pop()  # its acknowledgement written and answered

    backend: Any = store.backend(target.queue("replay"), codec=CODEC, max_attempts=1)
    # No heartbeat and no idle claim while it replays: their number would follow the run's
    # length under callgrind, which follows the machine's load.
    worker = Worker(
        name="replay", backend=backend, handler=handler, concurrency=50, keep_alive=3600.0, poll_interval=3600.0
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    wakeups.Hearing.data_received = capture  # type: ignore[method-assign]
    try:
        await asyncio.sleep(0.5)  # its first claim found nothing: listed idle, it is handed pushes
        await backend.push({"enq_ts": time.time()})
        await run_ended()
    finally:
        wakeups.Hearing.data_received = heard  # type: ignore[method-assign]
    hearing, data = captured[0]
    await asyncio.sleep(0.2)
    for _ in range(runs):
        hearing.data_received(data)
        await run_ended()
    stop.set()
    await running
    await store.close()
    await target.cleanup()


def count(url: str, runs: int, out: str) -> int:
    """callgrind's count of one `replay` process of `runs` replays."""
    subprocess.run(
        [
            *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
            *(sys.executable, "-m", "bench.lonereplay", "--url", url, "--replay", str(runs)),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with open(out) as counted:
        totals = [int(m.group(1)) for line in counted if (m := re.match(r"(?:summary|totals): (\d+)", line))]
    return totals[0]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lonereplay", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--runs", default="100,400", help="replay counts: the count's difference over theirs")
    parser.add_argument("--replay", type=int, help=argparse.SUPPRESS)  # the process under callgrind
    args = parser.parse_args()
    if args.replay is not None:
        asyncio.run(replay(args.url, args.replay))
        return
    small, large = sorted(int(n) for n in args.runs.split(","))
    folder = tempfile.mkdtemp(prefix="lonereplay-")
    counts = {n: count(args.url, n, f"{folder}/{n}.cg") for n in (small, large)}
    per_run = (counts[large] - counts[small]) / (large - small)
    print(json.dumps({"counts": counts, "per_task": round(per_run)}))


if __name__ == "__main__":
    main()
