"""The measured side: one apalis-cli `Worker` with a no-op handler that stamps start times.

Run as its own process (`python -m bench.workerproc SPEC_JSON`) so its RSS and CPU are its own,
like a peer's worker process; the memory store, which lives in one process, runs the same
`Recorder` and `Worker` in the driver's process instead (`InProcessWorker` in measure.py).

The handler is the peers' job body: one clock read and a few counters (`Recorder.record`),
nothing sent anywhere while tasks run. The driver talks to the process over stdin/stdout, one
JSON object per line:

    -> {"cmd": "wait", "n": N, "timeout": T, "stall": S}   <- {"count", "first", "last"}
    -> {"cmd": "lat"}                                      <- {"lat": [[enq_ts, seconds], ...]}
    -> {"cmd": "reset"}                                    <- {"ok": true}
    -> {"cmd": "stop"}   (or EOF)                          <- {"stopped": true}

On start it prints {"started": true} once the worker's first heartbeat went through. With
`"handler": "thread"` or `"process"` in the spec, the handler is `bench.probe:stamp` (sync) run
in the daemon's thread pool or in its child processes (`isolation`), instead of the async no-op;
with `"hold"`, the async no-op that then sleeps `args["hold"]` seconds (a run to cancel).
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from apalis_cli.config import parse_config
from apalis_cli.events import Event, Started
from apalis_cli.handlers import LoadedHandler, load_handler
from apalis_cli.task import Task
from apalis_cli.worker import Handler, Worker

from .stores import CODEC, Target, open_store

__all__ = ["Recorder", "holding", "make_worker", "sync_handler"]

_ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """Counts handler starts: first/last start time and enqueue->start latencies."""

    __slots__ = ("count", "first", "last", "lat", "reached", "target")

    def __init__(self) -> None:
        self.count = 0
        self.first = math.nan
        self.last = math.nan
        self.lat: list[tuple[float, float]] = []
        self.target = 0
        self.reached = asyncio.Event()

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self.count = 0
        self.first = self.last = math.nan
        self.lat = []
        self.target = 0
        self.reached.clear()

    async def record(self, args: Any, task: Task[bytes]) -> None:
        """The no-op handler: stamp the start (and latency when the payload carries enq_ts)."""
        self.stamp(args, time.time())

    def stamp(self, args: Any, now: float) -> None:
        """Count a handler start at `now` (a sync handler's own clock, in a thread or a child)."""
        self.count += 1
        if self.count == 1:
            self.first = now
        self.last = now
        enq = args.get("enq_ts") if type(args) is dict else None
        if enq:
            self.lat.append((enq, now - enq))
        if self.count == self.target:
            self.reached.set()

    async def wait(self, n: int, within: float, stall: float) -> dict[str, Any]:
        """Until `n` starts were recorded, `within` s passed, or nothing started for `stall` s."""
        deadline = time.monotonic() + within
        self.target = n
        if self.count >= n:
            self.reached.set()
        last_count, last_change = self.count, time.monotonic()
        while not self.reached.is_set():
            now = time.monotonic()
            if now >= deadline or now - last_change >= stall:
                break
            try:
                await asyncio.wait_for(self.reached.wait(), min(0.25, deadline - now))
            except TimeoutError:
                if self.count != last_count:
                    last_count, last_change = self.count, time.monotonic()
        self.reached.clear()
        self.target = 0
        return {"count": self.count, "first": self.first, "last": self.last}


def make_worker(
    backend: Any,
    recorder: Recorder,
    concurrency: int,
    on_event: Any = (),
    handler: Handler | None = None,
    settings: dict[str, Any] | None = None,
) -> Worker:
    """The worker under test: daemon defaults (but `settings`: keep_alive, retention, ...), the
    no-op recording handler (or `handler`)."""
    return Worker(
        name="bench",
        backend=backend,
        handler=handler or recorder.record,
        concurrency=concurrency,
        on_event=list(on_event),
        **(settings or {}),
    )


async def sync_handler(recorder: Recorder, isolation: str, concurrency: int) -> tuple[Handler, LoadedHandler]:
    """`bench.probe:stamp`, a sync no-op handler, loaded as the daemon loads it with `isolation`
    ("thread": its thread pool; "process": its child processes); each start is stamped by the
    handler's own clock and recorded here."""
    source = (
        f'[[workers]]\nname = "bench"\nhandler = "bench.probe:stamp"\nconcurrency = {concurrency}\n'
        f'isolation = "{isolation}"\n'
    )
    config = parse_config(source, _ROOT / "bench.toml")
    loaded = load_handler(config, config.workers[0])
    await loaded.start()
    inner = loaded.handler

    async def stamped(args: Any, task: Task[bytes]) -> None:
        recorder.stamp(args, await inner(args, task))

    return stamped, loaded


def holding(recorder: Recorder) -> Handler:
    """The no-op recording handler, which then sleeps `args["hold"]` seconds when given (a run
    that only a cancel ends early)."""

    async def hold(args: Any, task: Task[bytes]) -> None:
        recorder.stamp(args, time.time())
        seconds = args.get("hold") if type(args) is dict else None
        if seconds:
            await asyncio.sleep(seconds)

    return hold


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _main(spec: dict[str, Any]) -> None:
    target = Target(kind=spec["kind"], url=spec["url"], options=spec["options"])
    store = await open_store(target)
    backend = store.backend(spec["queue"], codec=CODEC, max_attempts=1)
    recorder = Recorder()
    started = asyncio.Event()

    def on_event(event: Event) -> None:
        if isinstance(event, Started):
            started.set()

    handler: Handler | None = None
    loaded: LoadedHandler | None = None
    if spec.get("handler") == "hold":
        handler = holding(recorder)
    elif spec.get("handler", "async") != "async":
        handler, loaded = await sync_handler(recorder, spec["handler"], spec["concurrency"])
    worker = make_worker(backend, recorder, spec["concurrency"], [on_event], handler, spec.get("settings"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    running = asyncio.create_task(worker.run(stop))
    await asyncio.wait({running, asyncio.create_task(started.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        running.result()
    _emit({"started": True})
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = json.loads(line)
            op = cmd["cmd"]
            if op == "wait":
                _emit(await recorder.wait(cmd["n"], cmd["within"], cmd["stall"]))
            elif op == "lat":
                _emit({"lat": recorder.lat})
            elif op == "reset":
                recorder.reset()
                _emit({"ok": True})
            elif op == "stop":
                break
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await store.close()
        if loaded is not None:
            await loaded.aclose()
    _emit({"stopped": True})


def main() -> None:
    """Entry point of the worker process: the spec is one JSON argument."""
    spec = json.loads(sys.argv[1])
    run: Any = asyncio.run
    if spec.get("loop") == "uvloop":  # an experiment: the same worker on uvloop's event loop
        import uvloop  # type: ignore[import-not-found, unused-ignore]

        run = uvloop.run
    profile = spec.get("profile")
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        try:
            run(_main(spec))
        finally:
            prof.disable()
            prof.dump_stats(profile)
    else:
        run(_main(spec))


if __name__ == "__main__":
    main()
