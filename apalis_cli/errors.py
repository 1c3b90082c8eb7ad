"""Every exception apalis-cli raises or understands.

ApalisError                      base of the errors apalis-cli raises itself
├── UsageError                   bad input from a person: exit code 2, one line, no traceback
│   ├── ConfigError              a bad config file or key; carries file:line when known
│   ├── BadPayload               arguments that the codec cannot encode
│   └── Unsupported              the store cannot do what was asked (says why)
├── MissingExtra                 a backend's driver is not installed (names the extra); exit 2
├── BackendError                 the store failed or cannot be reached; exit code 1
│   └── ConnectionLost           the connection dropped; callers reconnect and retry
├── DecodeError                  a stored payload the codec cannot decode: kills that task
├── UnstorableResult             a handler's return value no store can keep: fails that task
├── HandlerExit                  SystemExit, KeyboardInterrupt, ... raised by a handler: fails that task
└── TaskControl                  raised by handlers to steer their own task
    ├── Retry(delay)             run again after `delay` seconds (counts an attempt)
    └── Abort(reason)            kill the task now, no retry

And an error as the one line of text a store keeps, a log or the CLI shows: `describe_error`
(its type and first line, secrets masked, at most `MAX_ERROR_CHARS`), `storable_text` for any
such text.
"""

from __future__ import annotations

from collections.abc import Iterable

from .redact import redact

__all__ = [
    "MAX_ERROR_CHARS",
    "Abort",
    "ApalisError",
    "BackendError",
    "BadPayload",
    "ConfigError",
    "ConnectionLost",
    "DecodeError",
    "HandlerExit",
    "MissingExtra",
    "Retry",
    "TaskControl",
    "UnstorableResult",
    "Unsupported",
    "UsageError",
    "describe_error",
    "storable_text",
]


class ApalisError(Exception):
    """Base of every error apalis-cli raises itself."""


class UsageError(ApalisError):
    """Bad input from a person: the CLI prints the message alone and exits with 2."""


class ConfigError(UsageError):
    """A bad config file or value; `where` is `file:line` (or the key path) when known."""

    def __init__(self, message: str, *, where: str | None = None, key: str | None = None) -> None:
        self.message = message
        self.where = where
        self.key = key
        super().__init__(self._render())

    def _render(self) -> str:
        text = f"{self.key}: {self.message}" if self.key else self.message
        return f"{self.where}: {text}" if self.where else text

    def located(self, where: str) -> ConfigError:
        """The same error, placed at `where` (a `file:line`)."""
        return ConfigError(self.message, where=where, key=self.key)


class BadPayload(UsageError):
    """Arguments that the worker's codec cannot encode."""


class Unsupported(UsageError):
    """The store cannot serve this request; the message says why."""


class MissingExtra(ApalisError):
    """A backend's driver is not installed; the message names the extra to install."""


class BackendError(ApalisError):
    """The store failed, or could not be reached."""


class ConnectionLost(BackendError):
    """The connection to the store dropped; the operation may be retried after reconnecting."""


class DecodeError(ApalisError):
    """A stored payload that the codec cannot decode; the task is killed with this error."""


class UnstorableResult(ApalisError):
    """A handler's return value that no store can keep (the message says why): that run fails."""


class HandlerExit(ApalisError):
    """A `BaseException` a handler raised (`SystemExit`, `KeyboardInterrupt`, ...), carried as
    an ordinary error so it fails its own task and never stops the daemon. `__cause__` is it."""


class TaskControl(Exception):
    """Raised by a handler to decide what happens to its own task."""


class Retry(TaskControl):
    """Run this task again after `delay` seconds (None: the retry policy's backoff)."""

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        self.delay = delay
        self.reason = str(reason)  # an exception given as the reason is kept as its message
        super().__init__(self.reason)


class Abort(TaskControl):
    """Kill this task now, whatever attempts it has left."""

    def __init__(self, reason: str = "aborted") -> None:
        self.reason = str(reason)  # an exception given as the reason is kept as its message
        super().__init__(self.reason)


# -- an error as one line of text, as every store keeps it -------------------------------------

MAX_ERROR_CHARS = 4000
"""The longest error a task keeps; the start of a longer one is kept, with how much was cut."""


def storable_text(text: str) -> str:
    """`text` as every store takes it: NUL removed, lone surrogates as `\\udcxx` escapes, and at
    most `MAX_ERROR_CHARS` characters."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode()
    if len(text) > MAX_ERROR_CHARS:
        text = f"{text[:MAX_ERROR_CHARS]} [... {len(text) - MAX_ERROR_CHARS:,} more characters]"
    return text


def describe_error(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """One line naming the exception and its message, as every store takes it, with its secrets
    masked (`apalis_cli.redact`; `secrets` are known ones, for a driver that echoes a piece of a
    password no pattern recognises). Masked before it is cut, so no cut leaves half a secret."""
    if isinstance(exc, HandlerExit) and exc.__cause__ is not None:
        exc = exc.__cause__  # what the handler raised, not the envelope that carried it
    elif isinstance(exc, UnstorableResult):
        return storable_text(redact(str(exc), secrets))  # "result cannot be stored: ..." says it all
    name = type(exc).__name__
    try:
        lines = str(exc).strip().splitlines()
    except Exception:  # an exception whose __str__ fails still names its type
        return storable_text(f"{name}: (its message could not be read)")
    return storable_text(redact(f"{name}: {lines[0]}" if lines and lines[0] else name, secrets))
