"""Which event loop `apalis_cli.loops` runs on: uvloop's when installed, unless APALIS_LOOP says
asyncio; a wrong value or a missing uvloop that was asked for is one clear error."""

from __future__ import annotations

import asyncio
import sys
import warnings
from pathlib import Path

import pytest
from apalis_cli import loops
from apalis_cli.api import SyncSink
from apalis_cli.config import parse_config
from apalis_cli.errors import ConfigError

from ..services import need_module


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_apalis_loop_asyncio_runs_on_asyncios_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(loops.ENV, "asyncio")
    assert loops.run(_loop_module()).startswith("asyncio")


def test_uvloop_is_the_loop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    need_module("uvloop")
    monkeypatch.delenv(loops.ENV, raising=False)
    assert loops.run(_loop_module()).startswith("uvloop")


def test_without_uvloop_asyncios_loop_runs_unless_uvloop_was_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed: its import fails
    monkeypatch.delenv(loops.ENV, raising=False)
    assert loops.run(_loop_module()).startswith("asyncio")
    monkeypatch.setenv(loops.ENV, "uvloop")
    with pytest.raises(ConfigError, match=r"apalis-cli\[uvloop\]"):
        loops.run(_loop_module())


def test_a_wrong_apalis_loop_is_refused_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(loops.ENV, "trio")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited"
        with pytest.raises(ConfigError, match="APALIS_LOOP"):
            loops.run(_loop_module())


@pytest.mark.parametrize("chosen", ["asyncio", "uvloop"])
def test_sync_sink_pushes_on_the_chosen_loop(chosen: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if chosen == "uvloop":
        need_module("uvloop")
    monkeypatch.setenv(loops.ENV, chosen)
    source = '[backends.main]\nkind = "sqlite"\nurl = "sqlite:///jobs.db"\n\n[[workers]]\nname = "w"\nhandler = "m:f"\n'
    with SyncSink(parse_config(source, tmp_path / "apalis.toml")) as sink:
        task_id = sink.push({"n": 1})
        assert type(sink._loop).__module__.startswith(chosen)
        task = sink.wait(task_id, timeout=0)
        assert task is None  # stored, not run: no worker
