"""Only a signal stops `apalis run`, and no stop lets a task run twice at once.

A handler's `sys.exit()` or `KeyboardInterrupt` fails its own task. A sync handler runs in a
thread, which nothing stops: on SIGTERM its task stays with the daemon until the handler returns
(another daemon on the same store never gets it meanwhile), and a second signal ends the process,
thread included, so the task comes back only once nothing runs it. Every run is logged from inside
the handler with O_APPEND (`start`/`end`, pid, wall time), read from outside the daemons.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .chaos import Backend, make_backend, stop, wait_for
from .conftest import Apalis

HANDLERS = """
import asyncio
import os
import sys
import time

def _log(event, args):
    fd = os.open("runs.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {args['n']} {os.getpid()} {time.time()!r}\\n".encode())
    finally:
        os.close(fd)

def slow(args, task):
    _log("start", args)
    # Only the first run is slow: the run that comes back after a stop finishes at once.
    time.sleep(args["sleep"] if task.ctx.attempts == 1 else 0)
    _log("end", args)
    return "slept"

def misbehaves(args):
    if args["do"] == "exit":
        sys.exit(3)
    if args["do"] == "interrupt":
        raise KeyboardInterrupt
    return "ok"

async def misbehaves_async(args):
    if args["do"] == "exit":
        sys.exit(4)
    if args["do"] == "interrupt":
        raise KeyboardInterrupt
    await asyncio.sleep(0)
    return "ok"
"""


def worker_table(queue: str, handler: str, *, shutdown_timeout: str = "500ms", max_attempts: int = 3) -> str:
    return (
        "[[workers]]\n"
        'name = "w"\n'
        f'queue = "{queue}"\n'
        f'handler = "{handler}"\n'
        "concurrency = 2\n"
        'keep_alive = "500ms"\n'
        'stale_after = "1500ms"\n'
        'poll_interval = "100ms"\n'
        f'shutdown_timeout = "{shutdown_timeout}"\n'
        f"max_attempts = {max_attempts}\n"
    )


@dataclass(frozen=True, slots=True)
class Run:
    """One line of `runs.log`."""

    event: str
    n: int
    pid: int
    at: float


def run_log(apalis: Apalis) -> list[Run]:
    log = apalis.cwd / "runs.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [Run(event, int(n), int(pid), float(at)) for event, n, pid, at in (line.split() for line in lines)]


def daemon(apalis: Apalis) -> subprocess.Popen[str]:
    return apalis.start("run", "--no-live", "--log-format", "json")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, apalis: Apalis, tmp_path: Path) -> Iterator[Backend]:
    made = make_backend(request.param, tmp_path)
    (apalis.cwd / "stop_handlers.py").write_text(HANDLERS)
    apalis.write_config(made.table + "\n" + worker_table(made.queue, "stop_handlers:slow"))
    try:
        yield made
    finally:
        made.cleanup()


def test_sigterm_keeps_a_thread_runs_task_until_its_handler_returns(apalis: Apalis, backend: Backend) -> None:
    assert apalis("push", '{"n": 1, "sleep": 3}').code == 0
    first = daemon(apalis)
    second: subprocess.Popen[str] | None = None
    try:
        wait_for("the handler to start", lambda: len(run_log(apalis)) == 1, timeout=30, daemons=[first])
        first.send_signal(signal.SIGTERM)
        # A second daemon on the same store, ready while the first one's thread runs on long past
        # its shutdown_timeout (500 ms): the task must not be handed to it.
        second = daemon(apalis)
        _, first_err = first.communicate(timeout=30)
        wait_for("the task to be done", lambda: apalis.statuses() == {"done": 1}, timeout=30, daemons=[second])
    finally:
        errors = stop([d for d in (first, second) if d is not None])
    assert first.returncode == 0, first_err
    assert "Traceback" not in first_err
    runs = run_log(apalis)
    assert [(r.event, r.pid) for r in runs] == [("start", first.pid), ("end", first.pid)], (runs, errors)


def test_a_second_signal_exits_at_once_and_the_task_comes_back_after(apalis: Apalis, backend: Backend) -> None:
    assert apalis("push", '{"n": 1, "sleep": 60}').code == 0
    first = daemon(apalis)
    second: subprocess.Popen[str] | None = None
    try:
        wait_for("the handler to start", lambda: len(run_log(apalis)) == 1, timeout=30, daemons=[first])
        first.send_signal(signal.SIGINT)
        time.sleep(0.3)
        first.send_signal(signal.SIGINT)
        _, first_err = first.communicate(timeout=10)  # at once: not after the handler's 60 s
        exited_at = time.time()
        assert first.returncode == 128 + signal.SIGINT, first_err
        second = daemon(apalis)
        wait_for("the task to come back and be done", lambda: apalis.statuses() == {"done": 1}, timeout=60)
    finally:
        errors = stop([d for d in (first, second) if d is not None])
    runs = run_log(apalis)
    assert second is not None
    assert [(r.event, r.pid) for r in runs] == [("start", first.pid), ("start", second.pid), ("end", second.pid)], (
        runs,
        errors,
    )
    assert runs[1].at >= exited_at, "the task ran again while the first daemon still ran it"


@pytest.mark.parametrize("handler", ["misbehaves", "misbehaves_async"])
def test_a_handler_that_exits_or_interrupts_fails_its_own_task(apalis: Apalis, handler: str) -> None:
    (apalis.cwd / "stop_handlers.py").write_text(HANDLERS)
    apalis.write_config(
        '[backends.main]\nkind = "sqlite"\nurl = "sqlite:///jobs.db"\n\n'
        + worker_table("w", f"stop_handlers:{handler}", max_attempts=1)
    )
    ids = {apalis("push", f'{{"do": "{do}", "n": {n}}}').out.strip(): do for n, do in enumerate(["ok", "exit", "ok"])}
    ids |= {apalis("push", f'{{"do": "{do}", "n": {n}}}').out.strip(): do for n, do in enumerate(["interrupt", "ok"])}

    ran = apalis("run", "--burst", "--no-live", "--log-format", "json")

    assert ran.code == 0, ran.err
    assert "Traceback" not in ran.err
    rows = {row["id"]: row for row in apalis.inspect()}
    assert {rows[i]["status"] for i, do in ids.items() if do == "ok"} == {"done"}
    exit_row = rows[next(i for i, do in ids.items() if do == "exit")]
    interrupt_row = rows[next(i for i, do in ids.items() if do == "interrupt")]
    assert exit_row["status"] == interrupt_row["status"] == "killed"
    assert exit_row["last_error"].startswith("SystemExit: ")
    assert interrupt_row["last_error"].startswith("KeyboardInterrupt")
