"""A handler that runs in a process of its own (a command, or a child with isolation = "process")
leads a process group: a kill reaches the programs it started, and a Ctrl-C typed in the
terminal reaches only the daemon, which lets the running task finish as it promises."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from apalis_cli.config import parse_config
from apalis_cli.handlers import load_handler
from apalis_cli.task import Task, TaskContext

from .conftest import APALIS, Apalis

SCRIPT = """#!/bin/sh
sleep 3600 &
echo $! > "$1"
wait
"""


def gone_or_zombie(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


async def test_a_cancelled_command_takes_the_programs_it_started_along(tmp_path: Path) -> None:
    script = tmp_path / "spawns.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    pidfile = tmp_path / "sleep.pid"
    source = f'[[workers]]\nname = "w"\nhandler = {{ command = ["./spawns.sh", "{pidfile}"] }}\nkill_grace = "1s"\n'
    config = parse_config(source, tmp_path / "jobs.toml")
    assert config.workers[0].kill_grace == 1.0
    loaded = load_handler(config, config.workers[0])
    task = Task(id="T1", args=b"{}", ctx=TaskContext(queue="w", attempts=1))
    running = asyncio.ensure_future(loaded.handler({}, task))
    while not pidfile.exists() or not pidfile.read_text().strip():  # noqa: ASYNC110 - the script writes it
        await asyncio.sleep(0.01)
    running.cancel()  # as a timeout layer or a stop past shutdown_timeout does
    with pytest.raises(asyncio.CancelledError):
        await running
    # Before, only the shell was killed and its `sleep` ran on while the task was retried.
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while not gone_or_zombie(pid):
        assert time.monotonic() < deadline, "the command's program outlived the cancelled run"
        await asyncio.sleep(0.02)


async def test_a_command_cancelled_while_it_starts_takes_its_programs_along(tmp_path: Path) -> None:
    """A cancel that lands while the command is still being started (asyncio connecting its
    pipes, the child already forked) ends its process group too: asyncio's own clean-up kills
    only the child, and a program the child started lived on (seen under a parallel test run)."""
    script = tmp_path / "spawns.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    survivors = []
    for turns in range(12):  # the cancel lands after 0, 1, 2, ... turns of the loop: one is mid-start
        pidfile = tmp_path / f"sleep-{turns}.pid"
        source = f'[[workers]]\nname = "w"\nhandler = {{ command = ["./spawns.sh", "{pidfile}"] }}\nkill_grace = "1s"\n'
        config = parse_config(source, tmp_path / "jobs.toml")
        loaded = load_handler(config, config.workers[0])
        task = Task(id=f"T{turns}", args=b"{}", ctx=TaskContext(queue="w", attempts=1))
        running = asyncio.ensure_future(loaded.handler({}, task))
        for _ in range(turns):
            await asyncio.sleep(0)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(running), 30)
        # The script may have been ended before it started `sleep`: only a started one is checked.
        await asyncio.sleep(0.3)  # the script writes the pidfile right after starting it
        if pidfile.exists() and pidfile.read_text().strip():
            pid = int(pidfile.read_text())
            if not gone_or_zombie(pid):
                survivors.append(pid)
                os.kill(pid, signal.SIGKILL)
    assert survivors == [], "programs outlived their cancelled commands"


CONFIG = """\
[backends.main]
kind = "sqlite"
url = "sqlite:///jobs.db"

[[workers]]
name = "w"
{handler}
shutdown_timeout = "30s"
keep_alive = "1s"
poll_interval = "100ms"
"""

SLOW = """
import time

def slow(args):
    open("started", "w").close()
    time.sleep(1.5)
    return "finished"
"""


@pytest.mark.parametrize(
    "handler",
    [
        'handler = { command = ["sh", "-c", "touch started; sleep 1.5; echo finished"] }',
        'handler = "iso_slow:slow"\nisolation = "process"',
    ],
    ids=["command", "process"],
)
def test_ctrl_c_in_the_terminal_lets_the_running_task_finish(apalis: Apalis, handler: str) -> None:
    (apalis.cwd / "iso_slow.py").write_text(SLOW)
    apalis.write_config(CONFIG.format(handler=handler))
    task_id = apalis("push", "{}").out.strip()
    # A terminal sends Ctrl-C's SIGINT to its foreground process group: the daemon's, here.
    daemon = subprocess.Popen(
        [APALIS, "run", "--no-live"],
        cwd=apalis.cwd,
        env=apalis.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # The handler says it started: asking `apalis inspect` took longer than its 1.5 s run
        # on a loaded machine, and the wait saw it pending, then done, never running.
        deadline = time.monotonic() + 30
        while not (apalis.cwd / "started").exists():
            assert daemon.poll() is None, daemon.communicate()[1]
            assert time.monotonic() < deadline, "the handler did not start within 30 s"
            time.sleep(0.02)
        os.killpg(daemon.pid, signal.SIGINT)
        _, err = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, err
    (row,) = apalis.inspect("--id", task_id)
    assert (row["status"], row["attempts"]) == ("done", 1), row
