"""`apalis push` and `apalis run` on uvloop's event loop (`apalis-cli[uvloop]`): the same work done."""

from __future__ import annotations

from pathlib import Path

import pytest
from apalis_cli import loops

from ..services import need_module
from .conftest import Apalis, lines


def test_push_and_a_burst_run_on_uvloop(apalis: Apalis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    need_module("uvloop")
    monkeypatch.setenv(loops.ENV, "uvloop")
    ids = [apalis("push", f'{{"n": {n}}}').out.strip() for n in range(5)]
    assert all(ids)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(f'{{"n": {n}}}\n' for n in range(5, 200)))
    pushed = apalis("push", "--file", str(tasks))
    assert pushed.code == 0, pushed.err
    ids += lines(pushed.out)
    ran = apalis("run", "--burst", "--no-live", "--log-format", "json")
    assert ran.code == 0, ran.err
    rows = apalis.inspect()
    assert {row["id"] for row in rows} == set(ids)
    assert {row["status"] for row in rows} == {"done"}
