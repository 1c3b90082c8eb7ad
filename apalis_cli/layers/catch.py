"""The catch layer: exceptions of the listed types kill the task at once instead of retrying.

Some failures never get better with time (a validation error, a missing record): listing their
types here saves the retries. Types are named as `"ValueError"` (a builtin) or
`"package.module:ClassName"`. The config only names them: they are imported when a worker is
assembled (`resolved`), so reading the config (`apalis push`) never imports the application.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ..config_fields import Table
from ..errors import Abort, ConfigError, describe_error
from ..service import Outcome, Service
from ..task import Task

__all__ = ["CatchLayer"]


class CatchLayer:
    """Turns the listed exception types into `Abort`, so the task is killed without retry."""

    kind: ClassVar[str] = "catch"

    def __init__(self, kill_on: tuple[type[BaseException], ...], *, names: tuple[str, ...] | None = None) -> None:
        """`names`: how the config named the types, when they are not imported yet (`kill_on` empty)."""
        self.kill_on = kill_on
        self.names = names if names is not None else tuple(kind.__name__ for kind in kill_on)

    @classmethod
    def from_config(cls, table: Table) -> CatchLayer:
        """`{ kind = "catch", kill_on = ["ValueError", "myapp.errors:NotFound"] }`, not imported yet."""
        return cls((), names=table.take("kill_on", _exception_names))

    def resolved(self, base_dir: Path) -> CatchLayer:
        """This layer with its types imported ("package.module:Class" from `base_dir`); a name
        that is not an exception class is a `ConfigError` at `kill_on`."""
        from ..handlers import resolve_exception  # the application's code: imported only now

        try:
            return CatchLayer(tuple(resolve_exception(name, base_dir) for name in self.names), names=self.names)
        except ValueError as exc:
            raise ConfigError(str(exc), key="kill_on") from None

    def __repr__(self) -> str:
        return f"catch({', '.join(t.__name__ for t in self.kill_on) if self.kill_on else ', '.join(self.names)})"

    def __call__(self, inner: Service) -> Service:
        if len(self.kill_on) != len(self.names):
            raise RuntimeError(f"{self!r} names types it has not imported: use resolved(base_dir)")
        kill_on = self.kill_on

        async def caught(task: Task[Any]) -> Outcome:
            try:
                return await inner(task)
            except kill_on as exc:
                raise Abort(describe_error(exc)) from exc

        return caught


def _exception_names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError('expected exception names, e.g. ["ValueError", "myapp.errors:NotFound"]')
    return tuple(value)
