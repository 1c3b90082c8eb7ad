"""Global limits with real daemons: three `apalis run` processes on one SQLite file hold a per-key
concurrency (sampled from the store all along), a fleet-wide rate over 20 seconds, and a killed
daemon's slots come back within `stale_after`."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import APALIS, Apalis

HANDLERS = """
import asyncio, os, time

async def timed(args):
    started = time.time()
    once = args.get("once")
    if once and not os.path.exists(once):
        open(once, "w").close()
        await asyncio.sleep(args.get("hold", 60))
    await asyncio.sleep(args.get("sleep", 0))
    return started
"""

CONFIG = """\
[backends.main]
kind = "sqlite"
url = "sqlite:///fleet.db"

[[workers]]
name = "imports"
handler = "fleet_handlers:timed"
concurrency = 50
keep_alive = "{keep_alive}"
stale_after = "{stale_after}"
poll_interval = "100ms"
middleware = [{layer}]
"""


@pytest.fixture
def fleet(apalis: Apalis, tmp_path: Path) -> Apalis:
    (tmp_path / "fleet_handlers.py").write_text(HANDLERS)
    return apalis


def configure(apalis: Apalis, layer: str, keep_alive: str = "1s", stale_after: str = "3s") -> None:
    apalis.write_config(CONFIG.format(layer=layer, keep_alive=keep_alive, stale_after=stale_after))


def push(apalis: Apalis, values: list[dict[str, object]]) -> None:
    jsonl = apalis.cwd / "tasks.jsonl"
    jsonl.write_text("".join(json.dumps(v) + "\n" for v in values))
    result = apalis("push", "--file", str(jsonl))
    assert result.code == 0, result.err


def daemon(apalis: Apalis, name: str) -> subprocess.Popen[bytes]:
    with (apalis.cwd / f"{name}.log").open("wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [APALIS, "run", "--log-format", "json", "--log-level", "warning"],
            cwd=apalis.cwd,
            env=apalis.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def daemons(fleet: Apalis) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def db(fleet: Apalis) -> Iterator[sqlite3.Connection]:
    """A connection of the test's own to the daemons' database file, to sample it."""
    conn = sqlite3.connect(fleet.cwd / "fleet.db", timeout=10)
    yield conn
    conn.close()


def wait_for(condition: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not callable(condition) or not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(0.02)


def test_three_daemons_never_pass_a_per_key_concurrency(
    fleet: Apalis, daemons: list[subprocess.Popen[bytes]], db: sqlite3.Connection
) -> None:
    configure(fleet, '{ kind = "concurrency", limit = 3, scope = "global", key = "account" }')
    total = 400
    push(fleet, [{"account": f"a{n % 10}", "n": n, "sleep": 0.05} for n in range(total)])
    daemons.extend(daemon(fleet, f"d{i}") for i in range(3))
    conn = db
    most: dict[str, int] = {}
    samples = 0
    deadline = time.monotonic() + 90
    while True:
        for key, running in conn.execute(
            "SELECT limit_key, count(*) FROM apalis_tasks WHERE status = 'running' GROUP BY limit_key"
        ):
            most[key] = max(most.get(key, 0), running)
        samples += 1
        (done,) = conn.execute("SELECT count(*) FROM apalis_tasks WHERE status = 'done'").fetchone()
        if done == total:
            break
        assert time.monotonic() < deadline, f"only {done} of {total} tasks ran"
        assert all(p.poll() is None for p in daemons), "a daemon died"
    assert samples > 50, "the store was sampled all along"
    assert max(most.values()) == 3, f"every key ran at its limit and never above it: {most}"
    assert sorted(most) == [f"a{n}" for n in range(10)]


def test_a_fleet_wide_rate_holds_within_ten_percent_over_20s(
    fleet: Apalis, daemons: list[subprocess.Popen[bytes]], db: sqlite3.Connection
) -> None:
    rate, window = 50, 20.0
    configure(fleet, f'{{ kind = "rate_limit", rate = {rate}, per = "1s", scope = "global" }}')
    push(fleet, [{"n": n} for n in range(int(rate * (window + 6)))])
    daemons.extend(daemon(fleet, f"d{i}") for i in range(3))
    conn = db
    wait_for(
        lambda: conn.execute("SELECT count(*) FROM apalis_tasks WHERE status = 'done'").fetchone()[0] > 0, 30, "a start"
    )
    first = min(float(r) for (r,) in conn.execute("SELECT result FROM apalis_tasks WHERE status = 'done'"))
    time.sleep(max(0.0, first + window + 1.0 - time.time()))
    starts = [float(r) for (r,) in conn.execute("SELECT result FROM apalis_tasks WHERE result IS NOT NULL")]
    within = sum(1 for at in starts if first <= at < first + window)
    measured = within / window
    print(f"fleet-wide rate over {window:.0f}s: {measured:.1f}/s for a limit of {rate}/s (burst {rate} included)")
    assert abs(measured - rate) <= 0.1 * rate, f"{measured:.1f}/s is not within 10% of {rate}/s"


def test_a_killed_daemons_slots_come_back_within_stale_after(
    fleet: Apalis, daemons: list[subprocess.Popen[bytes]], db: sqlite3.Connection
) -> None:
    keep_alive, stale_after = 0.5, 2.0
    configure(fleet, '{ kind = "concurrency", limit = 1, scope = "global", key = "account" }', "500ms", "2s")
    marker = fleet.cwd / "held"
    push(fleet, [{"account": "a", "once": str(marker), "hold": 60}, {"account": "a", "n": 2}])
    first = daemon(fleet, "first")
    daemons.append(first)
    wait_for(marker.exists, 30, "the first daemon to run the key's first task")
    second = daemon(fleet, "second")
    daemons.append(second)
    conn = db
    wait_for(
        lambda: conn.execute("SELECT count(DISTINCT id) FROM apalis_workers").fetchone()[0] >= 2, 30, "both daemons"
    )
    time.sleep(stale_after)  # the second daemon is steady, and the key's task waits for the slot
    assert conn.execute("SELECT count(*) FROM apalis_tasks WHERE status = 'done'").fetchone()[0] == 0
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    (last_beat,) = conn.execute(
        "SELECT last_seen FROM apalis_workers WHERE id LIKE ?", (f"%-{first.pid}-%",)
    ).fetchone()
    wait_for(
        lambda: conn.execute("SELECT count(*) FROM apalis_tasks WHERE status = 'done'").fetchone()[0] == 2,
        30,
        "the key's tasks to run on the second daemon",
    )
    back = min(float(r) for (r,) in conn.execute("SELECT result FROM apalis_tasks WHERE result IS NOT NULL"))
    print(f"the killed daemon's slot came back {back - last_beat:.2f}s after its last heartbeat (stale_after 2s)")
    assert back - last_beat >= stale_after - 0.05, "the slot stayed held while the lease was alive"
    # The sweep runs at the second daemon's heartbeats (every keep_alive): a slot is back within
    # stale_after and one beat; the rest is slack for a loaded machine's scheduling.
    assert back - last_beat <= stale_after + keep_alive + 1.5, "the slot came back with the lease"
