"""The sync no-op handler of the isolation comparison: it returns the time it started."""

from __future__ import annotations

import time
from typing import Any


def stamp(args: Any) -> float:
    """Start time by this handler's own clock (in a daemon thread or in a child process)."""
    return time.time()
