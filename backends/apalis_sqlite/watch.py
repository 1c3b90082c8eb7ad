"""Wake-ups across processes (Linux): inotify says when the database's WAL file was written.

A push from another process (`apalis push`, a web app) lands in the `-wal` file next to the
database. Watching that folder for writes to it lets an idle worker poll at once instead of
after its back-off; a write of our own only costs idle pollers one empty claim. The same watch
hears the store's doorbells (`bells.py`), files next to the database written after a commit
that someone in another process may be waiting for (a cancel, a task's end). Where inotify is
not there (macOS, a container without it), nothing is watched and polling within
`poll_interval` finds the task as before (and the heartbeat tells a worker of a cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import struct
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["WalWatch"]

_IN_MODIFY = 0x00000002
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then `len` bytes of name


def _inotify() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "inotify_init1") and hasattr(libc, "inotify_add_watch") else None


class WalWatch:
    """Calls `on_change()` (on the event loop) whenever the database's WAL file is written, and
    `others[suffix]()` whenever the file named the database's name + suffix is."""

    __slots__ = ("_calls", "_fd", "_loop", "_path")

    def __init__(
        self, database: str, on_change: Callable[[], None], others: Mapping[str, Callable[[], None]] | None = None
    ) -> None:
        self._path = Path(database)
        self._calls = {os.fsencode(self._path.name + "-wal"): on_change}
        for suffix, call in (others or {}).items():
            self._calls[os.fsencode(self._path.name + suffix)] = call
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def active(self) -> bool:
        """True while the folder is watched."""
        return self._fd >= 0

    def start(self) -> bool:
        """Watch from the running loop on (idempotent); False where inotify is not available."""
        if self._fd >= 0:
            return True
        libc = _inotify()
        if libc is None:
            return False
        loop = asyncio.get_running_loop()
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return False
        # The folder, not the file: the WAL file is deleted and made again when the last
        # connection to the database closes and a new one opens.
        if libc.inotify_add_watch(fd, os.fsencode(self._path.parent), _IN_MODIFY) < 0:
            os.close(fd)
            return False
        self._fd, self._loop = fd, loop
        loop.add_reader(fd, self._readable)
        return True

    def stop(self) -> None:
        """Stop watching."""
        fd, loop = self._fd, self._loop
        if fd < 0:
            return
        self._fd, self._loop = -1, None
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(Exception):  # a loop from before may refuse: the fd goes anyway
                loop.remove_reader(fd)
        os.close(fd)

    def _readable(self) -> None:
        hits: dict[bytes, Callable[[], None]] = {}
        calls = self._calls
        while True:
            try:
                data = os.read(self._fd, 65536)
            except (BlockingIOError, OSError):
                break
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, _, _, length = _EVENT.unpack_from(data, offset)
                start = offset + _EVENT.size
                name = data[start : start + length].rstrip(b"\0")
                if name in calls:
                    hits[name] = calls[name]
                offset = start + length
        for call in hits.values():  # once per file, however many writes this read gathered
            call()
