"""`apalis run` with `isolation = "process"`: a daemon that stops, or dies, leaves no child
running a task that goes back to the queue; `check` reports a handler its children cannot import."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from .conftest import Apalis

STUCK = """
import os, time
from pathlib import Path

def stuck(args):
    Path(args["pidfile"]).write_text(str(os.getpid()))
    time.sleep(3600)
"""

CONFIG = """\
[backends.main]
kind = "sqlite"
url = "sqlite:///jobs.db"

[[workers]]
name = "stuck"
handler = "iso_stuck:stuck"
isolation = "process"
kill_grace = "1s"
shutdown_timeout = "500ms"
keep_alive = "1s"
poll_interval = "100ms"
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def started_child(apalis: Apalis) -> tuple[subprocess.Popen[str], int]:
    (apalis.cwd / "iso_stuck.py").write_text(STUCK)
    apalis.write_config(CONFIG)
    pidfile = apalis.cwd / "child.pid"
    assert apalis("push", f'{{"pidfile": "{pidfile}"}}').code == 0
    daemon = apalis.start("run", "--no-live")
    deadline = time.monotonic() + 30
    while not pidfile.exists() or not pidfile.read_text():
        assert daemon.poll() is None, daemon.communicate()[1]
        assert time.monotonic() < deadline, "the handler never started"
        time.sleep(0.05)
    return daemon, int(pidfile.read_text())


def wait_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_stopped_daemon_kills_the_child_of_the_task_it_releases(apalis: Apalis) -> None:
    daemon, child = started_child(apalis)
    try:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, err
    assert not alive(child)
    assert apalis.statuses() == {"pending": 1}  # released, and running nowhere


def test_a_daemon_killed_with_sigkill_takes_its_children_along(apalis: Apalis) -> None:
    daemon, child = started_child(apalis)
    daemon.kill()
    daemon.communicate(timeout=30)
    # The kernel kills the child when its parent dies: the orphan sweep may hand the task to
    # another worker, and no copy of it may still be running here.
    assert wait_gone(child, within=10)


def test_check_reports_a_handler_the_children_cannot_import(apalis: Apalis) -> None:
    (apalis.cwd / "iso_stuck.py").write_text("raise RuntimeError('no GPU here')\n")
    apalis.write_config(CONFIG)
    result = apalis("check")
    assert result.code == 2
    where = f"{apalis.config}:7: workers[0].handler"
    assert result.err.strip() == f'apalis: error: {where}: cannot import "iso_stuck:stuck": RuntimeError: no GPU here'
    run = apalis("run", "--burst", "--no-live")
    assert (run.code, run.err.strip()) == (2, result.err.strip())
