"""A test process killed before its fixtures could stop its private servers (SIGKILL, a CI
timeout, a pytest-xdist worker that crashed) takes them with it: none is left running, holding
its port and its memory, on a machine that runs the suite again and again.

A child python starts a private server through the suite's own helpers, from a thread that ends
at once (as `asyncio.to_thread` does), and is then killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .chaos_servers import need_binary

CHILD = """
import json, sys, threading, time
from tests.acceptance import chaos_servers
from tests.acceptance.chaos_servers import free_port

kind = sys.argv[1]
started = {}
kept = []  # the context manager, never exited: as a killed process leaves it

def start():
    kept.append(getattr(chaos_servers, f"private_{kind}")(free_port()))
    server = kept[0].__enter__()
    started["group"] = server.process.pid  # its own session: the group of the server's processes
    started["dirs"] = [str(server.log.parent)] + [str(t.parent) for t in chaos_servers._templates.values()]

thread = threading.Thread(target=start)
thread.start()
thread.join()  # the thread that started the server has ended
time.sleep(0.5)
print(json.dumps(started), flush=True)
time.sleep(3600)
"""

BINARIES = {
    "redis": "redis-server",
    "postgres": "/usr/lib/postgresql/15/bin/postgres",
    "mariadb": "mariadbd",
    "rabbitmq": "rabbitmq-server",
}


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    # Zombies count as gone: only their parent (init, here) can reap them.
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                return True
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("kind", list(BINARIES))
def test_a_killed_test_process_leaves_no_private_server_running(kind: str) -> None:
    need_binary(BINARIES[kind])
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind],
        cwd=root,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "backends")])},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.kill()
        raise AssertionError(f"the child did not start a private {kind}:\n{child.communicate()[1][-3000:]}")
    started = json.loads(line)
    group: int = started["group"]
    try:
        assert _group_alive(group), f"the private {kind} died with the thread that started it"
        child.send_signal(signal.SIGKILL)
        child.wait()
        deadline = time.monotonic() + 30
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _group_alive(group), f"the private {kind} outlived the test process that started it"
    finally:
        child.kill()
        child.communicate()
        if _group_alive(group):
            os.killpg(group, signal.SIGKILL)
        for directory in started["dirs"]:  # the child's cleanup never ran
            shutil.rmtree(directory, ignore_errors=True)
