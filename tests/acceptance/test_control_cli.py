"""The control plane from the shell, against a real daemon: `apalis cancel` stops a running
task, `apalis pause` holds a queue that a running daemon obeys, `apalis push --wait` answers with
the result or the error (and 124 on timeout), and the bulk verbs act by filter.

Each test runs on every durable store that declares the capability it needs (memory keeps no
state across processes); a store that lacks it is skipped with its reason, and checked to say
that reason in one line, exit 2.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apalis_cli.backend import Capability
from apalis_cli.registry import Registry

from .chaos import DURABLE, Backend, make_backend, stop, wait_for
from .conftest import Apalis

HANDLERS = """
import asyncio
import os


async def slow(args):
    # Marks its start, then sleeps: a cancel must stop it before it writes "finished".
    open(f"started-{args['n']}", "w").close()
    await asyncio.sleep(args.get("sleep", 30))
    open(f"finished-{args['n']}", "w").close()
    return {"slept": args.get("sleep", 30)}


def ok(args):
    if "n" in args:
        open(f"ran-{args['n']}", "w").close()
    return {"echo": args}


def boom(args):
    raise ValueError(f"boom {args.get('n')}")
"""

RUN = ("run", "--no-live", "--log-format", "json", "--log-level", "warning")


def _table(queue: str, name: str, handler: str, max_attempts: int = 3) -> str:
    return (
        "[[workers]]\n"
        f'name = "{name}"\n'
        f'queue = "{queue}"\n'
        f'handler = "ctl_handlers:{handler}"\n'
        "concurrency = 4\n"
        'keep_alive = "500ms"\n'
        'poll_interval = "100ms"\n'
        'shutdown_timeout = "5s"\n'
        f"max_attempts = {max_attempts}\n"
    )


def lacking(kind: str, capability: Capability) -> str | None:
    """Why the store `kind` lacks `capability` (None: it has it), as it declares."""
    return Registry().store_class(kind).capabilities.why_not(capability)


@pytest.fixture(params=DURABLE)
def backend(request: pytest.FixtureRequest, apalis: Apalis, tmp_path: Path) -> Iterator[Backend]:
    made = make_backend(request.param, tmp_path)
    (apalis.cwd / "ctl_handlers.py").write_text(HANDLERS)
    apalis.write_config(
        made.table
        + "\n"
        + _table(made.queue, "slow", "slow")
        + "\n"
        + _table(made.queue + "_ok", "ok", "ok")
        + "\n"
        + _table(made.queue + "_boom", "boom", "boom", max_attempts=1)
    )
    try:
        yield made
    finally:
        made.cleanup()


def needs(apalis: Apalis, backend: Backend, capability: Capability, argv: list[str]) -> None:
    """Skip a store that lacks `capability`, once it has said so as the CLI must: one line, exit 2."""
    why = lacking(backend.kind, capability)
    if why is None:
        return
    result = apalis(*argv)
    assert result.code == 2, (result.code, result.out, result.err)
    assert result.err.count("\n") == 1, result.err
    assert why in result.err, result.err
    pytest.skip(f"{backend.kind} lacks {capability.value}: {why}")


def row(apalis: Apalis, worker: str, task_id: str) -> dict[str, object]:
    (found,) = apalis.inspect("--worker", worker, "--id", task_id)
    return found


def status(apalis: Apalis, worker: str, task_id: str) -> object:
    return row(apalis, worker, task_id)["status"]


def ended(apalis: Apalis, backend: Backend, worker: str, task_id: str, as_status: str) -> bool:
    """True once the task shows `as_status`, or, in a store that forgets what has ended (rsmq
    keeps no done or cancelled message: no full INSPECT), once it is gone."""
    result = apalis("inspect", "--json", "--worker", worker, "--id", task_id)
    if result.code != 0:
        assert lacking(backend.kind, Capability.INSPECT), result.err
        assert "no task" in result.err, result.err
        return True
    (found,) = result.json()
    return bool(found["status"] == as_status)


def ran(apalis: Apalis, marker: str) -> bool:
    return (apalis.cwd / marker).exists()


def push(apalis: Apalis, worker: str, value: object, *extra: str) -> str:
    result = apalis("push", "--worker", worker, json.dumps(value), *extra)
    assert result.code == 0, result.err
    return result.out.strip()


def test_cancel_stops_a_running_task(apalis: Apalis, backend: Backend) -> None:
    needs(apalis, backend, Capability.CANCEL, ["cancel", "-w", "slow", "NOPE"])
    task_id = push(apalis, "slow", {"n": 1})
    daemon = apalis.start(*RUN, "--worker", "slow")
    try:
        wait_for("the task started", (apalis.cwd / "started-1").exists, timeout=30, daemons=[daemon])
        result = apalis("cancel", "-w", "slow", task_id, "--reason", "wrong customer")
        assert result.code == 0, result.err
        assert result.out == f"cancelling {task_id}: it is running, its worker was told to stop it\n"
        cancelled = lambda: ended(apalis, backend, "slow", task_id, "cancelled")  # noqa: E731
        wait_for("the task ended", cancelled, timeout=15, daemons=[daemon])
        assert not ran(apalis, "finished-1")
        if lacking(backend.kind, Capability.INSPECT):
            return  # the store forgot the task: nothing left to read or cancel again
        assert row(apalis, "slow", task_id)["last_error"] == "wrong customer"
        again = apalis("cancel", "-w", "slow", task_id)
        assert (again.code, again.out, again.err) == (
            1,
            "",
            f"apalis: error: cannot cancel task {task_id}: it is cancelled\n",
        )
    finally:
        stop([daemon])


def test_cancel_of_a_pending_task_means_it_never_starts(apalis: Apalis, backend: Backend) -> None:
    needs(apalis, backend, Capability.CANCEL, ["cancel", "-w", "slow", "NOPE"])
    task_id = push(apalis, "slow", {"n": 2, "sleep": 0})
    result = apalis("cancel", "-w", "slow", task_id)
    assert (result.code, result.out) == (0, f"cancelled {task_id}\n"), result.err
    later = push(apalis, "slow", {"n": 3, "sleep": 0})
    assert apalis(*RUN, "--worker", "slow", "--burst").code == 0
    assert ran(apalis, "finished-3")
    assert ended(apalis, backend, "slow", later, "done")
    assert not ran(apalis, "started-2")
    assert ended(apalis, backend, "slow", task_id, "cancelled")
    if not lacking(backend.kind, Capability.INSPECT):
        stats = {r["queue"]: r for r in apalis("stats", "--json").json()}
        assert stats[backend.queue]["cancelled"] == 1


def test_a_running_daemon_obeys_pause_and_resume(apalis: Apalis, backend: Backend) -> None:
    needs(apalis, backend, Capability.PAUSE, ["pause", "-w", "ok"])
    queue = backend.queue + "_ok"
    daemon = apalis.start(*RUN, "--worker", "ok")
    try:
        push(apalis, "ok", {"n": 1})
        wait_for("a task ran", lambda: ran(apalis, "ran-1"), timeout=30, daemons=[daemon])
        paused = apalis("pause", queue)
        assert (paused.code, paused.out) == (0, f'paused queue "{queue}" on backend "main" ({backend.kind})\n')
        held = push(apalis, "ok", {"n": 2})  # pushes are still taken
        stats = {r["queue"]: r for r in apalis("stats", "--json").json()}
        assert stats[queue]["paused"] is True
        assert stats[backend.queue]["paused"] is False
        inspected = apalis("inspect", "--worker", "ok")
        # A store that cannot list its waiting tasks (amqp) refuses the inspect, in one line.
        listed = inspected.code == 0 or not lacking(backend.kind, Capability.INSPECT)
        if listed:
            assert "is paused" in inspected.err
        time.sleep(1.5)  # fifteen poll intervals: a daemon that ignored the pause would have run it
        assert not ran(apalis, "ran-2")
        if listed:
            assert status(apalis, "ok", held) == "pending"
        resumed = apalis("resume", queue)
        assert (resumed.code, resumed.out) == (0, f'resumed queue "{queue}" on backend "main" ({backend.kind})\n')
        wait_for("the held task ran", lambda: ran(apalis, "ran-2"), timeout=30, daemons=[daemon])
        wait_for("its end to be written", lambda: ended(apalis, backend, "ok", held, "done"), timeout=30)
    finally:
        stop([daemon])


def test_push_wait(apalis: Apalis, backend: Backend) -> None:
    needs(apalis, backend, Capability.WAIT, ["push", "-w", "ok", "--wait", "{}"])
    daemons = [apalis.start(*RUN, "--worker", "ok"), apalis.start(*RUN, "--worker", "boom")]
    try:
        done = apalis("push", "-w", "ok", "--wait", "--timeout", "30s", '{"x": "é"}')
        assert (done.code, done.err) == (0, "")
        assert json.loads(done.out) == {"echo": {"x": "é"}}

        failed = apalis("push", "-w", "boom", "--wait", "--timeout", "30s", '{"n": 7}')
        assert (failed.code, failed.out) == (1, "")
        assert failed.err.startswith("apalis: task ")
        assert failed.err.endswith(" ended killed: ValueError: boom 7 (attempt 1 of 1, giving up)\n")
    finally:
        stop(daemons)


def test_push_wait_timeout_leaves_the_task_running(apalis: Apalis, backend: Backend) -> None:
    needs(apalis, backend, Capability.WAIT, ["push", "-w", "ok", "--wait", "{}"])
    daemon = apalis.start(*RUN, "--worker", "slow")
    try:
        started = time.monotonic()
        late = apalis("push", "-w", "slow", "--wait", "--timeout", "1s", '{"n": 4, "sleep": 2}')
        assert time.monotonic() - started < 10
        assert (late.code, late.out) == (124, "")
        task_id = late.err.split()[2]
        assert late.err == f"apalis: task {task_id} had not ended after 1s; it goes on\n"
        wait_for("the task ran to its end", lambda: ran(apalis, "finished-4"), timeout=30, daemons=[daemon])
        wait_for("its end to be written", lambda: ended(apalis, backend, "slow", task_id, "done"), timeout=30)
    finally:
        stop([daemon])


def test_push_wait_on_a_cancelled_task(apalis: Apalis, backend: Backend) -> None:
    needs(apalis, backend, Capability.WAIT, ["push", "-w", "ok", "--wait", "{}"])
    if lacking(backend.kind, Capability.CANCEL):
        pytest.skip(f"{backend.kind} lacks cancel")
    daemon = apalis.start(*RUN, "--worker", "slow")
    waiting: subprocess.Popen[str] | None = None
    try:
        waiting = apalis.start("push", "-w", "slow", "--wait", '{"n": 5}')
        wait_for("the task started", (apalis.cwd / "started-5").exists, timeout=30, daemons=[daemon])
        (task,) = apalis.inspect("--worker", "slow", "--status", "running")
        assert apalis("cancel", "-w", "slow", str(task["id"]), "--reason", "enough").code == 0
        out, err = waiting.communicate(timeout=30)
        assert (waiting.returncode, out) == (1, "")
        assert err == f"apalis: task {task['id']} ended cancelled: enough\n"
    finally:
        if waiting is not None and waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
        stop([daemon])


def test_an_operator_kills_retries_and_purges_a_task_by_id(apalis: Apalis, backend: Backend) -> None:
    needs(apalis, backend, Capability.ADMIN, ["kill", "-w", "ok", "NOPE"])
    task_id = push(apalis, "ok", {"n": "held"}, "--delay", "1h")
    killed = apalis("kill", "-w", "ok", task_id, "--reason", "operator says no")
    assert (killed.code, killed.out, killed.err) == (0, f"killed {task_id}\n", "")
    assert status(apalis, "ok", task_id) == "killed"
    retried = apalis("retry", "-w", "ok", task_id)
    assert (retried.code, retried.out, retried.err) == (0, f"retried {task_id}\n", "")
    daemon = apalis.start(*RUN, "--worker", "ok")
    try:
        wait_for("the retried task to run", lambda: ran(apalis, "ran-held"), timeout=30, daemons=[daemon])
    finally:
        stop([daemon])
    if lacking(backend.kind, Capability.BULK):
        return  # purge by status is a bulk action (NATS says why it has none)
    doomed = push(apalis, "ok", {"n": "doomed"}, "--delay", "1h")
    assert apalis("kill", "-w", "ok", doomed).code == 0
    purged = apalis("purge", "-w", "ok", "--status", "killed", "--yes")
    where = f'queue "{backend.queue}_ok" on backend "main" ({backend.kind})'
    assert (purged.code, purged.out) == (0, f"purged 1 task in {where}\n"), purged.err
    assert not ran(apalis, "ran-doomed")


def test_bulk_retry_of_killed_tasks(apalis: Apalis, backend: Backend) -> None:
    needs(apalis, backend, Capability.BULK, ["retry", "-w", "boom", "--status", "killed", "--yes"])
    path = apalis.cwd / "tasks.jsonl"
    path.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(20)))
    assert apalis("push", "-w", "boom", "--file", str(path)).code == 0
    assert apalis(*RUN, "--worker", "boom", "--burst").code == 0
    assert apalis.statuses("--worker", "boom") == {"killed": 20}

    counted = apalis("retry", "-w", "boom", "--error-contains", "BOOM 1", "--dry-run")
    where = f'queue "{backend.queue}_boom" on backend "main" ({backend.kind})'
    # "boom 1" and "boom 10" to "boom 19": eleven of them.
    assert (counted.code, counted.out) == (0, f"would retry 11 tasks in {where}\n"), counted.err
    refused = apalis("retry", "-w", "boom", "--status", "killed")  # no terminal, no --yes
    assert refused.code == 2
    assert apalis.statuses("--worker", "boom") == {"killed": 20}

    retried = apalis("retry", "-w", "boom", "--error-contains", "BOOM 1", "--yes")
    assert (retried.code, retried.out) == (0, f"retried 11 tasks in {where}\n"), retried.err
    assert apalis.statuses("--worker", "boom") == {"killed": 9, "pending": 11}
    purged = apalis("purge", "-w", "boom", "--status", "killed", "--limit", "5", "--yes")
    assert (purged.code, purged.out) == (0, f"purged 5 tasks in {where}\n"), purged.err
    assert apalis.statuses("--worker", "boom") == {"killed": 4, "pending": 11}


def test_bulk_cancel_and_kill_keep_the_operators_reason(apalis: Apalis, backend: Backend) -> None:
    needs(apalis, backend, Capability.BULK, ["cancel", "-w", "slow", "--reason", "x", "--yes"])
    cancelled = [push(apalis, "slow", {"n": n}) for n in range(3)]
    where = f'queue "{backend.queue}" on backend "main" ({backend.kind})'

    result = apalis("cancel", "-w", "slow", "--reason", "wrong customer, ticket 4411", "--yes")
    assert (result.code, result.out) == (0, f"cancelled 3 tasks in {where}\n"), result.err
    killed = [push(apalis, "slow", {"n": n}) for n in range(3, 5)]
    result = apalis("kill", "-w", "slow", "--status", "pending", "--reason", "poison batch", "--yes")
    assert (result.code, result.out) == (0, f"killed 2 tasks in {where}\n"), result.err
    if not lacking(backend.kind, Capability.INSPECT):
        for task_id in cancelled:
            assert row(apalis, "slow", task_id)["last_error"] == "wrong customer, ticket 4411"
        for task_id in killed:
            assert (row(apalis, "slow", task_id)["status"], row(apalis, "slow", task_id)["last_error"]) == (
                "killed",
                "poison batch",
            )

    # Retry and purge keep no reason; a blank one is no reason at all: one line, exit 2.
    for argv in (
        ["retry", "-w", "slow", "--reason", "again", "--yes"],
        ["purge", "-w", "slow", "--status", "killed", "--reason", "tidy", "--yes"],
        ["cancel", "-w", "slow", "--reason", " ", "--yes"],
        ["kill", "-w", "slow", "--reason", "", "--yes"],
    ):
        refused = apalis(*argv)
        assert refused.code == 2, (argv, refused.out, refused.err)
        assert refused.err.count("\n") == 1, refused.err
        assert "--reason" in refused.err, refused.err
        assert "Possible options" not in refused.err, refused.err
        assert refused.out == ""


def answer_in_a_terminal(apalis: Apalis, argv: list[str], answer: bytes) -> tuple[int, str, str]:
    """Run `apalis argv` with a pseudo-terminal as stdin and stderr, type `answer` once it asks
    (`[y/N]`); its exit code, stdout, and what the terminal showed."""
    import os
    import pty
    import select

    from .conftest import APALIS

    master, slave = pty.openpty()
    process = subprocess.Popen(
        [APALIS, *argv], cwd=apalis.cwd, env=apalis.env(), stdin=slave, stdout=subprocess.PIPE, stderr=slave
    )
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + 60
    try:
        while b"[y/N]" not in shown and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    shown += os.read(master, 65536)
                except OSError:  # the command ended without asking
                    break
        os.write(master, answer)
        out, _ = process.communicate(timeout=60)
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out.decode(), shown.decode("utf-8", "replace")


@pytest.mark.parametrize("kind", ["sqlite"])
def test_a_bulk_action_asks_in_a_terminal_first(apalis: Apalis, tmp_path: Path, kind: str) -> None:
    if lacking(kind, Capability.BULK):
        pytest.skip(f"{kind} lacks bulk")
    (apalis.cwd / "ctl_handlers.py").write_text(HANDLERS)
    made = make_backend(kind, tmp_path)  # sqlite: a file in the test's folder, nothing to drop
    apalis.write_config(made.table + "\n" + _table(made.queue, "boom", "boom", max_attempts=1))
    path = apalis.cwd / "tasks.jsonl"
    path.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(3)))
    assert apalis("push", "--file", str(path)).code == 0
    assert apalis(*RUN, "--burst").code == 0
    where = f'queue "{made.queue}" on backend "main" ({kind})'

    code, out, shown = answer_in_a_terminal(apalis, ["retry", "--status", "killed"], b"n\n")
    assert f"retry 3 tasks (killed): 3 in {where}? [y/N]" in shown
    assert (code, out) == (1, "")
    assert apalis.statuses() == {"killed": 3}

    code, out, shown = answer_in_a_terminal(apalis, ["retry", "--status", "killed"], b"y\n")
    assert (code, out) == (0, f"retried 3 tasks in {where}\n"), shown
    assert apalis.statuses() == {"pending": 3}
