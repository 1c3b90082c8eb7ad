"""Restarts of the server mid-run lose no task (DESIGN.md §3 "Server faults", §7).

Each test runs its own private server (other port, data in a temporary directory), starts one
`apalis run` daemon on it, stops the server while the daemon is busy, keeps it down ~2 s and
starts it again on the same data. The daemon must ride it out by itself (it is never restarted)
and every task must end done.

Redis is run with `--appendonly yes --appendfsync always`: a Redis that persists nothing loses
its data on restart by design, so a durable queue on Redis needs persistence, and that is the
operator's choice (see the Redis backend's README), not something apalis can give.
RabbitMQ has only the shared server here, so its test does not restart it: it force-closes the
daemon's own connections (and only those) with `rabbitmqctl close_connection`.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .chaos import RECORDER, Backend, all_settled, make_backend, push_numbers, runs, stop, wait_for, worker_table
from .chaos_servers import (
    PrivateServer,
    free_port,
    mariadb_database,
    need_binary,
    pg_database,
    private_mariadb,
    private_nats,
    private_postgres,
    private_redis,
)
from .conftest import Apalis

N = 300
RUN = ("run", "--no-live", "--log-format", "json", "--log-level", "warning")


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PrivateServer]:
    with private_postgres(free_port()) as server:
        yield server


@pytest.fixture
def mariadb_server() -> Iterator[PrivateServer]:
    with private_mariadb(free_port()) as server:
        yield server


@pytest.fixture
def redis_server() -> Iterator[PrivateServer]:
    with private_redis(free_port()) as server:
        yield server


@pytest.fixture
def nats_server() -> Iterator[PrivateServer]:
    with private_nats(free_port()) as server:
        yield server


def _configure(apalis: Apalis, backend: Backend) -> None:
    (apalis.cwd / "chaos_handlers.py").write_text(RECORDER)
    apalis.write_config(backend.table + "\n" + worker_table(queue=backend.queue, concurrency=8))


def _ride_out(apalis: Apalis, fault: Callable[[], None], kind: str, sleep: float = 0.02) -> None:
    """Push N tasks, run one daemon, inject `fault` when a quarter ran; every task ends done.

    The second half of the tasks is held until the fault is over (`hold`): a fault that takes
    long to inject (rabbitmqctl, a server's start, on a loaded machine) still lands mid-run,
    with tasks running and tasks waiting."""
    hold = apalis.cwd / "hold"
    hold.touch()
    push_numbers(apalis, range(N // 2), sleep=sleep)
    push_numbers(apalis, range(N // 2, N), sleep=sleep, hold=True)
    daemon = apalis.start(*RUN)
    try:
        wait_for("a quarter of the tasks ran", lambda: len(runs(apalis)) >= N // 4, timeout=60, daemons=[daemon])
        fault()
        assert len(runs(apalis)) < N, "every task ran before the fault: nothing was tested"
        hold.unlink()
        wait_for(f"all {N} tasks ran after the fault", lambda: len(runs(apalis)) == N, timeout=90, daemons=[daemon])
        wait_for("no task pending, running or failed", lambda: all_settled(apalis), timeout=60, daemons=[daemon])
        assert daemon.poll() is None, "the daemon exited"
    finally:
        [err] = stop([daemon])
    assert daemon.returncode == 0, err[-4000:]
    counted = runs(apalis)
    assert set(counted) == set(range(N))
    stats = apalis("stats", "--json")
    assert stats.code == 0, stats.err
    row = stats.json()[0]
    assert not row.get("killed"), row
    if row.get("done") is not None:
        assert row["done"] == N, row
    twice = sum(1 for k in counted.values() if k > 1)
    seen = {event: err.count(f'"{event}') for event in ("heartbeat failed", "store unavailable", "worker crashed")}
    # With -s: what the fault cost, and what the daemon said about it (reconnects inside a store are silent).
    print(f"{kind}: {twice} of {N} tasks ran more than once around the fault; daemon warnings: {seen}")


@pytest.mark.parametrize("kind", ["postgres", "pgmq"])
def test_postgres_restart_mid_run(apalis: Apalis, tmp_path: Path, postgres_server: PrivateServer, kind: str) -> None:
    url = pg_database(postgres_server, "chaos_pgmq" if kind == "pgmq" else "chaos", pgmq=kind == "pgmq")
    backend = make_backend(kind, tmp_path, server=url)
    _configure(apalis, backend)
    _ride_out(apalis, postgres_server.restart, kind)


def test_mariadb_restart_mid_run(apalis: Apalis, tmp_path: Path, mariadb_server: PrivateServer) -> None:
    backend = make_backend("mysql", tmp_path, server=mariadb_database(mariadb_server, "chaos"))
    _configure(apalis, backend)
    _ride_out(apalis, mariadb_server.restart, "mysql")


@pytest.mark.parametrize("kind", ["redis", "rsmq"])
def test_redis_restart_mid_run(apalis: Apalis, tmp_path: Path, redis_server: PrivateServer, kind: str) -> None:
    options = {"vt": 1} if kind == "rsmq" else {}
    backend = make_backend(kind, tmp_path, server=f"redis://127.0.0.1:{redis_server.port}/0", options=options)
    _configure(apalis, backend)
    _ride_out(apalis, redis_server.restart, kind)


def test_nats_restart_mid_run(apalis: Apalis, tmp_path: Path, nats_server: PrivateServer) -> None:
    backend = make_backend("nats", tmp_path, server=f"nats://127.0.0.1:{nats_server.port}")
    _configure(apalis, backend)
    _ride_out(apalis, nats_server.restart, "nats")


def _close_amqp_connections_of(pid: int, rabbitmqctl: str) -> int:
    """Close (broker side) the AMQP connections of process `pid`; how many were closed."""
    sockets = subprocess.run(["ss", "-Htnp", "state", "established"], capture_output=True, text=True, timeout=10)
    ports = set()
    for line in sockets.stdout.splitlines():
        if f"pid={pid}," in line and ":5672" in line.split()[-2]:
            ports.add(line.split()[-3].rsplit(":", 1)[1])
    listed = subprocess.run(
        [rabbitmqctl, "-q", "list_connections", "pid", "peer_port"], capture_output=True, text=True, timeout=30
    )
    closed = 0
    for line in listed.stdout.splitlines():
        match = re.match(r"^(<[^>]+>)\s+(\d+)$", line.strip())
        if match and match.group(2) in ports:
            subprocess.run(
                [rabbitmqctl, "-q", "close_connection", match.group(1), "chaos"], capture_output=True, timeout=30
            )
            closed += 1
    return closed


def test_amqp_connections_closed_mid_run(apalis: Apalis, tmp_path: Path) -> None:
    """The shared RabbitMQ is not restarted; the daemon's own connections are closed by the broker."""
    rabbitmqctl = need_binary("rabbitmqctl")
    need_binary("ss")
    backend = make_backend("amqp", tmp_path)
    _configure(apalis, backend)
    daemon_pid: list[int] = []

    def fault() -> None:
        closed = _close_amqp_connections_of(daemon_pid[0], rabbitmqctl)
        assert closed >= 1, "found no AMQP connection of the daemon to close"

    original = apalis.start

    def start(*argv: str) -> subprocess.Popen[str]:
        process = original(*argv)
        daemon_pid.append(process.pid)
        return process

    apalis.start = start  # type: ignore[method-assign]
    try:
        _ride_out(apalis, fault, "amqp", sleep=0.3)  # slower tasks: rabbitmqctl takes seconds
    finally:
        backend.cleanup()
