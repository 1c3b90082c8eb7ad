"""Three `apalis run` daemons with the same cron worker piped into one durable store: each tick of
a 1-second schedule runs exactly once (Apalis fires on every replica; apalis-cli must not)."""

from __future__ import annotations

import calendar
import collections
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.services import need_server

from .conftest import Apalis

TICK_HANDLER = """
import os

def record(args):
    with open("ticks.log", "a") as log:
        log.write(f"{args['scheduled_at']} {os.getpid()}\\n")
"""

WORKER = """
[[workers]]
name = "heartbeat-report"
backend = "cron"
schedule = "* * * * * *"
pipe_to = "main"
handler = "ticks:record"
keep_alive = "1s"
poll_interval = "100ms"
"""


@pytest.fixture(params=["sqlite", "postgres"])
def durable(request: pytest.FixtureRequest, apalis: Apalis) -> Iterator[Apalis]:
    (apalis.cwd / "ticks.py").write_text(TICK_HANDLER)
    if request.param == "sqlite":
        apalis.write_config('[backends.main]\nkind = "sqlite"\nurl = "sqlite:///jobs.db"\n' + WORKER)
        yield apalis
        return
    url = need_server("postgres")
    schema = f"apalis_cron_{uuid.uuid4().hex[:8]}"
    apalis.write_config(f'[backends.main]\nkind = "postgres"\nurl = "{url}"\nschema = "{schema}"\n' + WORKER)
    try:
        yield apalis
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def ticks_run(apalis: Apalis) -> collections.Counter[str]:
    log = apalis.cwd / "ticks.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return collections.Counter(line.split()[0] for line in lines if line)


def run_for(daemons: list[subprocess.Popen[str]], apalis: Apalis, seconds: float) -> None:
    """Wait until the daemons are ticking (start-up is slow on a busy machine), then `seconds`."""
    deadline = time.monotonic() + 60
    while not ticks_run(apalis):
        assert all(d.poll() is None for d in daemons), [d.communicate()[1] for d in daemons]
        assert time.monotonic() < deadline, "no tick ran within 60 s"
        time.sleep(0.1)
    time.sleep(seconds)


def assert_contiguous(runs: collections.Counter[str]) -> None:
    """Every second from the first tick to the last ran (none missing)."""
    seconds = sorted(calendar.timegm(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) for t in runs)
    assert seconds == list(range(seconds[0], seconds[-1] + 1)), sorted(runs)


def test_three_daemons_run_each_tick_once(durable: Apalis) -> None:
    daemons = [durable.start("run", "--no-live", "--log-format", "json") for _ in range(3)]
    try:
        run_for(daemons, durable, 5.0)
    finally:
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
        errors = [daemon.communicate(timeout=30)[1] for daemon in daemons]
    assert [d.returncode for d in daemons] == [0, 0, 0], errors
    runs = ticks_run(durable)
    assert len(runs) >= 4, runs  # ticks kept coming for the whole run
    assert set(runs.values()) == {1}, {tick: n for tick, n in runs.items() if n != 1}
    assert_contiguous(runs)


def test_no_daemon_is_left_behind(durable: Apalis) -> None:
    """A daemon killed with SIGKILL does not stop the others from running every tick once."""
    daemons = [durable.start("run", "--no-live", "--log-format", "json") for _ in range(3)]
    try:
        run_for(daemons, durable, 1.5)
        daemons[0].kill()
        time.sleep(4.0)
    finally:
        for daemon in daemons[1:]:
            daemon.send_signal(signal.SIGTERM)
        for daemon in daemons:
            try:
                daemon.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
    runs = ticks_run(durable)
    # A tick the killed daemon was running comes back after stale_after and may run twice
    # (at-least-once); every other tick runs exactly once and none is missing.
    assert len(runs) >= 4
    assert sum(1 for n in runs.values() if n > 1) <= 1, runs
    assert_contiguous(runs)
