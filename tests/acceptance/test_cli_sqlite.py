"""The `apalis` command end to end on embedded SQLite: push, run --burst, inspect, admin, errors."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import termios
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from ..services import need_binary
from .conftest import APALIS, CONFIG, Apalis, Result, lines

ID = re.compile(r"^[0-9a-f]{30}$")


def test_push_prints_the_new_id_alone(apalis: Apalis) -> None:
    result = apalis("push", '{"to": "ada"}')
    assert result.code == 0, result.err
    assert ID.match(result.out.strip())
    assert result.out.count("\n") == 1


def test_push_file_run_burst_inspect(apalis: Apalis, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(f'{{"n": {i}}}\n' for i in range(300)))
    pushed = apalis("push", "--file", str(tasks))
    assert pushed.code == 0, pushed.err
    ids = lines(pushed.out)
    assert len(set(ids)) == 300
    assert apalis.statuses() == {"pending": 300}

    ran = apalis("run", "--burst", "--no-live", "--log-format", "json")
    assert ran.code == 0, ran.err
    rows = apalis.inspect()
    assert {row["status"] for row in rows} == {"done"}
    assert {row["id"] for row in rows} == set(ids)
    by_n = {row["result"]["echo"]["n"] for row in rows}
    assert by_n == set(range(300))


def test_inspect_json_shape(apalis: Apalis) -> None:
    task_id = apalis("push", "--priority", "3", "--max-attempts", "7", "--delay", "1h", '{"x": "é"}').out.strip()
    (row,) = apalis.inspect("--id", task_id, "--decode")
    assert row["id"] == task_id
    assert row["status"] == "pending"
    assert (row["attempts"], row["max_attempts"], row["priority"]) == (0, 7, 3)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$", row["run_at"])
    assert row["queue"] == "echo"
    assert (row["payload"], row["payload_encoding"]) == ('{"x":"é"}', "utf-8")
    assert row["args"] == {"x": "é"}
    for key in ("last_error", "result", "lock_by"):
        assert row[key] is None
    # A delayed task is not ready: a burst run leaves it alone.
    assert apalis("run", "--burst", "--no-live").code == 0
    assert apalis.statuses() == {"pending": 1}


def test_msgpack_payload_is_shown_as_hex(apalis: Apalis) -> None:
    apalis.write_config(CONFIG.replace('handler = "acc_handlers:ok"', 'handler = "acc_handlers:ok"\ncodec = "msgpack"'))
    task_id = apalis("push", '{"a": 1}').out.strip()
    (row,) = apalis.inspect("--id", task_id, "--decode")
    assert (row["payload"], row["payload_encoding"]) == ("81a16101", "hex")
    assert row["args"] == {"a": 1}


def test_stdin_takes_one_value_per_line(apalis: Apalis) -> None:
    result = apalis("push", "-", stdin='{"n": 1}\n{"n": 2}\n[3]\n')
    assert result.code == 0, result.err
    assert len(lines(result.out)) == 3


def test_idempotency_key(apalis: Apalis) -> None:
    first = apalis("push", "--key", "invoice-42", '{"n": 1}').out
    second = apalis("push", "--key", "invoice-42", '{"n": 2}').out
    assert first == second
    assert apalis.statuses() == {"pending": 1}


def test_bad_input_is_one_line_exit_2(apalis: Apalis, tmp_path: Path) -> None:
    bad_json = apalis("push", "{nope")
    assert bad_json.code == 2
    assert lines(bad_json.err) == [bad_json.err.strip()]
    assert bad_json.err.startswith("apalis: error: the argument is not valid JSON")

    unknown = apalis("push", "--worker", "nobody", "{}")
    assert unknown.code == 2
    assert unknown.err.strip() == f'apalis: error: no worker named "nobody" in {apalis.config} (workers: echo)'

    apalis.write_config(CONFIG.replace("concurrency = 4", "concurrency = 0"))
    bad_config = apalis("run", "--burst")
    assert bad_config.code == 2
    assert bad_config.err == f"apalis: error: {apalis.config}:8: workers[0].concurrency: must be >= 1, got 0\n"

    (tmp_path / "broken.toml").write_text("[[workers]\n")
    syntax = apalis("check", "--config", str(tmp_path / "broken.toml"))
    assert syntax.code == 2
    assert syntax.err.startswith(f"apalis: error: {tmp_path / 'broken.toml'}:1:")
    assert "Traceback" not in bad_json.err + unknown.err + bad_config.err + syntax.err


def test_check_redacts_passwords(apalis: Apalis) -> None:
    apalis.write_config(
        CONFIG.replace('name = "echo"', 'name = "echo"\nbackend = "main"')
        + '\n[backends.pg]\nkind = "postgres"\nurl = "postgresql://app:hunter2@127.0.0.1:1/app"\n'
        + 'connect_timeout = "1s"\n'
    )
    result = apalis("check")
    assert result.code in (1, 2)
    assert "hunter2" not in result.out + result.err
    assert "backend main (sqlite) sqlite:///jobs.db" in result.out


def test_failures_then_retry_kill_purge(apalis: Apalis) -> None:
    apalis.write_config(CONFIG.replace("acc_handlers:ok", "acc_handlers:boom") + "max_attempts = 1\n")
    task_id = apalis("push", "{}").out.strip()
    assert apalis("run", "--burst", "--no-live").code == 0
    (row,) = apalis.inspect()
    assert row["status"] == "killed"
    assert "ValueError: boom" in row["last_error"]

    assert apalis("retry", task_id).out.strip() == f"retried {task_id}"
    assert apalis.statuses() == {"pending": 1}
    assert apalis("kill", task_id, "--reason", "enough").out.strip() == f"killed {task_id}"
    (row,) = apalis.inspect()
    assert (row["status"], row["last_error"]) == ("killed", "enough")
    assert apalis("purge", "--status", "killed").out.strip() == "purged 1 killed task"
    assert apalis.inspect() == []
    missing = apalis("retry", task_id)
    assert missing.code == 1
    assert missing.err.startswith(f"apalis: error: no task {task_id}")


def test_stats_and_workers_json(apalis: Apalis) -> None:
    apalis("push", "{}")
    stats = apalis("stats", "--json")
    assert stats.code == 0, stats.err
    (row,) = stats.json()
    assert row["queue"] == "echo"
    assert row["pending"] == 1
    workers = apalis("workers", "--json")
    assert (workers.code, workers.json()) == (0, [])


def test_command_handler(apalis: Apalis, tmp_path: Path) -> None:
    script = tmp_path / "shout.sh"
    script.write_text('#!/bin/sh\ncat | tr a-z A-Z\necho " $APALIS_QUEUE $APALIS_ATTEMPT"\n')
    script.chmod(0o755)
    apalis.write_config(CONFIG.replace('handler = "acc_handlers:ok"', 'handler = { command = ["./shout.sh"] }'))
    task_id = apalis("push", '{"word": "hi"}').out.strip()
    assert apalis("run", "--burst", "--no-live").code == 0
    (row,) = apalis.inspect("--id", task_id)
    assert row["status"] == "done"
    assert row["result"] == '{"WORD":"HI"} echo 1'


def test_sigterm_drains_gracefully(apalis: Apalis) -> None:
    apalis.write_config(
        CONFIG.replace("acc_handlers:ok", "acc_handlers:slow").replace("concurrency = 4", "concurrency = 2")
    )
    for _ in range(6):
        apalis("push", '{"sleep": 1.5}')
    daemon = apalis.start("run", "--no-live", "--log-format", "json")
    try:
        deadline = time.monotonic() + 30
        while apalis.statuses().get("running", 0) < 2:
            assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.1)
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, err
    assert "Traceback" not in err
    counts = apalis.statuses()
    # The two running tasks finished; nothing was lost or left running.
    assert counts.get("done", 0) >= 2
    assert counts.get("running", 0) == 0
    assert counts.get("done", 0) + counts.get("pending", 0) == 6


def test_metrics_and_healthz_are_served(apalis: Apalis) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    apalis("push", '{"n": 1}')
    daemon = apalis.start("run", "--no-live", "--metrics-addr", f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                    health = json.loads(reply.read())
                if health["healthy"]:
                    break
            except (OSError, ValueError):
                pass
            assert daemon.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.2)
        while apalis.statuses() != {"done": 1}:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
        assert 'apalis_tasks_total{queue="echo",status="done",worker="echo"} 1.0' in text
        assert health["workers"]["echo"]["state"] == "running"
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=30)
    assert daemon.returncode == 0


def test_cron_worker_piped_into_sqlite(apalis: Apalis) -> None:
    apalis.write_config(
        CONFIG
        + '\n[[workers]]\nname = "tick"\nbackend = "cron"\nschedule = "* * * * * *"\npipe_to = "main"\n'
        + 'handler = "acc_handlers:ok"\nkeep_alive = "1s"\npoll_interval = "100ms"\n'
    )
    assert apalis("push", "--worker", "echo", "{}").code == 0  # the other worker is unaffected
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = apalis.start("run", "--no-live", "--worker", "tick", "--metrics-addr", f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while apalis.statuses("--worker", "tick").get("done", 0) < 2:
            assert daemon.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=30)
    assert daemon.returncode == 0
    done = [row for row in apalis.inspect("--worker", "tick") if row["status"] == "done"]
    assert all(row["idempotency_key"].startswith("cron:") for row in done)
    assert all("scheduled_at" in row["result"]["echo"] for row in done)
    assert apalis.statuses("--worker", "echo") == {"pending": 1}
    # Every queue counted, the piped ticks' queue on the store they go into.
    stats = apalis("stats", "--json")
    assert stats.code == 0, stats.err
    assert {row["queue"]: row["pending"] for row in stats.json()} == {"echo": 1, "tick": 0}
    assert apalis("workers", "--json").code == 0


def test_bad_cron_schedule_is_a_config_error(apalis: Apalis) -> None:
    apalis.write_config(CONFIG + '\n[[workers]]\nname = "tick"\nbackend = "cron"\nschedule = "now and then"\n')
    result = apalis("check")
    assert result.code == 2
    assert result.err.startswith(f"apalis: error: {apalis.config}:15: workers[1].schedule: ")


def test_the_example_config_runs_as_is(apalis: Apalis, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    example = tmp_path / "config.example.toml"
    example.write_text((root / "config.example.toml").read_text())
    apalis.config = example
    pushed = apalis("push", "--file", str(root / "examples" / "demo.jsonl"))
    assert pushed.code == 0, pushed.err
    assert len(lines(pushed.out)) == 20
    ran = apalis("run", "--burst", "--no-live", "--concurrency", "20")
    assert ran.code == 0, ran.err
    counts = apalis.statuses()
    # The demo handler fails now and then: those wait for their retry, the rest are done.
    assert counts.get("done", 0) >= 5
    assert set(counts) <= {"done", "failed"}


def test_init_then_run(apalis: Apalis, tmp_path: Path) -> None:
    starter = tmp_path / "starter.toml"
    assert apalis("init", str(starter)).code == 0
    apalis.config = starter
    assert apalis("check").code == 0
    assert apalis("push", '{"image": "a.png"}').code == 0
    assert apalis("run", "--burst", "--no-live").code == 0
    assert set(apalis.statuses()) <= {"done", "failed"}


def test_daemon_waits_for_a_store_that_is_down(apalis: Apalis) -> None:
    apalis.write_config(
        '[backends.pg]\nkind = "postgres"\nurl = "postgresql://app:hunter2@127.0.0.1:1/app"\n'
        'connect_timeout = "300ms"\n\n[[workers]]\nname = "w"\nhandler = "acc_handlers:ok"\n'
    )
    burst = apalis("run", "--burst")
    assert burst.code == 1
    assert "hunter2" not in burst.err
    assert len(lines(burst.err)) == 1
    daemon = apalis.start("run", "--no-live", "--log-format", "json")
    try:
        assert daemon.stderr is not None
        first = daemon.stderr.readline()  # the daemon is up and waiting once it says so
        assert "cannot open the backend, retrying" in first
        assert daemon.poll() is None
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0
    assert "hunter2" not in first + err


def one_line_exit_2(result: Result) -> str:
    """The error line of a refused command (exit 2, one line, no traceback, nothing on stdout)."""
    assert (result.code, result.out) == (2, ""), result.err
    assert len(lines(result.err)) == 1, result.err
    assert "Traceback" not in result.err
    return result.err.strip()


@pytest.mark.parametrize(
    ("codec", "bad", "refusal"),
    [
        ("json", "NaN", "cannot encode as JSON: Out of range float values are not JSON compliant"),
        ("msgpack", str(2**70), "cannot encode as msgpack: Integer value out of range"),
    ],
)
def test_push_file_is_all_or_nothing(apalis: Apalis, tmp_path: Path, codec: str, bad: str, refusal: str) -> None:
    apalis.write_config(CONFIG + f'codec = "{codec}"\n')
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join((f'{{"n": {bad}}}' if n == 1200 else json.dumps({"n": n})) + "\n" for n in range(1, 1501)))
    error = one_line_exit_2(apalis("push", "--file", str(tasks)))
    assert error == f"apalis: error: {tasks}:1200 cannot be pushed: {refusal}; nothing was pushed"
    assert apalis.inspect() == []


def test_push_file_from_a_terminal_writes_the_ids_to_stdout(apalis: Apalis, tmp_path: Path) -> None:
    # `apalis push --file tasks.jsonl > ids.txt` typed in a terminal: stdin and stderr are the
    # terminal, stdout the file. The progress bar goes to the terminal, every id to the file.
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(2500)))
    ids = tmp_path / "ids.txt"
    terminal, seen = run_in_terminal(apalis, ["push", "--file", str(tasks)], stdout=ids)
    assert terminal.returncode == 0, seen
    pushed = lines(ids.read_text())
    assert len(set(pushed)) == 2500
    assert all(ID.match(task_id) for task_id in pushed)
    assert "pushing" in seen  # the bar was drawn, on the terminal
    assert not any(task_id in seen for task_id in pushed[:10])
    assert {row["id"] for row in apalis.inspect()} == set(pushed)


def run_in_terminal(apalis: Apalis, argv: list[str], stdout: Path) -> tuple[subprocess.CompletedProcess[bytes], str]:
    """Run `apalis argv` with a pseudo-terminal as stdin and stderr, stdout to a file; returns
    what the terminal received."""
    master, slave = pty.openpty()
    received: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal's other end closed
                return
            if not data:
                return
            received.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        with stdout.open("wb") as out:
            done = subprocess.run(
                [APALIS, *argv],
                cwd=apalis.cwd,
                env={**apalis.env(), "TERM": "xterm-256color"},
                stdin=slave,
                stdout=out,
                stderr=slave,
                timeout=60,
                check=False,
            )
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    return done, b"".join(received).decode("utf-8", "replace")


def test_values_out_of_bounds_are_refused_before_anything_is_written(apalis: Apalis, tmp_path: Path) -> None:
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"n": 1}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"n": 1}\n{"file": "caf\xe9.png"}\n')
    refused = {
        ("push", "--priority", str(2**31), "{}"): "--priority: must be <= 2147483647, got 2147483648",
        ("push", "--max-attempts", str(2**40), "{}"): "--max-attempts: must be <= 2147483647",
        ("push", "--at", "0001-01-01T00:00:00+05:00", "{}"): '--at: "0001-01-01T00:00:00+05:00" must fall in',
        ("push", "--at", "9999-12-31T23:00:00-05:00", "{}"): '--at: "9999-12-31T23:00:00-05:00" must fall in',
        ("push", "--delay", "99999999999d", "{}"): "--delay: a duration must be at most 100 years",
        ("push", "--queue", "", "{}"): "the queue name must not be empty",
        ("push", "--file", str(deep)): f"{deep}:2 is JSON nested too deeply to read; nothing was pushed",
        ("push", "--file", str(latin1)): f"{latin1}:2 is not UTF-8 text (byte 0xe9 at column 14); nothing was pushed",
        ("inspect", "--limit", str(2**63)): "--limit: must be <= 2147483647",
        ("run", "--burst", "--concurrency", str(2**40)): "--concurrency: must be <= 10000",
    }
    for argv, message in refused.items():
        assert one_line_exit_2(apalis(*argv)).startswith(f"apalis: error: {message}"), argv
    assert apalis.inspect() == []  # nothing was written, and the queue still reads


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://[::1/0", 'the IPv6 host "[::1" has no closing "]"'),
        ("redis://127.0.0.1:99999/0", 'the port must be a number from 1 to 65535, got "99999"'),
        (
            "postgresql://app:hunter2@127.0.0.1:notaport/app",
            'the port must be a number from 1 to 65535, got "notaport"',
        ),
        ("amqp://guest:hunter2@[::1]:99999/", 'the port must be a number from 1 to 65535, got "99999"'),
        ("redis://127.0.0.1:6379/notadb", 'the database after the host must be a number such as "/0", got "/notadb"'),
    ],
)
def test_a_bad_url_is_a_config_error_at_its_line(apalis: Apalis, url: str, message: str) -> None:
    kind = {"redis": "redis", "postgresql": "postgres", "amqp": "amqp"}[url.partition(":")[0]]
    apalis.write_config(CONFIG.replace('kind = "sqlite"\nurl = "sqlite:///jobs.db"', f'kind = "{kind}"\nurl = "{url}"'))
    for argv in (("check",), ("push", "{}"), ("run", "--burst")):
        error = one_line_exit_2(apalis(*argv))
        assert error == f"apalis: error: {apalis.config}:3: backends.main.url: {message}", argv
        assert "hunter2" not in error


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (
            '"exits_on_import:ok"',
            'cannot import "exits_on_import:ok": the module raised SystemExit (sys.exit(0)) while being imported',
        ),
        ('{ command = ["./missing.sh"] }', 'program "./missing.sh" not found'),
        ('{ command = ["./not_executable.sh"] }', 'program "./not_executable.sh" is not an executable file'),
    ],
)
def test_a_handler_that_cannot_run_fails_check_and_run_at_its_line(
    apalis: Apalis, tmp_path: Path, handler: str, message: str
) -> None:
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(0)\n\ndef ok(args):\n    return args\n")
    (tmp_path / "not_executable.sh").write_text("#!/bin/sh\ncat\n")
    apalis.write_config(CONFIG.replace('"acc_handlers:ok"', handler))
    apalis("push", "{}")
    for argv in (("check",), ("run", "--burst", "--no-live")):
        error = one_line_exit_2(apalis(*argv))
        assert error.startswith(f"apalis: error: {apalis.config}:7: workers[0].handler: {message}"), argv
    assert apalis.statuses() == {"pending": 1}


def test_version(apalis: Apalis) -> None:
    version = apalis("--version")
    assert (version.code, version.err) == (0, "")
    assert re.fullmatch(r"apalis \d+\.\d+\.\d+\S*\n", version.out)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_installs_and_completes(apalis: Apalis, tmp_path: Path, shell: str) -> None:
    # As a user does it: `apalis --install-completion` in their shell, then a new shell, then TAB.
    binary = need_binary(shell)
    home = tmp_path / "home"
    home.mkdir()
    env = {**apalis.env(), "HOME": str(home), "PATH": f"{Path(APALIS).parent}:{os.environ['PATH']}"}
    installed = subprocess.run(
        [binary, "-c", "apalis --install-completion; true"], env=env, capture_output=True, text=True, timeout=60
    )
    assert installed.returncode == 0, installed.stderr
    assert f"{shell} completion installed" in installed.stdout
    # Twice: bash lists on the second TAB, and zsh loads typer's completion function on the first.
    screen = type_in_a_shell([binary, "-i"], env, b"apalis pu\t\t", expect=("push", "purge"))
    assert "push" in screen
    assert "purge" in screen
    screen = type_in_a_shell([binary, "-i"], env, b"apalis inspect --sta\t\t", expect=("--status",))
    assert "--status" in screen


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\([A-Z]|\x1b[=>]|[\x07\x08]")


def type_in_a_shell(argv: list[str], env: dict[str, str], keys: bytes, expect: tuple[str, ...]) -> str:
    """What an interactive shell shows (escapes removed) once `keys` are typed at its prompt: read
    until every `expect` string is on screen, or 15 s have passed."""
    master, slave = pty.openpty()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    shell = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env={**env, "TERM": "xterm"}, preexec_fn=controlling_terminal
    )
    os.close(slave)
    try:
        _read(master, until=lambda seen: False, timeout=15, quiet=1.0)  # the prompt, once output pauses
        os.write(master, keys)
        screen = ""

        def shown(seen: bytes) -> bool:
            nonlocal screen
            screen = _ANSI.sub("", seen.decode("utf-8", "replace"))
            return all(word in screen for word in expect)

        _read(master, until=shown, timeout=15)
        return screen
    finally:
        shell.kill()
        shell.wait(timeout=10)
        os.close(master)


def _read(fd: int, until: Callable[[bytes], bool], timeout: float, quiet: float | None = None) -> bytes:
    """Read `fd` until `until(data)`, `timeout` seconds, or (with `quiet`) a pause that long after
    some output."""
    data = b""
    deadline = time.monotonic() + timeout
    while not until(data) and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], min(left, quiet) if quiet and data else left)
        if not ready:
            if quiet and data:
                break
            continue
        try:
            data += os.read(fd, 65536)
        except OSError:  # the shell is gone
            break
    return data
