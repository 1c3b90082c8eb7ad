"""The config file: TOML in, validated frozen dataclasses out; every error names file:line.

    [backends.main]                  # one table per store; `kind` picks the store class
    kind = "sqlite"
    url = "sqlite:///apalis.db"      # ${ENV_VAR} is substituted in every string

    [[workers]]                      # one table per worker
    name = "emails"
    handler = "myapp.jobs:send_email"

Unknown keys are errors. Store options (anything besides `kind` and `url`) are validated by the
store class itself (`apalis_cli.registry.build_store`), so a config with a postgres table still
loads for `push` to a sqlite worker on a machine without the postgres driver. With no
`[backends]` table at all the default is one embedded SQLite store, `sqlite:///apalis.db`.

A worker on a `kind = "cron"` backend (or `backend = "cron"`, no table needed) takes the cron
keys `schedule`, `timezone`, `catch_up`, `catch_up_limit` (validated by the cron store, which gets
them as its options) and `pipe_to`, the durable backend its ticks are pushed into.

To add worker keys: add a field to `WorkerConfig` and a line to `_parse_worker`; `Table` does
the type checks, defaults and unknown-key detection.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .backend import StoreSpec
from .bounds import ATTEMPTS, CONCURRENCY, COUNT
from .config_fields import (
    Table,
    choice,
    did_you_mean,
    duration,
    integer,
    key_error,
    list_of_tables,
    safe_name,
    store_url,
    string,
    substitute_env,
    syntax_message,
    syntax_where,
    table_value,
    type_name,
)
from .errors import ConfigError, UsageError
from .fleet.limits import FleetLimits, fleet_limits
from .layers import LAYERS, Backoff, ConfiguredLayer, RetryLayer
from .redact import secrets_in
from .sizes import parse_size
from .tomllines import KeyPath, LineIndex, render_path

__all__ = [
    "CRON_KEYS",
    "DEFAULT_BACKEND",
    "BackendConfig",
    "CommandHandler",
    "Config",
    "ImportHandler",
    "WorkerConfig",
    "load_config",
    "parse_config",
]

DEFAULT_BACKEND = ("default", "sqlite", "sqlite:///apalis.db")
"""(name, kind, url) of the store used when the file has no `[backends]` table."""

CRON_KEYS = ("schedule", "timezone", "catch_up", "catch_up_limit")
"""Worker keys handed to the cron store as its options."""

# Backends a worker may name without a table: they need no URL.
_IMPLICIT_BACKENDS = {"memory": "memory://", "cron": ""}

_HANDLER_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

Isolation = Literal["thread", "process"]
_PROCESS_KEYS = ("max_tasks_per_child", "max_memory_per_child", "kill_grace")


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendConfig:
    """One `[backends.NAME]` table: the store's kind, URL and its own options."""

    name: str
    kind: str
    url: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def spec(self, base_dir: Path) -> StoreSpec:
        """The `StoreSpec` the store class validates (relative paths resolve from `base_dir`)."""
        return StoreSpec(name=self.name, kind=self.kind, url=self.url, options=self.options, base_dir=base_dir)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportHandler:
    """A Python callable named `"package.module:function"`."""

    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandHandler:
    """A program run once per task: `{ command = ["./resize.sh", "--fast"] }`."""

    command: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    """One `[[workers]]` table, validated, defaults filled in."""

    index: int
    name: str
    backend: str
    queue: str
    codec: str = "json"
    handler: ImportHandler | CommandHandler | None = None
    concurrency: int = 1
    poll_interval: float = 1.0
    keep_alive: float = 10.0
    stale_after: float = 30.0
    shutdown_timeout: float = 30.0
    max_attempts: int = 3
    retention: float = 7 * 86400.0
    middleware: tuple[ConfiguredLayer, ...] = ()  # as configured: see `apalis_cli.layers.LAYERS`
    cron: Mapping[str, Any] | None = None  # the cron keys given, for a worker on a cron backend
    pipe_to: str | None = None  # cron: the durable backend the ticks are pushed into
    isolation: Isolation = "thread"  # "process": the handler runs in a pool of child processes
    max_tasks_per_child: int | None = None  # process: recycle a child after this many tasks
    max_memory_per_child: int | None = None  # process: ... once its RSS after a task is above (bytes)
    kill_grace: float = 5.0  # process or command handler: SIGTERM, then SIGKILL after this long

    @property
    def key(self) -> KeyPath:
        """This worker's key path in the file, `("workers", index)`."""
        return ("workers", self.index)

    @property
    def backoff(self) -> Backoff | None:
        """The backoff of the (first) retry middleware, if any."""
        return next((mw.backoff for mw in self.middleware if isinstance(mw, RetryLayer)), None)

    @property
    def limits(self) -> FleetLimits | None:
        """The `scope = "global"` limits of its middleware (checked when the file was read)."""
        return fleet_limits(self.middleware)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A loaded config file."""

    path: Path
    backends: Mapping[str, BackendConfig]
    workers: tuple[WorkerConfig, ...]
    lines: LineIndex

    @property
    def base_dir(self) -> Path:
        """The directory of the config file: relative paths and handler imports start there."""
        return self.path.parent

    @property
    def secrets(self) -> frozenset[str]:
        """The passwords and tokens in the backends' URLs, for `apalis_cli.redact.redact`."""
        return frozenset().union(*(secrets_in(backend.url) for backend in self.backends.values()))

    def where(self, path: KeyPath) -> str:
        """`file:line` of a key path."""
        return self.lines.where(path)

    def error(self, path: KeyPath, message: str) -> ConfigError:
        """A `ConfigError` about the key at `path`, placed at its line."""
        return ConfigError(message, where=self.where(path), key=render_path(path))

    def worker(self, name: str | None) -> WorkerConfig:
        """The worker called `name`; with None, the only worker (an error when there are several)."""
        if name is None:
            if len(self.workers) == 1:
                return self.workers[0]
            if not self.workers:
                raise UsageError(f"{self.path}: no [[workers]] defined")
            raise UsageError(f"{self.path} has several workers; pick one with --worker ({self._names()})")
        for worker in self.workers:
            if worker.name == name:
                return worker
        hint = did_you_mean(name, (w.name for w in self.workers))
        raise UsageError(f'no worker named "{name}" in {self.path}{hint} (workers: {self._names()})')

    def _names(self) -> str:
        return ", ".join(w.name for w in self.workers) or "none"


def load_config(path: str | Path) -> Config:
    """Read and validate the config file at `path`."""
    file = Path(path)
    try:
        source = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{file}: config file not found (create one with: apalis init {file})") from None
    except OSError as exc:
        raise UsageError(f"{file}: cannot read the config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x})", where=f"{file}:{line}") from None
    return parse_config(source, file)


def parse_config(source: str, path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Validate TOML `source` (read from `path`), substituting `${VAR}` from `environ`."""
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(syntax_message(exc), where=syntax_where(exc, path)) from None
    lines = LineIndex(source, path)
    env = os.environ if environ is None else environ
    data = substitute_env(data, (), env, lines)
    root = Table(data, (), lines)
    backends = _parse_backends(root)
    raw_workers = root.take("workers", list_of_tables, [])
    root.finish()
    workers: list[WorkerConfig] = []
    for index, table in enumerate(raw_workers):
        worker = _parse_worker(Table(table, ("workers", index), lines), index, backends)
        if any(w.name == worker.name for w in workers):
            raise key_error(lines, ("workers", index, "name"), f'"{worker.name}" is already the name of another worker')
        workers.append(worker)
    return Config(path=path, backends=backends, workers=tuple(workers), lines=lines)


# -- sections ------------------------------------------------------------------------------


def _parse_backends(root: Table) -> dict[str, BackendConfig]:
    raw = root.take("backends", table_value, None)
    if raw is None:
        name, kind, url = DEFAULT_BACKEND
        return {name: BackendConfig(name=name, kind=kind, url=url)}
    backends: dict[str, BackendConfig] = {}
    for name, value in raw.items():
        path: KeyPath = ("backends", name)
        if not isinstance(value, dict):
            raise key_error(root.lines, path, f"expected a table ([backends.{name}]), got {type_name(value)}")
        table = Table(value, path, root.lines)
        kind = table.take("kind", string)
        url = table.take("url", store_url, "")
        options = {key: table.data[key] for key in table.data if key not in table.seen}
        backends[name] = BackendConfig(name=name, kind=kind, url=url, options=options)
    return backends


def _parse_worker(table: Table, index: int, backends: Mapping[str, BackendConfig]) -> WorkerConfig:
    name = table.take("name", safe_name)
    backend = table.take("backend", string, None)
    if backend is None:
        if len(backends) != 1:
            table.fail("backend", f"required when there are several backends ({', '.join(backends)})")
        backend = next(iter(backends))
    elif backend not in backends and backend not in _IMPLICIT_BACKENDS:
        known = ", ".join(backends) or "none"
        hint = did_you_mean(backend, [*backends, *_IMPLICIT_BACKENDS])
        table.fail("backend", f'no backend named "{backend}"{hint} (defined: {known})')
    middleware = tuple(
        _parse_middleware(Table(raw, (*table.path, "middleware", i), table.lines))
        for i, raw in enumerate(table.take("middleware", list_of_tables, []))
    )
    try:
        fleet_limits(middleware)
    except ValueError as exc:
        table.fail("middleware", str(exc))
    retry_attempts = next((m.max_attempts for m in middleware if isinstance(m, RetryLayer) and m.max_attempts), None)
    keep_alive = table.take("keep_alive", duration, 10.0, positive=True)
    cron, pipe_to = _parse_cron_keys(table, backend, backends)
    worker = WorkerConfig(
        index=index,
        name=name,
        backend=backend,
        queue=table.take("queue", safe_name, name),
        codec=table.take("codec", choice("json", "msgpack"), "json"),
        handler=table.take("handler", _handler, None),
        concurrency=table.take("concurrency", integer(CONCURRENCY), 1),
        poll_interval=table.take("poll_interval", duration, 1.0, positive=True),
        keep_alive=keep_alive,
        stale_after=table.take("stale_after", duration, 3 * keep_alive, positive=True),
        shutdown_timeout=table.take("shutdown_timeout", duration, 30.0),
        max_attempts=table.take("max_attempts", integer(ATTEMPTS), retry_attempts or 3),
        retention=table.take("retention", duration, 7 * 86400.0),
        middleware=middleware,
        cron=cron,
        pipe_to=pipe_to,
        **_parse_isolation(table),
    )
    if worker.stale_after <= worker.keep_alive:
        table.fail(
            "stale_after", f"must be longer than keep_alive ({worker.keep_alive:g}s), got {worker.stale_after:g}s"
        )
    table.finish()
    return worker


def _parse_cron_keys(
    table: Table, backend: str, backends: Mapping[str, BackendConfig]
) -> tuple[dict[str, Any] | None, str | None]:
    kind = backends[backend].kind if backend in backends else backend
    if kind != "cron":
        for key in (*CRON_KEYS, "pipe_to"):
            if key in table.data:
                table.fail(key, f'only for a cron worker (backend "{backend}" is {kind})')
        return None, None
    cron = {key: table.data[key] for key in CRON_KEYS if key in table.data}
    table.seen.update(CRON_KEYS)
    pipe_to = table.take("pipe_to", string, None)
    if pipe_to is not None:
        target = backends.get(pipe_to)
        if target is None:
            durable = [name for name, b in backends.items() if b.kind != "cron"]
            hint = did_you_mean(pipe_to, durable)
            table.fail("pipe_to", f'no backend named "{pipe_to}"{hint} (defined: {", ".join(durable) or "none"})')
        elif target.kind == "cron":
            table.fail("pipe_to", f'must name a durable backend, "{pipe_to}" is cron')
    return cron, pipe_to


def _parse_isolation(table: Table) -> dict[str, Any]:
    isolation: Isolation = table.take("isolation", choice("thread", "process"), "thread")
    command = isinstance(table.data.get("handler"), dict)
    if isolation != "process":
        for key in _PROCESS_KEYS:
            if key in table.data and not (key == "kill_grace" and command):
                table.fail(key, 'only with isolation = "process" (kill_grace also with a command handler)')
        return {"isolation": isolation, "kill_grace": table.take("kill_grace", duration, 5.0)}
    if command:
        table.fail("isolation", 'a command handler already runs in its own process; leave out isolation = "process"')
    return {
        "isolation": isolation,
        "max_tasks_per_child": table.take("max_tasks_per_child", integer(COUNT), None),
        "max_memory_per_child": table.take("max_memory_per_child", parse_size, None),
        "kill_grace": table.take("kill_grace", duration, 5.0),
    }


def _parse_middleware(table: Table) -> ConfiguredLayer:
    layer = LAYERS[table.take("kind", choice(*LAYERS))].from_config(table)
    table.finish()
    return layer


def _handler(value: Any) -> ImportHandler | CommandHandler:
    if isinstance(value, str):
        if not _HANDLER_PATH.match(value):
            raise ValueError(f'expected "package.module:function", got "{value}"')
        return ImportHandler(path=value)
    if isinstance(value, dict):
        extra = set(value) - {"command"}
        if extra:
            raise ValueError(f'unknown key "{sorted(extra)[0]}" (a command handler has only "command")')
        command = value.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
            raise ValueError('expected command = ["program", "arg", ...] (a non-empty array of strings)')
        return CommandHandler(command=tuple(command))
    raise ValueError(f'expected "package.module:function" or {{ command = [...] }}, got {type_name(value)}')
