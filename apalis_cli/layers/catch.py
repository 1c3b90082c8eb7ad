"""The catch layer: exceptions of the listed types kill the task at once instead of retrying.

Some failures never get better with time (a validation error, a missing record): listing their
types here saves the retries. Types are named as `"ValueError"` (a builtin) or
`"package.module:ClassName"`.
"""

from __future__ import annotations

from typing import Any

from ..errors import Abort
from ..service import Outcome, Service
from ..task import Task
from .retry import describe_error

__all__ = ["CatchLayer"]


class CatchLayer:
    """Turns the listed exception types into `Abort`, so the task is killed without retry."""

    def __init__(self, kill_on: tuple[type[BaseException], ...]) -> None:
        self.kill_on = kill_on

    def __repr__(self) -> str:
        return f"catch({', '.join(t.__name__ for t in self.kill_on)})"

    def __call__(self, inner: Service) -> Service:
        kill_on = self.kill_on

        async def caught(task: Task[Any]) -> Outcome:
            try:
                return await inner(task)
            except kill_on as exc:
                raise Abort(describe_error(exc)) from exc

        return caught
