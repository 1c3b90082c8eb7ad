"""Faults under load (DESIGN.md §3 "Heartbeats and orphans", "Server faults"; §7 Reliability).

On each store, 10,000 tasks go through 4 daemons. Mid-run one daemon is killed with SIGKILL
and, right after, the store's server (a private instance: own port, own data) is stopped, kept
down ~2 s and started again on the same data (SQLite has no server: the kill alone). MariaDB is
stopped by SIGKILL (a crash; its commits are durable): its orderly shutdown drops its clients'
connections over seconds under load (6 s seen, the last clients' statements committing all the
while), so a daemon whose connections held on saw the others' beats stop for longer than
`stale_after` with the server reachable, and took their tasks as any sweep of a live server
must. Then:

- no task is lost: every task ran and ends done;
- every daemon that was not killed rides the outage out by itself and runs tasks after it;
- on the stores whose leases name their worker (sqlite, postgres, mysql, redis), only tasks the
  killed daemon held run a second time. The live daemons could not beat while the server was
  down, so when it comes back their heartbeats are older than `stale_after`: the recovery sweep
  must give them a full `stale_after` with the store reachable before it takes their tasks, or
  tasks they had finished (their acknowledgements waiting for the store) run again.

Brokers and visibility-timeout queues (pgmq, rsmq, amqp, nats) hand a message whose lease
lapsed, or whose channel closed, to the next reader by design: there the test asserts that
nothing is lost and prints (with -s) what the restart cost, which the README states.
"""

from __future__ import annotations

import collections
import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .chaos import (
    RECORDER,
    Backend,
    all_settled,
    kill,
    make_backend,
    push_numbers,
    run_lines,
    stop,
    timed_run_lines,
    wait_for,
    worker_table,
)
from .chaos_servers import (
    PrivateServer,
    free_port,
    mariadb_database,
    pg_database,
    private_mariadb,
    private_nats,
    private_postgres,
    private_rabbitmq,
    private_redis,
)
from .conftest import Apalis

N = 10_000
DAEMONS = 4
CONCURRENCY = 8
SLEEP = 0.005  # per task: long enough that the faults land mid-run, short enough for CI
RUN = ("run", "--no-live", "--log-format", "json", "--log-level", "warning")
OWNED_LEASES = ("sqlite", "postgres", "mysql", "redis")


@contextlib.contextmanager
def _server(kind: str) -> Iterator[tuple[PrivateServer | None, str | None]]:
    """A private server for `kind` and the URL of a fresh database (or namespace) on it; none
    for SQLite, whose database is a file of the test."""
    if kind == "sqlite":
        yield None, None
    elif kind in ("postgres", "pgmq"):
        with private_postgres(free_port()) as server:
            yield server, pg_database(server, "outage", pgmq=kind == "pgmq")
    elif kind == "mysql":
        with private_mariadb(free_port()) as server:
            yield server, mariadb_database(server, "outage")
    elif kind in ("redis", "rsmq"):
        with private_redis(free_port()) as server:
            yield server, f"redis://127.0.0.1:{server.port}/0"
    elif kind == "amqp":
        with private_rabbitmq(free_port()) as server:
            yield server, f"amqp://guest:guest@127.0.0.1:{server.port}/"
    elif kind == "nats":
        with private_nats(free_port()) as server:
            yield server, f"nats://127.0.0.1:{server.port}"
    else:
        raise ValueError(kind)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["sqlite", "postgres", "mysql", "redis", "pgmq", "rsmq", "amqp", "nats"])
def test_kill9_and_server_restart_under_load(apalis: Apalis, tmp_path: Path, kind: str) -> None:
    with _server(kind) as (server, url):
        # rsmq's lease is the longer of the queue's `vt` and stale_after: keep it short here.
        backend = make_backend(kind, tmp_path, server=url, options={"vt": 1} if kind == "rsmq" else {})
        (apalis.cwd / "chaos_handlers.py").write_text(RECORDER)
        apalis.write_config(backend.table + "\n" + worker_table(queue=backend.queue, concurrency=CONCURRENCY))
        _run(apalis, backend, (lambda: server.restart(crash=kind == "mysql")) if server is not None else lambda: None)


def _ran_on_all(apalis: Apalis, daemons: list[subprocess.Popen[str]], at_least: int) -> bool:
    lines = run_lines(apalis)
    return len(lines) >= at_least and {d.pid for d in daemons} <= {pid for _, pid in lines}


def _run(apalis: Apalis, backend: Backend, restart: Callable[[], None]) -> None:
    push_numbers(apalis, range(N), sleep=SLEEP)
    daemons = [apalis.start(*RUN) for _ in range(DAEMONS)]
    victim, survivors = daemons[0], daemons[1:]
    try:
        # Every daemon must have run a task before the kill, the victim above all: four daemons
        # start at once, and one that a loaded machine starts late can find the first fifth gone.
        wait_for(
            "a fifth of the tasks ran, some on every daemon",
            lambda: _ran_on_all(apalis, daemons, at_least=N // 5),
            timeout=120,
            daemons=daemons,
        )
        killed_at = time.time()
        kill(victim)
        restart()
        back_at = len(run_lines(apalis))
        assert back_at < N * 3 // 4, "most tasks ran before the server came back: nothing was tested"
        wait_for(
            f"all {N} tasks ran", lambda: len({n for n, _ in run_lines(apalis)}) == N, timeout=240, daemons=survivors
        )
        wait_for("no task pending, running or failed", lambda: all_settled(apalis), timeout=60, daemons=survivors)
        assert all(d.poll() is None for d in survivors), "a daemon exited"
    finally:
        kill(victim)
        errors = stop(survivors)
    assert all(d.returncode == 0 for d in survivors), [e[-3000:] for e in errors]

    lines = run_lines(apalis)
    counted = collections.Counter(n for n, _ in lines)
    assert set(counted) == set(range(N)), f"{N - len(counted)} tasks never ran"
    assert victim.pid in {pid for _, pid in lines}, "the killed daemon had run nothing: the kill tested nothing"
    after = {pid for _, pid in lines[back_at:]}
    assert all(d.pid in after for d in survivors), "a daemon did not resume after the restart by itself"

    first_pid = {n: pid for n, pid in reversed(lines)}  # the earliest run of each task wins
    again = {n: k for n, k in counted.items() if k > 1}
    of_live = {n: k for n, k in again.items() if first_pid[n] != victim.pid}
    print(
        f"{backend.kind}: {len(again)} of {N} tasks ran more than once;"
        f" {sum(k - 1 for k in of_live.values())} extra runs of tasks the live daemons had run"
    )
    if backend.kind in OWNED_LEASES:
        logged = dict(zip((d.pid for d in survivors), errors, strict=True))
        assert not of_live, _twice(apalis, of_live, killed_at, victim.pid, logged)
        assert all(k == 2 for k in again.values()), again

    stats = apalis("stats", "--json")
    assert stats.code == 0, stats.err
    row = stats.json()[0]
    assert not row.get("killed"), row
    if row.get("done") is not None:
        assert row["done"] == N, row


def _twice(apalis: Apalis, of_live: dict[int, int], killed_at: float, victim: int, errors: dict[int, str]) -> str:
    """The message of a failure where live daemons' tasks ran again: when each ran and where
    (seconds from the first run; the fault's time), and what the live daemons logged, to tell a
    sweep before the fault (a live daemon's beats late) from one after it."""
    lines = timed_run_lines(apalis)
    start = min(at for _, _, at in lines)
    shown = sorted(of_live)[:12]
    when = {n: [(pid, round(at - start, 2)) for m, pid, at in lines if m == n] for n in shown}
    logged = "\n".join(f"daemon {pid}: {err[-1500:]}" for pid, err in errors.items())
    return (
        f"tasks of live daemons ran again after the restart: {sorted(of_live)[:20]}; fault at"
        f" {killed_at - start:.2f} s (victim {victim}); runs (pid, s): {when}\n{logged}"
    )
