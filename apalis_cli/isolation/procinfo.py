"""Small facts about processes: resident memory, how one ended, and dying with the daemon."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

__all__ = ["describe_exit", "die_with_parent", "rss_of"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PR_SET_PDEATHSIG = 1


def rss_of(pid: int | None = None) -> int | None:
    """Resident memory of `pid` (this process by default) in bytes, now; None when unknown."""
    path = f"/proc/{pid or 'self'}/statm"
    try:
        with open(path, "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    if pid is None:  # no /proc (macOS): the peak is the best this process can say about itself
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    return None


def describe_exit(returncode: int) -> str:
    """How a child ended, for a person: "was killed by SIGSEGV (signal 11)", "exited with code 3"."""
    if returncode < 0:
        number = -returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            return f"was killed by signal {number}"
        return f"was killed by {name} (signal {number})"
    return f"exited with code {returncode}"


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when `parent` dies (Linux), so a daemon killed with
    SIGKILL leaves no child running a task that the store will hand to another worker."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)
