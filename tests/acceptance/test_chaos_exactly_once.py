"""Fault-free runs with several daemons run each task exactly once (DESIGN.md §3, §7), on every
durable backend: 500 tasks pushed with `apalis push --file`, three `apalis run` daemons drain
them, each run is counted from outside (an O_APPEND log), then SIGTERM stops them cleanly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .chaos import (
    DURABLE,
    RECORDER,
    Backend,
    all_settled,
    make_backend,
    push_numbers,
    runs,
    stop,
    wait_for,
    worker_table,
)
from .conftest import Apalis

N = 500


@pytest.fixture(params=DURABLE)
def backend(request: pytest.FixtureRequest, apalis: Apalis, tmp_path: Path) -> Iterator[Backend]:
    made = make_backend(request.param, tmp_path)
    (apalis.cwd / "chaos_handlers.py").write_text(RECORDER)
    apalis.write_config(made.table + "\n" + worker_table(queue=made.queue, concurrency=8))
    try:
        yield made
    finally:
        made.cleanup()


def test_three_daemons_run_each_task_exactly_once(apalis: Apalis, backend: Backend) -> None:
    # The daemons start while the tasks are pushed: they claim concurrently from the first batch.
    daemons = [apalis.start("run", "--no-live", "--log-format", "json", "--log-level", "warning") for _ in range(3)]
    try:
        push_numbers(apalis, range(N))
        wait_for(f"{N} tasks ran", lambda: len(runs(apalis)) >= N, timeout=60, daemons=daemons)
        wait_for("no task pending, running or failed", lambda: all_settled(apalis), timeout=30, daemons=daemons)
    finally:
        errors = stop(daemons)
    assert [d.returncode for d in daemons] == [0, 0, 0], errors
    counted = runs(apalis)
    assert set(counted) == set(range(N))
    twice = {n: k for n, k in counted.items() if k != 1}
    assert not twice, f"{len(twice)} tasks ran more than once on {backend.kind}: {sorted(twice.items())[:20]}"
