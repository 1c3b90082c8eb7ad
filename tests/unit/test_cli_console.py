"""The live view's counters and states, fed by worker events."""

from __future__ import annotations

from apalis_cli.cli.console import Dashboard
from apalis_cli.events import BackendUnavailable, Idle, Started, Stopped, TaskFinished
from rich.console import Console


def finished(outcome: str, error: str | None = None) -> TaskFinished:
    return TaskFinished(worker="w", queue="q", task_id="T", attempt=1, outcome=outcome, duration=0.01, error=error)


def rendered(dashboard: Dashboard) -> str:
    console = Console(width=200, record=True)
    console.print(dashboard.render())
    return console.export_text()


def test_counts_states_and_last_error() -> None:
    running = {"w": 0}
    stopping = [False]
    board = Dashboard([("w", "q")], lambda name: running[name], lambda: stopping[0])
    assert "starting" in rendered(board)
    board.on_event(Started(worker="w", queue="q", worker_id="w-1", concurrency=2))
    assert " idle " in rendered(board)
    running["w"] = 2
    for event in (
        finished("done"),
        finished("done"),
        finished("retry", "ValueError: nope"),
        finished("kill", "redis://:hunter2@h failed"),
    ):
        board.on_event(event)
    view = board.views["w"]
    assert (view.done, view.retried, view.killed, view.failed) == (2, 1, 1, 2)
    text = rendered(board)
    assert " running " in text
    assert "hunter2" not in text
    board.on_event(BackendUnavailable(worker="w", queue="q", error="connection refused", retry_in=0.1))
    assert "reconnecting" in rendered(board)
    board.on_event(Idle(worker="w", queue="q"))
    stopping[0] = True
    assert "stopping" in rendered(board)
    board.on_event(Stopped(worker="w", queue="q"))
    assert " stopped " in rendered(board)
    board.on_event(finished("done", None))  # events of other workers or after stop are harmless
    board.on_event(Idle(worker="other", queue="q"))
