"""The `apalis` command: one module per command group, errors as one line and an exit code.

Exit codes: 0 ok; 1 a runtime failure (the store failed, a task was not found); 2 bad usage,
config or input. Errors are a single `apalis: error: ...` line on stderr, never a traceback, and
passwords inside URLs are masked before anything is printed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import typer
from typer.exceptions import Abort, Exit

from ..errors import ApalisError, MissingExtra, UsageError, describe_error
from .app import app

# isort: off
# Imported for their commands, in the order `apalis --help` lists them. Each imports what its
# commands need when they run, so that `apalis --help` or `apalis push` loads little else.
from . import run, push, inspect, admin, control, web, setup

# isort: on

__all__ = ["app", "fail_line", "main"]

_ = (admin, control, inspect, push, run, setup, web)  # imported for their commands


def fail_line(message: str) -> str:
    """`message` as the one line printed on failure: no newlines, no passwords, no escape sequences."""
    from ..printable import printable
    from ..redact import redact

    text = " ".join(message.split())
    return "apalis: error: " + printable(redact(text))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `apalis` console script."""
    sys.exit(_run(list(argv) if argv is not None else sys.argv[1:]))


def _run(argv: list[str]) -> int:
    command = typer.main.get_command(app)
    _quiet_stdlib_logging()  # `run` replaces this with structured logging
    try:
        result = command.main(args=argv, prog_name="apalis", standalone_mode=False)
    except Exit as exc:
        return exc.exit_code
    except SystemExit as exc:  # typer's --install-completion and --show-completion end this way
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except (Abort, KeyboardInterrupt):
        print("apalis: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return _report(exc)
    return result if isinstance(result, int) else 0


def _report(exc: Exception) -> int:
    """Print `exc` as one line and return the exit code it calls for."""
    if isinstance(exc, UsageError | MissingExtra):
        print(fail_line(str(exc)), file=sys.stderr)
        return 2
    if isinstance(exc, ApalisError):
        print(fail_line(str(exc)), file=sys.stderr)
        return 1
    format_message = getattr(exc, "format_message", None)
    exit_code = getattr(exc, "exit_code", None)
    if callable(format_message) and isinstance(exit_code, int):
        # Click's usage errors (typer vendors click in newer releases, so match by shape).
        context = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and context is not None:
            print(context.get_help())
            return 2
        print(fail_line(str(format_message())), file=sys.stderr)
        return 2 if exit_code == 2 else max(exit_code, 1)
    # A store or driver failure: one line, never a traceback.
    print(fail_line(describe_error(exc)), file=sys.stderr)
    return 1


def _quiet_stdlib_logging() -> None:
    """Keep drivers' standard-library log records off a command's output (errors say enough)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())
