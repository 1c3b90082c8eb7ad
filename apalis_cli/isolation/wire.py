"""What the daemon and a child process say to each other: pickled frames behind a length.

    daemon -> child   Init(handler, base_dir)        once, first
                      (args, extra)                  one per task
    child -> daemon   Ready(pid, rss, wants) | StartFailed(message)
                      Done(value, rss) | Failed(exception, name, text, rss)   one per task

A result and an exception are pickled on their own inside their frame, and the daemon reads
them back only with classes it has already imported (builtins, `Retry`/`Abort`, a catch layer's
classes): reading a reply never imports the handler's modules into the daemon.

The child writes on its own copy of stdout and reads its own copy of stdin; the handler's
stdout goes to stderr and its stdin is /dev/null, so nothing a handler prints or reads can
break a frame.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import asyncio  # the daemon's side only: a child never imports asyncio for the wire

__all__ = [
    "Done",
    "Failed",
    "Init",
    "Ready",
    "StartFailed",
    "encode",
    "load_known",
    "read_frame",
    "rebuild_error",
    "receive",
    "write_frame",
]

_HEADER = struct.Struct("!Q")

Wants = Literal["args", "ctx", "task"]
"""What the handler takes besides its arguments: nothing, the TaskContext, or the Task."""


@dataclass(frozen=True, slots=True)
class Init:
    """The handler a child imports, and the config's directory its import path starts from."""

    handler: str
    base_dir: str


@dataclass(frozen=True, slots=True)
class Ready:
    """The child imported its handler and waits for tasks."""

    pid: int
    rss: int | None
    wants: Wants


@dataclass(frozen=True, slots=True)
class StartFailed:
    """The child could not import or adapt its handler; `message` says why."""

    message: str


@dataclass(frozen=True, slots=True)
class Done:
    """The handler returned (the pickled) `value`; `rss` is the child's memory after the task."""

    value: bytes
    rss: int | None


@dataclass(frozen=True, slots=True)
class Failed:
    """The handler raised: the pickled exception when it pickles, its type name and one line."""

    exception: bytes | None
    name: str
    text: str
    rss: int | None


def encode(message: Any) -> bytes:
    """One frame: the pickled message behind its length."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


# -- the child's side: blocking file descriptors --------------------------------------------


def write_frame(fd: int, message: Any) -> None:
    """Write one frame to `fd` (a pipe: loop until all of it went)."""
    view = memoryview(encode(message))
    while view:
        view = view[os.write(fd, view) :]


def read_frame(fd: int) -> Any | None:
    """The next message from `fd`, or None when the daemon closed the pipe."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    body = _read_exactly(fd, _HEADER.unpack(header)[0])
    return None if body is None else pickle.loads(body)


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# -- the daemon's side: asyncio streams ----------------------------------------------------


async def receive(reader: asyncio.StreamReader) -> Any:
    """The next message; raises `asyncio.IncompleteReadError` when the child is gone."""
    header = await reader.readexactly(_HEADER.size)
    return pickle.loads(await reader.readexactly(_HEADER.unpack(header)[0]))


class _KnownOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module not in sys.modules:
            raise pickle.UnpicklingError(f"{module}.{name} is not imported in the daemon")
        return super().find_class(module, name)


def load_known(data: bytes) -> Any:
    """Unpickle `data` with the classes this process has imported; raises on any other."""
    return _KnownOnly(io.BytesIO(data)).load()


class _Remote(Exception):
    """Base of the stand-ins for exceptions that could not cross from a child."""


def rebuild_error(failed: Failed) -> Exception:
    """The handler's exception as the daemon raises it.

    The real one when it unpickles and is an `Exception` (so `Retry`, `Abort` and a catch
    layer's classes work as in a thread). Otherwise a stand-in named like it, so the recorded
    error reads the same; a `SystemExit` or `KeyboardInterrupt` from a handler becomes such a
    stand-in too, failing its own task and never stopping the daemon.
    """
    if failed.exception is not None:
        try:
            error = load_known(failed.exception)
        except Exception:
            error = None
        if isinstance(error, Exception):
            return error
    stand_in: type[_Remote] = type(failed.name, (_Remote,), {"__module__": "apalis_cli.isolation.remote"})
    return stand_in(failed.text)
