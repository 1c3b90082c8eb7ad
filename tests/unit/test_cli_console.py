"""The live view of `apalis run`: its counters and states, its layout at 80 columns and more, the
queue overview (depth and start latency) and the recent errors, fed by worker events."""

from __future__ import annotations

import io
import re

from apalis_cli.backend import QueueStats
from apalis_cli.cli.live import Dashboard
from apalis_cli.events import BackendUnavailable, Idle, QueuePaused, Started, Stopped, TaskFinished, WaitingForRuns
from apalis_cli.task import Status
from rich.console import Console

TASK_ID = "01a24b62f365f6d68e059033bb1e78"


def finished(
    outcome: str, error: str | None = None, *, worker: str = "w", queue: str = "q", waited: float | None = None
) -> TaskFinished:
    return TaskFinished(
        worker=worker,
        queue=queue,
        task_id=TASK_ID,
        attempt=2,
        outcome=outcome,
        duration=0.01,
        error=error,
        waited=waited,
    )


def rendered(dashboard: Dashboard, width: int = 200) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(dashboard.render())
    return console.export_text()


def as_terminal(dashboard: Dashboard, width: int) -> str:
    """What is written to a colour terminal, escape sequences of its own styles included."""
    out = io.StringIO()
    Console(width=width, file=out, force_terminal=True, color_system="truecolor").print(dashboard.render())
    return out.getvalue()


def row(text: str, name: str) -> list[str]:
    """The cells of the first line that starts with `name` (the workers come before the queues)."""
    return next(line for line in text.splitlines() if line.startswith(name + " ")).split()


def test_counts_states_and_errors() -> None:
    running = {"w": 0}
    stopping = [False]
    board = Dashboard([("w", "q")], lambda name: running[name], lambda: stopping[0])
    assert "starting" in rendered(board)
    board.on_event(Started(worker="w", queue="q", worker_id="w-1", concurrency=2))
    assert row(rendered(board), "w")[2] == "idle"
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
    assert row(text, "w")[2:7] == ["running", "2", "2", "1", "1"]
    assert "hunter2" not in text
    assert f"{TASK_ID}  w #2 will retry  ValueError: nope" in text
    assert f"{TASK_ID}  w #2 killed  redis://:***@h failed" in text
    for _ in range(3):  # a store that stays down is one line that counts, not a screenful
        board.on_event(BackendUnavailable(worker="w", queue="q", error="connection refused", retry_in=0.1))
    text = rendered(board)
    assert row(text, "w")[2] == "reconnecting"
    assert text.count("store unavailable") == 1
    assert "store unavailable (x3)  connection refused" in text
    board.on_event(Idle(worker="w", queue="q"))
    stopping[0] = True
    text = rendered(board)
    assert row(text, "w")[2] == "stopping"
    assert "stopping: finishing running tasks" in text
    board.on_event(Stopped(worker="w", queue="q"))
    assert row(rendered(board), "w")[2] == "stopped"
    board.on_event(finished("done", None))  # events of other workers or after stop are harmless
    board.on_event(Idle(worker="other", queue="q"))


def busy_board() -> Dashboard:
    """Two workers with counts that all differ, a long error, and depth for both queues."""
    running = {"thumbnails": 3, "emails-outbound": 11}
    board = Dashboard([("thumbnails", "thumbnails"), ("emails-outbound", "mail")], running.__getitem__, lambda: False)
    for name, queue in (("thumbnails", "thumbnails"), ("emails-outbound", "mail")):
        board.on_event(Started(worker=name, queue=queue, worker_id=f"{name}-1", concurrency=16))
    counts = {("thumbnails", "done"): 1234, ("thumbnails", "retry"): 56, ("thumbnails", "kill"): 7}
    counts |= {("emails-outbound", "done"): 98765, ("emails-outbound", "retry"): 432, ("emails-outbound", "kill"): 21}
    for (name, outcome), n in counts.items():
        queue = "thumbnails" if name == "thumbnails" else "mail"
        error = None if outcome == "done" else "ConnectionError: " + "the image store did not answer " * 5
        for _ in range(n):
            board.on_event(finished(outcome, error, worker=name, queue=queue, waited=0.012))
    board.set_depth(
        "thumbnails",
        QueueStats(
            queue="thumbnails",
            counts={Status.PENDING: 4321, Status.FAILED: 9, Status.RUNNING: 17, Status.DONE: 5, Status.KILLED: 0},
            scheduled=608,
        ),
    )
    board.set_depth("mail", QueueStats(queue="mail", counts=dict.fromkeys(Status, None) | {Status.PENDING: 77}))
    return board


def test_every_count_is_readable_at_80_columns() -> None:
    text = rendered(busy_board(), width=80)
    assert all(len(line) <= 80 for line in text.splitlines())
    # worker, queue, state, running, done, retried, killed, tasks/s: nothing cut short
    assert row(text, "thumbnails")[:7] == ["thumbnails", "thumbnails", "running", "3", "1234", "56", "7"]
    assert row(text, "emails-outbound")[:7] == ["emails-outbound", "mail", "running", "11", "98765", "432", "21"]
    assert re.fullmatch(r"\d+\.\d", row(text, "thumbnails")[7])
    # queue, ready (pending + failed - scheduled), scheduled, running, start p50
    queue_rows = [line.split() for line in text.splitlines() if line.split()[:1] in (["thumbnails"], ["mail"])]
    assert queue_rows[1][:4] == ["thumbnails", "3722", "608", "17"]
    assert queue_rows[2][:4] == ["mail", "77", "-", "-"]
    p50 = queue_rows[1][4]
    assert p50.endswith("ms")
    assert 11 <= float(p50[:-2]) <= 13
    # the task id of each recent error is whole, its error on the next line, cut at the edge
    assert text.count(TASK_ID) == 5
    assert "the image store did not answer" in text


def test_cancelled_runs_and_a_paused_queue_show_once_there_are_some() -> None:
    board = busy_board()
    board.on_event(finished("cancel", "changed my mind", worker="thumbnails", queue="thumbnails"))
    board.on_event(QueuePaused(worker="thumbnails", queue="thumbnails", paused=True))
    text = rendered(board, width=80)
    assert all(len(line) <= 80 for line in text.splitlines())
    # worker, queue, state, running, done, retried, killed, cancelled
    assert row(text, "emails-outbound")[:8] == ["emails-outbound", "mail", "running", "11", "98765", "432", "21", "0"]
    assert row(text, "thumbnails")[7] == "1"
    queue_rows = [line.split() for line in text.splitlines() if line.split()[:1] == ["thumbnails"]]
    assert queue_rows[1][-1] == "paused"


def test_wide_terminals_put_the_error_beside_its_task() -> None:
    board = busy_board()
    for width in (120, 200):
        text = rendered(board, width=width)
        assert all(len(line) <= width for line in text.splitlines())
        assert row(text, "thumbnails")[:4] == ["thumbnails", "thumbnails", "running", "3"]
        errors = [line for line in text.splitlines() if TASK_ID in line]
        assert len(errors) == 5
        assert all("ConnectionError: the image store" in line for line in errors)


def test_long_names_fold_and_numbers_stay_whole() -> None:
    name = "resize-the-thumbnails-of-every-uploaded-picture"
    board = Dashboard([(name, name)], lambda _: 123456, lambda: False)
    for _ in range(3):
        board.on_event(finished("done", worker=name, queue=name))
    text = rendered(board, width=60)
    assert all(len(line) <= 60 for line in text.splitlines())
    assert "123456" in text
    assert "…" not in text
    # every character of the name is there, folded over more lines
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("worker ")) + 1
    last = lines.index("", first)
    assert "".join(line.split()[0] for line in lines[first:last]) == name
    assert lines[first].split()[2:] == ["starting", "123456", "3", "0", "0", "0.0"]


def test_stored_text_cannot_drive_the_terminal() -> None:
    hostile = "[red]x[/red] \x1b[2J \x1b]0;title\x07 \r end"
    board = Dashboard([("w", "q")], lambda _: 0, lambda: False)
    board.on_event(finished("retry", "CommandFailed: " + hostile))
    for width in (80, 200):
        out = as_terminal(board, width)
        for raw in ("\x1b[2J", "\x1b]0;", "\x07", "\r"):
            assert raw not in out
        assert "[red]x[/red]" in out
        assert "\\x1b[2J" in out


def test_extra_lines_under_a_worker() -> None:
    board = Dashboard(
        [("a", "q"), ("b", "q")],
        lambda _: 0,
        lambda: False,
        details=lambda name: [f"child 4242 of {name}: running {TASK_ID}"] if name == "a" else [],
    )
    lines = rendered(board, width=80).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("a "))
    assert lines[at + 1].strip().startswith("child 4242 of a")
    assert lines[at + 2].startswith("b ")


def test_a_stop_that_waits_for_threads_says_so() -> None:
    board = Dashboard([("w", "q")], lambda name: 1, lambda: True)
    board.on_event(Started(worker="w", queue="q", worker_id="w-1", concurrency=2))
    board.on_event(WaitingForRuns(worker="w", queue="q", running=1))
    text = rendered(board)
    assert "waiting for 1 run(s) in threads, which cannot be stopped" in text
    assert "Ctrl-C again exits at once" in text
