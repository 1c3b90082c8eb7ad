"""The registry: entry points by kind, store validation errors with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest
from apalis_cli.config import parse_config
from apalis_cli.errors import ConfigError
from apalis_cli.memory import MemoryStore
from apalis_cli.registry import Registry, build_store


def test_memory_is_registered() -> None:
    registry = Registry()
    assert "memory" in registry.kinds
    assert registry.store_class("memory") is MemoryStore


def test_unknown_kind_lists_known_kinds() -> None:
    config = parse_config('[backends.main]\nkind = "carrier-pigeon"\n', Path("c.toml"))
    with pytest.raises(ConfigError) as info:
        build_store(config, "main")
    message = str(info.value)
    assert message.startswith('c.toml:2: backends.main.kind: unknown backend kind "carrier-pigeon" (known: ')
    assert "memory" in message


def test_store_option_errors_point_at_their_line() -> None:
    config = parse_config('[backends.main]\nkind = "memory"\n\nbogus = 1\n', Path("c.toml"))
    with pytest.raises(ConfigError, match=r"^c\.toml:4: backends\.main\.bogus: unknown key$"):
        build_store(config, "main")


def test_implicit_memory_backend() -> None:
    config = parse_config('[[workers]]\nname = "w"\nbackend = "memory"\n', Path("c.toml"))
    assert isinstance(build_store(config, config.workers[0].backend), MemoryStore)


def test_cron_schedule_errors_point_at_the_worker() -> None:
    from apalis_cli.registry import build_worker_store

    source = '[[workers]]\nname = "tick"\nbackend = "cron"\nschedule = "every tuesday"\n'
    config = parse_config(source, Path("c.toml"))
    with pytest.raises(ConfigError, match=r"^c\.toml:4: workers\[0\]\.schedule: "):
        build_worker_store(config, config.workers[0])


def test_a_missing_driver_names_the_extra() -> None:
    from importlib.metadata import EntryPoint

    from apalis_cli.errors import MissingExtra
    from apalis_cli.registry import ENTRY_POINT_GROUP

    registry = Registry()
    registry._points["ghost"] = EntryPoint(name="ghost", value="apalis_ghost_driverless:Store", group=ENTRY_POINT_GROUP)
    with pytest.raises(MissingExtra, match=r"^backend \"ghost\" needs the extra: pip install 'apalis-cli\[ghost\]'"):
        registry.store_class("ghost")


def test_only_cron_feeds_another_store_and_says_so_by_protocol() -> None:
    """A cron worker with pipe_to is assembled through the checked `PipeSource` protocol, not a
    method looked up by name: the registered kinds that feed other stores' queues are exactly cron."""
    from apalis_cli.backend import PipeSource

    registry = Registry()
    feeding = {kind for kind in registry.kinds if issubclass(registry.store_class(kind), PipeSource)}
    assert feeding == {"cron"}
