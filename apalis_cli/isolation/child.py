"""The program of one child process: import the worker's handler once, then run tasks one by one.

The daemon starts it with `BOOT` (a fresh interpreter: spawn, never fork) and the daemon's
`sys.path` in the environment, so it imports what the daemon would. SIGINT is ignored (a Ctrl-C
in the terminal is the daemon's to handle); SIGTERM raises SystemExit in the handler, so its
`finally` blocks and context managers run before the daemon's SIGKILL after the grace period.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from .procinfo import die_with_parent, rss_of
from .wire import Done, Failed, Init, Ready, StartFailed, Wants, read_frame, write_frame

__all__ = ["BOOT", "main"]

BOOT = (
    "import json, os, sys; sys.path[:] = json.loads(os.environ.pop('APALIS_CHILD_SYS_PATH')); "
    "from apalis_cli.isolation.child import main; main()"
)
"""The `python -c` program of a child."""

_terminating = False


def main() -> None:
    """Serve the daemon on stdin/stdout until it closes stdin or stops this process."""
    inbox, outbox = _take_stdio()
    die_with_parent(int(os.environ.pop("APALIS_PARENT_PID", os.getppid())))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    init = read_frame(inbox)
    if not isinstance(init, Init):
        return
    try:
        handler, wants, is_async = _load(init)
    except _CannotStart as exc:
        write_frame(outbox, StartFailed(str(exc)))
        return
    write_frame(outbox, Ready(os.getpid(), rss_of(), wants))
    _serve(inbox, outbox, _caller(handler, is_async))


def _take_stdio() -> tuple[int, int]:
    """Keep stdin/stdout for the frames; the handler gets /dev/null and stderr instead."""
    inbox, outbox = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return inbox, outbox


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _terminating
    _terminating = True
    raise SystemExit(128 + signum)


class _CannotStart(Exception):
    """The handler cannot be imported or called; the message is for a person."""


def _load(init: Init) -> tuple[Callable[..., Any], Wants, bool]:
    from ..errors import describe_error
    from ..handlers import call_shape, import_object

    try:
        fn = import_object(init.handler, Path(init.base_dir))
        if not callable(fn):
            raise _CannotStart(f'"{init.handler}" is not callable')
        shape = call_shape(fn, init.handler)
    except ValueError as exc:
        raise _CannotStart(str(exc)) from None
    except BaseException as exc:  # sys.exit() or worse while importing: it cannot serve
        if _terminating:
            raise
        raise _CannotStart(f'cannot import "{init.handler}": {describe_error(exc)}') from None
    wants: Wants = "args" if not shape.wants_second else "ctx" if shape.wants_ctx else "task"
    return fn, wants, shape.is_async


def _caller(fn: Callable[..., Any], is_async: bool) -> Callable[[Any, tuple[Any, ...]], Any]:
    if not is_async:
        return lambda args, extra: fn(args, *extra)
    import asyncio

    loop = asyncio.new_event_loop()  # one for the child's life: a handler may keep clients on it
    return lambda args, extra: loop.run_until_complete(fn(args, *extra))


def _serve(inbox: int, outbox: int, call: Callable[[Any, tuple[Any, ...]], Any]) -> None:
    while True:
        message = read_frame(inbox)
        if message is None:
            return  # the daemon closed our stdin: recycled, or it is stopping
        args, extra = message
        try:
            value = call(args, extra)
        except BaseException as exc:
            if _terminating:
                raise
            reply: Done | Failed = _failure(exc)
        else:
            try:
                reply = Done(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), None)
            except Exception as exc:  # the task fails; the child serves on
                text = f"the handler's result cannot be sent back from its process: {_one_line(exc)}"
                reply = Failed(None, type(exc).__name__, text, None)
        write_frame(outbox, dataclasses.replace(reply, rss=rss_of()))


def _failure(exc: BaseException) -> Failed:
    try:
        pickled: bytes | None = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pickled = None
    return Failed(pickled, type(exc).__name__, _text(exc), None)


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "(its message cannot be shown)"


def _one_line(exc: BaseException) -> str:
    lines = _text(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


if __name__ == "__main__":  # pragma: no cover - started through BOOT
    main()
