"""`apalis init` (a commented starter config) and `apalis check` (validate, then connect)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import tomli_w
import typer

from ..errors import ApalisError, ConfigError, UsageError, describe_error
from .app import DEFAULT_CONFIG, ConfigOption, app

if TYPE_CHECKING:
    from ..config import Config, WorkerConfig

__all__ = ["check", "init", "starter_config"]


def _line(key: str, value: Any, comment: str) -> str:
    text = tomli_w.dumps({key: value}).strip()
    return f"{text:<40} # {comment}"


def starter_config() -> str:
    """The text `apalis init` writes: runnable as is on embedded SQLite, every key explained."""
    return "\n".join(
        [
            '# apalis config. Durations are strings: "250ms", "30s", "5m", "2h", "7d".',
            "# ${ENV_VAR} (or ${ENV_VAR:-default}) is substituted in every string: keep secrets out of files.",
            "",
            "# One table per store. kind: sqlite | postgres | mysql | redis | rsmq | amqp | nats | pgmq | memory",
            "[backends.main]",
            _line("kind", "sqlite", "the store class (installed through entry points)"),
            _line("url", "sqlite:///apalis.db", "relative to this file; postgresql://user:${PGPASSWORD}@host/db"),
            "",
            "# One table per worker: a queue, a handler and how to run it.",
            "[[workers]]",
            _line("name", "default", "used by --worker"),
            _line("backend", "main", "a [backends.NAME] table (optional with one backend)"),
            _line("queue", "default", "default: the worker's name"),
            _line("codec", "json", "json | msgpack"),
            _line("handler", "apalis_cli.demo:resize_image", '"module:function", or { command = ["./run.sh"] }'),
            _line("concurrency", 4, "tasks run at once by this worker (default 1)"),
            _line("poll_interval", "1s", "longest wait between polls when idle (default 1s)"),
            _line("keep_alive", "10s", "heartbeat period (default 10s)"),
            _line("stale_after", "30s", "a worker silent this long loses its tasks (default 3 x keep_alive)"),
            _line("shutdown_timeout", "30s", "on SIGTERM, running tasks get this long to finish (default 30s)"),
            _line("max_attempts", 5, "runs before a task is killed (default 3, or the retry layer's)"),
            _line("retention", "7d", "done and killed tasks are kept this long (default 7d)"),
            "# Middleware, the first listed outermost:",
            _line(
                "middleware",
                [
                    {"kind": "retry", "backoff": "exponential", "base": "1s", "max": "10m"},
                    {"kind": "timeout", "after": "30s"},
                ],
                "also rate_limit, concurrency, catch, tracing",
            ),
            "",
        ]
    )


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the config.")] = DEFAULT_CONFIG,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter config (SQLite, the demo handler)."""
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give the config file's name, e.g. {path / DEFAULT_CONFIG}")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists (use --force to overwrite it)")
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: there is no directory {path.parent}")
    try:
        path.write_text(starter_config(), encoding="utf-8")
    except OSError as exc:
        raise ApalisError(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"wrote {path}; try: apalis check --config {path}")


@app.command()
def check(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Validate the config, import handlers, connect to every backend (creating or migrating its
    schema: every store migrates idempotently when opened) and create each worker's queue where
    a broker keeps queues (AMQP, NATS, rsmq, pgmq), so other programs can send before any worker
    ran."""
    # Imported here, not at the top: `apalis --help` and `apalis init` do without them.
    import asyncio

    from ..backend import Capability
    from ..config import load_config
    from ..handlers import load_handler
    from ..registry import Registry, build_store, build_worker_store
    from .assembly import build_layers

    loaded = load_config(config)
    registry = Registry()
    stores = {name: build_store(loaded, name, registry) for name in _backend_names(loaded)}
    for worker in loaded.workers:
        if worker.cron is not None:
            build_worker_store(loaded, worker, registry)  # validates the schedule
        build_layers(loaded, worker)
        store = stores.get(worker.backend)
        if worker.limits is not None and store is not None and not store.capabilities.has(Capability.FLEET_LIMITS):
            # As `apalis run` would refuse the worker at start, with the same line.
            reason = store.capabilities.why_not(Capability.FLEET_LIMITS)
            message = f"this store cannot hold a global limit ({worker.limits}): {reason}"
            raise loaded.error((*worker.key, "middleware"), message)
        if worker.handler is not None:
            handler = load_handler(loaded, worker, concurrency=1)
            asyncio.run(_start_and_close(handler))  # with isolation = "process": imported by a child
    failures = asyncio.run(_connect(loaded, stores))
    for worker in loaded.workers:
        print(f"ok    worker {worker.name}: queue {worker.queue} on {worker.backend}")
    if failures:
        raise ApalisError(f"{failures} check{'s' if failures > 1 else ''} failed (see FAIL above)")


async def _start_and_close(handler: Any) -> None:
    try:
        await handler.start()
    finally:
        await handler.aclose()


def _backend_names(config: Config) -> list[str]:
    # Cron stores are built per worker (their schedule is the worker's); the rest are connected.
    names = [name for name, backend in config.backends.items() if backend.kind != "cron"]
    for worker in config.workers:
        if worker.backend not in names and worker.cron is None:
            names.append(worker.backend)
    return names


async def _connect(config: Config, stores: dict[str, Any]) -> int:
    from ..backend import Preparable
    from ..codec import codec_by_name
    from ..printable import printable
    from ..redact import redact

    def problem(exc: Exception) -> str:
        # A driver's message can quote the server (and the server what was stored), and pieces
        # of the password it was given.
        return printable(describe_error(exc, config.secrets))

    async def prepare(store: Any, worker: WorkerConfig) -> None:
        backend = store.backend(worker.queue, codec=codec_by_name(worker.codec), max_attempts=worker.max_attempts)
        if isinstance(backend, Preparable):
            await backend.prepare()

    failures = 0
    for name, store in stores.items():
        backend = config.backends.get(name)
        shown = redact(f"backend {name} ({store.kind}) {backend.url if backend else ''}".rstrip(), config.secrets)
        try:
            await store.open()
        except (ConfigError, UsageError):
            raise
        except Exception as exc:
            failures += 1
            print(f"FAIL  {shown}: {problem(exc)}")
            continue
        try:
            # The queues of its workers (and of cron workers piping into it).
            for worker in config.workers:
                if (worker.backend == name and worker.cron is None) or worker.pipe_to == name:
                    try:
                        await prepare(store, worker)
                    except ConfigError as exc:  # a queue name the store refuses: at the worker's line
                        key = (*worker.key, *exc.key.split(".")) if exc.key else worker.key
                        raise exc if exc.where else config.error(key, exc.message) from None
                    except UsageError:
                        raise
                    except Exception as exc:
                        failures += 1
                        print(f"FAIL  {shown}: queue {worker.queue}: {problem(exc)}")
        finally:
            try:
                await store.close()
            except Exception as exc:
                print(f"warn  {shown}: opened, but closing failed: {problem(exc)}")
        print(f"ok    {shown}")
    return failures
