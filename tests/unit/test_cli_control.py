"""`apalis cancel`, `pause`, `resume`, `push --wait` and the bulk verbs, in-process on one memory
store that every invocation of the test shares (the acceptance tests run them as subprocesses
on the stores that keep state across processes)."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path

import pytest
from apalis_cli.backend import Capabilities, Capability
from apalis_cli.cli import _run
from apalis_cli.codec import JsonCodec
from apalis_cli.memory import MemoryQueue, MemoryStore
from apalis_cli.task import Status

CONFIG = """\
[backends.mem]
kind = "memory"

[[workers]]
name = "emails"
backend = "mem"
queue = "emails"
handler = "apalis_cli.demo:resize_image"

[[workers]]
name = "reports"
backend = "mem"
queue = "reports"
handler = "apalis_cli.demo:resize_image"
"""


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> MemoryStore:
    """One memory store for every `apalis` call of the test, as a server would be."""
    store = MemoryStore()
    monkeypatch.setattr(MemoryStore, "from_spec", classmethod(lambda cls, spec: store))
    return store


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.toml"
    path.write_text(CONFIG)
    return path


def queue(store: MemoryStore, name: str = "emails") -> MemoryQueue:
    return store.backend(name, codec=JsonCodec(), max_attempts=3)


def apalis(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    code = _run([*argv, "--config", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


def status(store: MemoryStore, task_id: str, name: str = "emails") -> Status:
    task = asyncio.run(queue(store, name).get(task_id))
    assert task is not None
    return task.ctx.status


def push(store: MemoryStore, n: int = 1, name: str = "emails") -> list[str]:
    return [asyncio.run(queue(store, name).push({"n": i})) for i in range(n)]


def kill_all(store: MemoryStore, ids: list[str], reason: str = "ValueError: boom", name: str = "emails") -> None:
    for task_id in ids:
        assert asyncio.run(queue(store, name).kill(task_id, reason))


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_a_pending_task(capsys: pytest.CaptureFixture[str], shared: MemoryStore, config: Path) -> None:
    (task_id,) = push(shared)
    code, out, err = apalis(capsys, config, "cancel", task_id, "--worker", "emails", "--reason", "wrong customer")
    assert (code, out, err) == (0, f"cancelled {task_id}\n", "")
    task = asyncio.run(queue(shared).get(task_id))
    assert task is not None
    assert (task.ctx.status, task.ctx.last_error) == (Status.CANCELLED, "wrong customer")


def test_cancel_of_an_ended_or_unknown_task_fails(
    capsys: pytest.CaptureFixture[str], shared: MemoryStore, config: Path
) -> None:
    (task_id,) = push(shared)
    assert apalis(capsys, config, "cancel", task_id, "-w", "emails")[0] == 0
    code, out, err = apalis(capsys, config, "cancel", task_id, "-w", "emails")
    assert (code, out) == (1, "")
    assert err == f"apalis: error: cannot cancel task {task_id}: it is cancelled\n"
    code, _, err = apalis(capsys, config, "cancel", "NOPE", "-w", "emails")
    assert code == 1
    assert err.startswith('apalis: error: no task NOPE in queue "emails"')


def test_a_store_without_the_capability_says_why(
    capsys: pytest.CaptureFixture[str], shared: MemoryStore, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lacking = Capabilities({Capability.CANCEL: "no cancel here", Capability.PAUSE: "no pause here"})
    monkeypatch.setattr(MemoryStore, "capabilities", lacking)
    monkeypatch.setattr(MemoryQueue, "capabilities", lacking, raising=False)
    (task_id,) = push(shared)
    code, out, err = apalis(capsys, config, "cancel", task_id, "-w", "emails")
    assert (code, out) == (2, "")
    assert err == 'apalis: error: queue "emails" on backend "mem" (memory) cannot cancel tasks: no cancel here\n'
    code, out, err = apalis(capsys, config, "pause", "emails")
    assert (code, out) == (2, "")
    assert err.endswith("cannot be paused: no pause here\n")
    assert err.count("\n") == 1


# -- pause / resume --------------------------------------------------------------------------


def test_pause_and_resume_a_queue(capsys: pytest.CaptureFixture[str], shared: MemoryStore, config: Path) -> None:
    code, out, _ = apalis(capsys, config, "pause", "emails")
    assert (code, out) == (0, 'paused queue "emails" on backend "mem" (memory)\n')
    assert asyncio.run(queue(shared).paused())
    assert not asyncio.run(queue(shared, "reports").paused())
    code, out, _ = apalis(capsys, config, "pause", "emails")
    assert (code, out) == (0, 'queue "emails" on backend "mem" (memory) was already paused\n')
    rows = json.loads(apalis(capsys, config, "stats", "--json")[1])
    assert {row["queue"]: row["paused"] for row in rows} == {"emails": True, "reports": False}
    code, out, _ = apalis(capsys, config, "resume", "emails")
    assert (code, out) == (0, 'resumed queue "emails" on backend "mem" (memory)\n')
    assert not asyncio.run(queue(shared).paused())


def test_pause_all(capsys: pytest.CaptureFixture[str], shared: MemoryStore, config: Path) -> None:
    code, out, _ = apalis(capsys, config, "pause", "--all")
    assert code == 0
    assert out.count("paused queue") == 2
    assert asyncio.run(queue(shared).paused())
    assert asyncio.run(queue(shared, "reports").paused())
    code, out, _ = apalis(capsys, config, "resume", "--all")
    assert code == 0
    assert not asyncio.run(queue(shared, "reports").paused())


def test_pause_needs_a_queue(capsys: pytest.CaptureFixture[str], shared: MemoryStore, config: Path) -> None:
    code, _, err = apalis(capsys, config, "pause")
    assert (code, err) == (2, "apalis: error: say which queue to pause: apalis pause QUEUE (or --all)\n")
    code, _, err = apalis(capsys, config, "pause", "emails", "--all")
    assert code == 2
    assert "not several" in err


def test_stats_table_shows_paused_and_cancelled(
    capsys: pytest.CaptureFixture[str], shared: MemoryStore, config: Path
) -> None:
    (task_id,) = push(shared)
    apalis(capsys, config, "cancel", task_id, "-w", "emails")
    apalis(capsys, config, "pause", "reports")
    code, out, _ = apalis(capsys, config, "stats")
    assert code == 0
    rows = [line for line in out.splitlines() if "│" in line or "┃" in line]
    header, emails, reports = rows[0], *(r for r in rows if "emails" in r or "reports" in r)
    assert "cancelled" in header, out
    assert "state" in header, out
    assert "1" in emails, out
    assert "paused" in reports, out


# -- bulk ------------------------------------------------------------------------------------


def test_bulk_retry_by_filter(capsys: pytest.CaptureFixture[str], shared: MemoryStore, config: Path) -> None:
    boom = push(shared, 3)
    other = push(shared, 2)
    kill_all(shared, boom, "ValueError: boom")
    kill_all(shared, other, "KeyError: nope")
    args = ("retry", "--queue", "emails", "--error-contains", "BOOM")
    code, out, _ = apalis(capsys, config, *args, "--dry-run")
    assert (code, out) == (0, 'would retry 3 tasks in queue "emails" on backend "mem" (memory)\n')
    assert {status(shared, t) for t in boom} == {Status.KILLED}
    code, out, _ = apalis(capsys, config, *args, "--yes")
    assert (code, out) == (0, 'retried 3 tasks in queue "emails" on backend "mem" (memory)\n')
    assert {status(shared, t) for t in boom} == {Status.PENDING}
    assert {status(shared, t) for t in other} == {Status.KILLED}


def test_bulk_without_a_terminal_needs_yes(
    capsys: pytest.CaptureFixture[str], shared: MemoryStore, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = push(shared, 2)
    kill_all(shared, ids)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # not a terminal, whatever it says
    code, out, err = apalis(capsys, config, "retry", "--status", "killed")
    assert (code, out) == (2, "")
    assert err == "apalis: error: retry by filter asks for confirmation: add --yes (or --dry-run to count)\n"
    assert {status(shared, t) for t in ids} == {Status.KILLED}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answer", "changed"), [("y\n", True), ("\n", False), ("no\n", False)])
def test_bulk_asks_first_in_a_terminal(
    capsys: pytest.CaptureFixture[str],
    shared: MemoryStore,
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    changed: bool,
) -> None:
    emails = push(shared, 2)
    reports = push(shared, 1, "reports")
    monkeypatch.setattr(sys, "stdin", _Terminal(answer))
    code, out, err = apalis(capsys, config, "cancel", "--status", "pending")
    assert err.startswith(
        'cancel 3 tasks (pending): 2 in queue "emails" on backend "mem" (memory); '
        '1 in queue "reports" on backend "mem" (memory)? [y/N] '
    )
    if changed:
        assert code == 0
        assert out.splitlines() == [
            'cancelled 2 tasks in queue "emails" on backend "mem" (memory)',
            'cancelled 1 task in queue "reports" on backend "mem" (memory)',
        ]
        assert {status(shared, t) for t in emails} == {Status.CANCELLED}
        assert status(shared, reports[0], "reports") is Status.CANCELLED
    else:
        assert (code, out) == (1, "")
        assert err.endswith("apalis: nothing changed\n")
        assert {status(shared, t) for t in emails} == {Status.PENDING}


def test_bulk_limit_is_shared_among_queues(
    capsys: pytest.CaptureFixture[str], shared: MemoryStore, config: Path
) -> None:
    ids = push(shared, 3) + push(shared, 3, "reports")
    code, out, _ = apalis(capsys, config, "kill", "--status", "pending", "--limit", "4", "--yes")
    assert code == 0, out
    killed = [t for t in ids[:3] if status(shared, t) is Status.KILLED]
    killed += [t for t in ids[3:] if status(shared, t, "reports") is Status.KILLED]
    assert len(killed) == 4


def test_bulk_purge_and_plain_purge(capsys: pytest.CaptureFixture[str], shared: MemoryStore, config: Path) -> None:
    ids = push(shared, 4)
    kill_all(shared, ids[:2], "ValueError: boom")
    kill_all(shared, ids[2:], "KeyError: nope")
    code, out, _ = apalis(capsys, config, "purge", "-w", "emails", "--error-contains", "keyerror", "--yes")
    assert (code, out) == (0, 'purged 2 tasks in queue "emails" on backend "mem" (memory)\n')
    # The retention chore of before: one status, no question asked.
    code, out, _ = apalis(capsys, config, "purge", "-w", "emails", "--status", "killed")
    assert (code, out) == (0, "purged 2 killed tasks\n")
    assert asyncio.run(queue(shared).get(ids[0])) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["retry"], "apalis: error: say which tasks to retry: a task id, or a filter"),
        (["retry", "T1", "--status", "killed"], "apalis: error: give a task id or a filter"),
        (["retry", "--status", "pending", "--yes"], "apalis: error: --status: retry cannot change pending tasks"),
        (["kill", "--status", "done", "--yes"], "apalis: error: --status: kill cannot change done tasks"),
        (["cancel", "--since", "yesterday", "--yes"], "apalis: error: --since: expected an ISO 8601 time such as"),
        (["cancel", "--since", "1h", "--until", "2h", "--yes"], "apalis: error: --since must come before --until"),
        (["cancel", "--limit", "0", "--yes"], "apalis: error: --limit: must be >= 1"),
        (["retry", "--status", "killed", "--reason", "x"], "apalis: error: --reason: retry keeps no reason"),
        (["purge", "--status", "done", "--reason", "x"], "apalis: error: --reason: purge keeps no reason"),
        (["cancel", "--status", "pending", "--reason", " "], "apalis: error: --reason must not be empty"),
        (["kill", "--status", "pending", "--reason", ""], "apalis: error: --reason must not be empty"),
        (["purge", "--older-than", "1d", "--until", "2d", "--yes"], "apalis: error: give --older-than or --until"),
        (["push", "{}", "--timeout", "3s"], "apalis: error: --timeout goes with --wait"),
        (["push", "--wait", "-"], "apalis: error: --wait waits for one task"),
        (["push", "{}", "--wait", "--timeout", "soon"], "apalis: error: --timeout: expected a duration"),
    ],
)
def test_bad_usage_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str],
    shared: MemoryStore,
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"[1]\n[2]\n")))
    code, out, err = apalis(capsys, config, *argv, *(["-w", "emails"] if argv[0] == "push" else []))
    assert (code, out) == (2, "")
    assert err.startswith(message), err
    assert err.count("\n") == 1


# -- push --wait -----------------------------------------------------------------------------


def test_push_wait_times_out_with_124(capsys: pytest.CaptureFixture[str], shared: MemoryStore, config: Path) -> None:
    code, out, err = apalis(capsys, config, "push", "{}", "-w", "emails", "--wait", "--timeout", "200ms")
    assert (code, out) == (124, "")
    assert err.startswith("apalis: task ")
    assert err.endswith("had not ended after 200ms; it goes on\n")
    (task,) = asyncio.run(queue(shared).list_tasks(None, 10))
    assert task.ctx.status is Status.PENDING


def test_push_wait_refuses_before_pushing_where_the_store_cannot_wait(
    capsys: pytest.CaptureFixture[str], shared: MemoryStore, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lacking = Capabilities({Capability.WAIT: "no waiting here"})
    monkeypatch.setattr(MemoryStore, "capabilities", lacking)
    monkeypatch.setattr(MemoryQueue, "capabilities", lacking, raising=False)
    code, out, err = apalis(capsys, config, "push", "{}", "-w", "emails", "--wait")
    assert (code, out) == (2, "")
    assert err == 'apalis: error: queue "emails" on backend "mem" (memory) cannot wait for a task: no waiting here\n'
    assert asyncio.run(queue(shared).list_tasks(None, 10)) == []


def test_a_task_is_found_in_any_queue_without_worker(
    capsys: pytest.CaptureFixture[str], shared: MemoryStore, config: Path
) -> None:
    (task_id,) = push(shared, 1, "reports")
    code, out, _ = apalis(capsys, config, "cancel", task_id)
    assert (code, out) == (0, f"cancelled {task_id}\n")
    assert status(shared, task_id, "reports") is Status.CANCELLED
    code, out, _ = apalis(capsys, config, "retry", task_id)
    assert (code, out) == (0, f"retried {task_id}\n")
    assert status(shared, task_id, "reports") is Status.PENDING
    code, out, err = apalis(capsys, config, "kill", "NOPE")
    assert (code, out) == (1, "")
    assert err == f"apalis: error: no task NOPE in any queue of {config} (or name its queue with --worker)\n"
