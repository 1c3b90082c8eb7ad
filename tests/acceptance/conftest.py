"""Acceptance fixtures: the real `apalis` command as a subprocess, in a fresh directory per test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
APALIS = str(Path(sys.executable).with_name("apalis"))

HANDLERS = """
import time

def ok(args):
    return {"echo": args}

def slow(args):
    time.sleep(args.get("sleep", 1.0))
    return "slept"

def boom(args):
    raise ValueError("boom")
"""

CONFIG = """\
[backends.main]
kind = "sqlite"
url = "sqlite:///jobs.db"

[[workers]]
name = "echo"
handler = "acc_handlers:ok"
concurrency = 4
keep_alive = "1s"
poll_interval = "100ms"
"""


@dataclass(frozen=True, slots=True)
class Result:
    """What one `apalis` invocation did."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Apalis:
    """Runs `apalis` in `cwd` with `--config` pointing at the test's config file."""

    def __init__(self, cwd: Path, config: Path) -> None:
        self.cwd = cwd
        self.config = config

    def env(self) -> dict[str, str]:
        return {**os.environ, "APALIS_CONFIG": str(self.config), "COLUMNS": "200"}

    def __call__(self, *argv: str, stdin: str | None = None, timeout: float = 60) -> Result:
        done = subprocess.run(
            [APALIS, *argv],
            cwd=self.cwd,
            env=self.env(),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def start(self, *argv: str) -> subprocess.Popen[str]:
        """`apalis` running in the background (stdout/stderr piped)."""
        return subprocess.Popen(
            [APALIS, *argv],
            cwd=self.cwd,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def write_config(self, text: str) -> None:
        self.config.write_text(text)

    def inspect(self, *extra: str) -> list[dict[str, Any]]:
        result = self("inspect", "--json", "--limit", "10000", *extra)
        assert result.code == 0, result.err
        rows: list[dict[str, Any]] = result.json()
        return rows

    def statuses(self, *extra: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.inspect(*extra):
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return counts


@pytest.fixture
def apalis(tmp_path: Path) -> Apalis:
    (tmp_path / "acc_handlers.py").write_text(HANDLERS)
    config = tmp_path / "jobs.toml"
    config.write_text(CONFIG)
    return Apalis(tmp_path, config)


def lines(text: str) -> Sequence[str]:
    """Non-empty lines of `text`."""
    return [line for line in text.splitlines() if line.strip()]
