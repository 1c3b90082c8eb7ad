"""What the tests of process isolation share: the handlers their children run (a module to
write into the test's tmp_path as `iso_handlers.py`), a retry backoff that keeps retries out of
a test's way, and how to tell that a child is gone."""

from __future__ import annotations

import os

from apalis_cli.layers.retry import Backoff

__all__ = ["FAST", "HANDLERS", "gone"]

HANDLERS = """
import ctypes, os, signal, time
from pathlib import Path

LEAK = []

def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def work(args):
    Path(args["pidfile"]).write_text(str(os.getpid()))
    do = args["do"]
    before = rss()
    if do == "sleep":
        time.sleep(3600)
    elif do == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)
    elif do == "slow":
        time.sleep(args["seconds"])
    elif do == "leak":
        LEAK.append(b"x" * args["bytes"])
    elif do == "segfault":
        ctypes.string_at(0)
    elif do == "exit":
        os._exit(3)
    elif do == "oom":
        os.kill(os.getpid(), signal.SIGKILL)
    elif do == "sys.exit":
        raise SystemExit(4)
    elif do == "spawn":
        import subprocess
        program = subprocess.Popen(["sleep", "3600"])
        Path(args["pidfile"] + ".program").write_text(str(program.pid))
        time.sleep(3600)
    return {"pid": os.getpid(), "rss_before": before, "rss_after": rss()}
"""

FAST = Backoff(kind="constant", base=60.0, max=60.0, jitter=False)  # a retry stays out of the way


def gone(pid: int) -> bool:
    """True once `pid` no longer exists (our children are reaped by the event loop)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
