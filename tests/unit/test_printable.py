"""Stored text is printed visibly, never obeyed: `printable`, the tables of `inspect`, `workers`
and `stats`, and console log lines."""

from __future__ import annotations

import json
import logging

import pytest
import structlog
from apalis_cli.cli import console, fail_line
from apalis_cli.events import Started, TaskFinished
from apalis_cli.logs import event_logger, setup_logging
from apalis_cli.printable import printable, printable_json

HOSTILE = "[red]x[/red] \x1b[2J \x1b]0;title\x07 \r end"
RAW = ("\x1b[2J", "\x1b]0;", "\x07", "\r")


def assert_visible(output: str, *, markup: bool = True) -> None:
    for raw in RAW:
        assert raw not in output, (raw, output)
    assert "\\x1b[2J" in output
    if markup:
        assert "[red]x[/red]" in output


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich writes as to a colour terminal (so markup, if it were read, would become styles)."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", "400")


def test_printable_escapes_what_a_terminal_would_obey() -> None:
    assert printable("café 中文 plain, [bold]") == "café 中文 plain, [bold]"
    assert printable(HOSTILE) == "[red]x[/red] \\x1b[2J \\x1b]0;title\\x07 \\r end"
    assert printable("a\nb\tc") == "a\\nb\\tc"
    assert printable("a\nb\tc", newlines=True) == "a\nb\\tc"
    # C1 controls, bidi overrides, zero-width and lone surrogates (which no encoding can write)
    assert printable("\x9b31m \u202egnp.exe \u200b caf\udce9") == "\\x9b31m \\u202egnp.exe \\u200b caf\\udce9"


def test_printable_json_reads_back_the_same() -> None:
    value = {"error": HOSTILE + "\x9b\u202e\udce9\U000e0001 café"}
    text = printable_json(value)
    assert text.isascii() is False
    assert "café" in text
    assert all(ch.isprintable() or ch == "\n" for ch in text)
    assert json.loads(text) == value
    text.encode("utf-8")  # a lone surrogate would make writing it fail


def hostile_row() -> dict[str, object]:
    return {
        "id": "01a2" + HOSTILE,
        "status": "failed",
        "attempts": 1,
        "max_attempts": 3,
        "run_at": "2026-01-01T00:00:00.000Z",
        "queue": "q" + HOSTILE,
        "priority": 0,
        "payload": HOSTILE,
        "payload_encoding": "utf-8",
        "last_error": HOSTILE + "\nsecond line",
        "result": {"out": HOSTILE},
        "lock_by": HOSTILE,
        "idempotency_key": HOSTILE,
        "created_at": "2026-01-01T00:00:00.000Z",
        "done_at": None,
        "args": {"image": HOSTILE},
    }


def test_tables_print_stored_text_visibly(terminal: None, capsys: pytest.CaptureFixture[str]) -> None:
    console.print_tasks([hostile_row()], decode=False)
    assert_visible(capsys.readouterr().out)
    console.print_tasks([hostile_row()], decode=True)
    assert_visible(capsys.readouterr().out, markup=False)  # args are JSON: markup clipped away
    console.print_task(hostile_row(), decode=True)
    out = capsys.readouterr().out
    assert_visible(out)
    assert "second line" in out  # the one-task view keeps the error's line breaks
    worker = {
        "name": HOSTILE,
        "queue": HOSTILE,
        "host": HOSTILE,
        "pid": 1,
        "started_at": "2026-01-01T00:00:00.000Z",
        "last_seen": "2026-01-01T00:00:00.000Z",
        "layers": [HOSTILE],
        "running": 0,
    }
    console.print_workers([worker])
    assert_visible(capsys.readouterr().out)
    console.print_stats([{"queue": HOSTILE, "pending": 1}])
    assert_visible(capsys.readouterr().out)
    console.note(HOSTILE)
    assert_visible(capsys.readouterr().err)


def test_console_log_lines_print_stored_text_visibly(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("console", "info")
    try:
        log = event_logger()
        name = "w\x1b[2J\x07"  # no space: structlog would print this value as it is
        log(Started(worker=name, queue="q", worker_id="id", concurrency=1))
        log(
            TaskFinished(
                worker=name, queue="q", task_id="t\x1b]0;x", attempt=1, outcome="retry", duration=0.1, error=HOSTILE
            )
        )
        logging.getLogger("driver").warning("driver says %s", HOSTILE)  # the standard library's records
        try:  # the tracing layer logs a handler's exception with its traceback
            raise ValueError(HOSTILE)
        except ValueError:
            structlog.get_logger("apalis.task").exception("task raised")
        err = capsys.readouterr().err
        assert "ValueError: [red]x[/red] \\x1b[2J" in err
        assert_visible(err, markup=False)
        assert "w\\x1b[2J\\x07" in err
        assert "[red]x[/red]" in err
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()


def test_error_lines_are_printable() -> None:
    assert fail_line(f"no task {HOSTILE}") == "apalis: error: no task [red]x[/red] \\x1b[2J \\x1b]0;title\\x07 end"
