"""The daemon's log lines: drivers' standard-library records included, secrets masked."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from apalis_cli.logs import setup_logging
from apalis_cli.redact import secrets_in


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level
    structlog.reset_defaults()


@pytest.mark.usefixtures("restored_logging")
@pytest.mark.parametrize("fmt", ["json", "console"])
def test_every_line_is_masked_with_the_configs_secrets(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://u:p@S3cr3tPw@127.0.0.1/db?sslpassword=Ssl5ecret"
    setup_logging("json" if fmt == "json" else "console", "info", secrets=secrets_in(url))
    # psycopg's pool logs libpq's message, which names the piece of the password it took for a host
    logging.getLogger("psycopg.pool").warning("error connecting: failed to resolve host 'S3cr3tPw@127.0.0.1'")
    log = structlog.get_logger("apalis")
    log.warning("cannot open the backend, retrying", error=f"cannot open {url}")
    try:
        raise ConnectionError(f"lost {url}")
    except ConnectionError:
        log.exception("task raised")
    err = capsys.readouterr().err
    assert "S3cr3tPw" not in err
    assert "Ssl5ecret" not in err
    assert "'***@127.0.0.1'" in err
    assert "ConnectionError: lost postgresql://u:***@127.0.0.1/db?sslpassword=***" in err  # the traceback too
    if fmt == "json":
        assert [json.loads(line)["level"] for line in err.splitlines() if line.startswith("{")] == ["warning"] * 2 + [
            "error"
        ]


@pytest.mark.usefixtures("restored_logging")
def test_a_traceback_on_the_console_is_masked_and_cannot_drive_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("console", "info", secrets=())
    try:
        raise ValueError("\x1b[2Jcleared, and redis://:S3cr3tPw@h:6379 leaked")
    except ValueError:
        structlog.get_logger("apalis").exception("task raised")
    err = capsys.readouterr().err
    assert "\x1b[2J" not in err
    assert "\\x1b[2Jcleared" in err
    assert "redis://:***@h:6379" in err
    assert "Traceback (most recent call last):\n" in err  # its lines stay lines


@pytest.mark.usefixtures("restored_logging")
def test_a_cancel_and_a_pause_are_logged(capsys: pytest.CaptureFixture[str]) -> None:
    from apalis_cli.events import CancelRequested, QueuePaused, TaskFinished
    from apalis_cli.logs import event_logger

    setup_logging("json", "info", secrets=())
    log = event_logger()
    log(CancelRequested(worker="w", queue="q", task_id="t1", reason="changed my mind"))
    log(
        TaskFinished(
            worker="w", queue="q", task_id="t1", attempt=1, outcome="cancel", duration=0.1, error="changed my mind"
        )
    )
    log(QueuePaused(worker="w", queue="q", paused=True))
    log(QueuePaused(worker="w", queue="q", paused=False))
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [(line["event"], line["level"]) for line in lines] == [
        ("cancel requested, stopping the run", "info"),
        ("task cancelled", "warning"),
        ("queue paused: taking no tasks", "warning"),
        ("queue resumed", "info"),
    ]
    assert lines[1]["reason"] == "changed my mind"
    assert lines[1]["task_id"] == "t1"
