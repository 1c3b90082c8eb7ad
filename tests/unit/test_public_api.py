"""`apalis_cli.__all__` is the public API: every public name is exported, every export exists."""

from __future__ import annotations
import __future__

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import apalis_cli
import pytest


def public_names(module: ModuleType) -> set[str]:
    """What a reader of `module` would take as its API: no underscores, no submodules."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, ModuleType)
        and not isinstance(value, __future__._Feature)  # `from __future__ import annotations`
    }


def test_all_lists_every_public_name() -> None:
    missing = public_names(apalis_cli) - set(apalis_cli.__all__)
    assert not missing, f"public names not in apalis_cli.__all__: {sorted(missing)}"


def test_every_name_in_all_exists() -> None:
    absent = [name for name in apalis_cli.__all__ if not hasattr(apalis_cli, name)]
    assert not absent


def test_all_is_sorted_without_duplicates() -> None:
    names = [name for name in apalis_cli.__all__ if name != "__version__"]
    assert names == sorted(set(names))


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from apalis_cli import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(apalis_cli.__all__)


def test_what_handlers_and_producers_need_is_exported() -> None:
    assert {"Retry", "Abort", "Worker", "Task", "Status", "compose", "JsonCodec", "MsgpackCodec"} <= set(
        apalis_cli.__all__
    )
    assert apalis_cli.__version__


def test_the_command_line_starts_without_the_daemon_machinery() -> None:
    # `apalis --help` (and every command's start) should not pay for what only `run` needs.
    heavy = (
        "asyncio",
        "structlog",
        "rich",
        "apalis_cli.config",
        "apalis_cli.registry",
        "apalis_cli.worker",
        "starlette",
        "uvicorn",
        "jinja2",
    )
    code = f"import sys, apalis_cli.cli; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


# What `apalis` loads by the time it exits, written to the file named by argv[1].
_LOADED_AT_EXIT = """
import atexit, sys
report, sys.argv = sys.argv[1], ["apalis", *sys.argv[2:]]
atexit.register(lambda: open(report, "w").write(",".join(sorted(m.split(".")[0] for m in sys.modules))))
from apalis_cli.cli import main
main()
"""


def _loaded_by(tmp_path: Path, *argv: str) -> set[str]:
    report = tmp_path / "loaded.txt"
    done = subprocess.run(
        [sys.executable, "-c", _LOADED_AT_EXIT, str(report), *argv], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    return set(report.read_text().split(","))


@pytest.mark.parametrize("argv", [("--help",), ("push", "--help"), ("web", "--help")], ids=" ".join)
def test_help_loads_no_validation_library_event_loop_logging_or_terminal_ui(tmp_path: Path, argv: tuple[str]) -> None:
    # A producer pushing from a shell loop or cron pays each start: pydantic alone was ~60 ms.
    # The web board's stack (the web extra) is imported only when `apalis web` runs.
    heavy = {"pydantic", "asyncio", "structlog", "rich", "starlette", "uvicorn", "jinja2"}
    assert _loaded_by(tmp_path, *argv) & heavy == set()


def test_push_loads_no_validation_library_logging_or_terminal_ui(tmp_path: Path) -> None:
    (tmp_path / "apalis.toml").write_text(
        '[backends.main]\nkind = "sqlite"\nurl = "sqlite:///jobs.db"\n\n'
        '[[workers]]\nname = "w"\nbackend = "main"\nhandler = "json:loads"\n'
    )
    # asyncio it needs: every store's driver is asynchronous.
    assert _loaded_by(tmp_path, "push", '{"n": 1}') & {"pydantic", "structlog", "rich"} == set()


def test_an_error_line_is_made_in_one_place() -> None:
    # Every module, store and command describes an error with apalis_cli.errors.describe_error.
    modules = [importlib.import_module(info.name) for info in pkgutil.walk_packages(apalis_cli.__path__, "apalis_cli.")]
    exporters = [m.__name__ for m in modules if {"describe_error", "storable_text"} & set(getattr(m, "__all__", ()))]
    assert exporters == ["apalis_cli.errors"]
