"""kill -9 of a worker daemon mid-run loses no task (DESIGN.md §3 "Heartbeats and orphans", §7).

A daemon with a short keep_alive/stale_after is SIGKILLed while it runs tasks; a second daemon
started afterwards finishes the queue: every task ends done, and only tasks the killed daemon
had in flight (claimed, or finished but not yet acknowledged) run a second time."""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .chaos import (
    DURABLE,
    RECORDER,
    Backend,
    all_settled,
    kill,
    make_backend,
    push_numbers,
    run_lines,
    runs,
    stop,
    wait_for,
    worker_table,
)
from .conftest import Apalis

N = 200
CONCURRENCY = 8
RUN = ("run", "--no-live", "--log-format", "json", "--log-level", "warning")


@pytest.fixture(params=DURABLE)
def backend(request: pytest.FixtureRequest, apalis: Apalis, tmp_path: Path) -> Iterator[Backend]:
    # rsmq's lease is the longer of the queue's `vt` and stale_after: keep it short here.
    options: dict[str, object] = {"vt": 1} if request.param == "rsmq" else {}
    made = make_backend(request.param, tmp_path, options=options)
    (apalis.cwd / "chaos_handlers.py").write_text(RECORDER)
    apalis.write_config(made.table + "\n" + worker_table(queue=made.queue, concurrency=CONCURRENCY))
    try:
        yield made
    finally:
        made.cleanup()


def test_kill9_mid_run_loses_no_task(apalis: Apalis, backend: Backend) -> None:
    push_numbers(apalis, range(N), sleep=0.05)
    first = apalis.start(*RUN)
    second = None
    try:
        wait_for("a quarter of the tasks ran", lambda: len(runs(apalis)) >= N // 4, timeout=60, daemons=[first])
        kill(first)
        killed_at = len(run_lines(apalis))
        assert killed_at < N, "the first daemon finished everything before the kill: nothing was tested"
        time.sleep(0.2)
        second = apalis.start(*RUN)
        wait_for(f"all {N} tasks ran", lambda: set(runs(apalis)) == set(range(N)), timeout=60, daemons=[second])
        wait_for("no task pending, running or failed", lambda: all_settled(apalis), timeout=30, daemons=[second])
    finally:
        kill(first)
        errors = stop([second]) if second is not None else []
    assert second.returncode == 0, errors

    lines = run_lines(apalis)
    counted = collections.Counter(n for n, _ in lines)
    first_pid = {n: pid for n, pid in reversed(lines)}  # the earliest run of each task wins
    again = {n: k for n, k in counted.items() if k > 1}
    # Only the killed daemon's tasks ran twice: the ones it was running or had finished without
    # its ack batch reaching the store (a claim batch plus an ack batch at most).
    assert all(first_pid[n] == first.pid for n in again), again
    assert all(k == 2 for k in again.values()), again
    assert len(again) <= 3 * CONCURRENCY, f"{len(again)} tasks ran twice: {sorted(again)}"
    assert os.getpid() not in first_pid.values()
    print(f"{backend.kind}: killed after {killed_at} runs; {len(again)} tasks ran twice")

    stats = apalis("stats", "--json")
    assert stats.code == 0, stats.err
    row = stats.json()[0]
    assert not row.get("killed"), row
    if row.get("done") is not None:
        assert row["done"] == N, row
