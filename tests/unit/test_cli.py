"""The `apalis` command in-process: exit codes, one-line errors, init/check, and the memory store.

The acceptance tests run the real command as a subprocess against SQLite; these check the
command's contract quickly, where one process is enough.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import apalis_cli
import pytest
from apalis_cli.cli import _run, fail_line
from apalis_cli.cli.push import parse_at
from apalis_cli.cli.setup import starter_config
from apalis_cli.config import parse_config
from apalis_cli.errors import UsageError

MEMORY = """\
[backends.mem]
kind = "memory"

[[workers]]
name = "emails"
backend = "mem"
handler = "apalis_cli.demo:resize_image"
"""


def apalis(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = _run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def memory_config(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.toml"
    path.write_text(MEMORY)
    return path


def test_push_prints_the_id_alone(capsys: pytest.CaptureFixture[str], memory_config: Path) -> None:
    code, out, err = apalis(capsys, "push", "--config", str(memory_config), '{"to": "ada"}')
    assert (code, err) == (0, "")
    assert len(out.strip()) >= 20
    assert out.count("\n") == 1


def test_push_many_from_a_file(capsys: pytest.CaptureFixture[str], memory_config: Path, tmp_path: Path) -> None:
    tasks = tmp_path / "t.jsonl"
    tasks.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(2500)))
    code, out, _ = apalis(capsys, "push", "-c", str(memory_config), "--file", str(tasks))
    assert code == 0
    assert len(set(out.split())) == 2500


@pytest.mark.parametrize(
    ("codec", "bad", "refusal"),
    [
        ("json", "NaN", "cannot encode as JSON: Out of range float values are not JSON compliant"),
        ("msgpack", str(2**70), "cannot encode as msgpack: Integer value out of range"),
    ],
)
def test_a_value_the_codec_refuses_names_its_line_and_pushes_nothing(
    capsys: pytest.CaptureFixture[str], memory_config: Path, tmp_path: Path, codec: str, bad: str, refusal: str
) -> None:
    memory_config.write_text(MEMORY + f'codec = "{codec}"\n')
    tasks = tmp_path / "t.jsonl"
    tasks.write_text("".join((f'{{"n": {bad}}}' if i == 1200 else json.dumps({"n": i})) + "\n" for i in range(1, 1501)))
    code, out, err = apalis(capsys, "push", "-c", str(memory_config), "--file", str(tasks))
    assert (code, out) == (2, "")
    assert err == f"apalis: error: {tasks}:1200 cannot be pushed: {refusal}; nothing was pushed\n"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"a": "caf\xe9"}', "is not UTF-8 text (byte 0xe9 at column 11); nothing was pushed"),
        (b"[" * 100_000 + b"]" * 100_000, "is JSON nested too deeply to read; nothing was pushed"),
        (b'{"a": ', "is not valid JSON: Expecting value: line 1 column 7 (char 6); nothing was pushed"),
    ],
)
def test_a_bad_line_in_a_file_or_stdin_is_named(
    capsys: pytest.CaptureFixture[str],
    memory_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    line: bytes,
    message: str,
) -> None:
    data = b'{"n": 1}\n\n' + line + b'\n{"n": 4}\n'
    tasks = tmp_path / "t.jsonl"
    tasks.write_bytes(data)
    code, out, err = apalis(capsys, "push", "-c", str(memory_config), "--file", str(tasks))
    assert (code, out, err) == (2, "", f"apalis: error: {tasks}:3 {message}\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, out, err = apalis(capsys, "push", "-c", str(memory_config), "-")
    assert (code, out, err) == (2, "", f"apalis: error: stdin:3 {message}\n")


def test_a_file_is_split_on_line_ends_only(
    capsys: pytest.CaptureFixture[str], memory_config: Path, tmp_path: Path
) -> None:
    # JSON strings may hold U+2028 and U+0085 raw; a UTF-8 BOM (from Windows editors) is skipped.
    tasks = tmp_path / "t.jsonl"
    tasks.write_bytes('\ufeff{"a": "x\u2028y\u0085z"}\r\n{"b": 1}\r\n'.encode())
    code, out, err = apalis(capsys, "push", "-c", str(memory_config), "--file", str(tasks))
    assert (code, err) == (0, "")
    assert len(out.split()) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["push", "{bad"], "apalis: error: the argument is not valid JSON"),
        (["push", "--worker", "nope", "{}"], 'apalis: error: no worker named "nope"'),
        (["push", "--delay", "soon", "{}"], "apalis: error: --delay: expected a duration"),
        (["push", "--at", "tuesday", "{}"], "apalis: error: --at: expected an ISO 8601 time"),
        (["push", "--delay", "1s", "--at", "2030-01-01T00:00:00Z", "{}"], "apalis: error: give either --delay or --at"),
        (["push", "--max-attempts", "0", "{}"], "apalis: error: "),
        (["push", "--no-such-flag", "{}"], "apalis: error: No such option: --no-such-flag"),
        (["inspect", "--status", "sleeping"], "apalis: error: "),
        (["purge", "--status", "done", "--older-than", "ages"], "apalis: error: --older-than: expected a duration"),
        # Bounds every store can hold, checked before anything is opened or written.
        (["push", "--priority", str(2**31), "{}"], "apalis: error: --priority: must be <= 2147483647, got 2147483648"),
        (["push", "--priority", str(-(2**31) - 1), "{}"], "apalis: error: --priority: must be >= -2147483648"),
        (["push", "--priority", str(10**20), "{}"], "apalis: error: --priority: must be <= 2147483647"),
        (["push", "--max-attempts", str(2**31), "{}"], "apalis: error: --max-attempts: must be <= 2147483647"),
        (["push", "--delay", "999999999999d", "{}"], "apalis: error: --delay: a duration must be at most 100 years"),
        (["push", "--at", "0001-01-01T00:00:00+05:00", "{}"], "apalis: error: --at: "),
        (["push", "--at", "9999-12-31T23:59:59-05:00", "{}"], "apalis: error: --at: "),
        (["push", "--queue", "", "{}"], "apalis: error: the queue name must not be empty"),
        (["push", "--queue", "  ", "{}"], "apalis: error: the queue name must not be empty"),
        (["push", "--key", "", "{}"], "apalis: error: --key must not be empty"),
        (["push", "[" * 100_000 + "]" * 100_000], "apalis: error: the argument is JSON nested too deeply"),
        (["push", "1e400"], "apalis: error: the argument cannot be pushed: cannot encode as JSON"),
        (["inspect", "--limit", str(2**31)], "apalis: error: --limit: must be <= 2147483647"),
        (["inspect", "--limit", "0"], "apalis: error: --limit: must be >= 1, got 0"),
        (["inspect", "--queue", ""], "apalis: error: the queue name must not be empty"),
        (["run", "--burst", "--concurrency", str(10**11)], "apalis: error: --concurrency: must be <= 10000"),
        (["run", "--burst", "--metrics-addr", "[::1:9464"], 'apalis: error: --metrics-addr: the IPv6 host "[::1:9464"'),
        (["run", "--burst", "--metrics-addr", "127.0.0.1:99999"], "apalis: error: --metrics-addr: the port must be"),
        (["purge", "--status", "done", "--older-than", "1e400s"], "apalis: error: --older-than: expected a duration"),
        (["purge", "--status", "done", "--older-than", "99999999999d"], "apalis: error: --older-than: a duration must"),
        # Text the shell passed as bytes that are not UTF-8 (no store can write it), and empty ids.
        (["kill", "T1", "--reason", "caf\udce9"], "apalis: error: Invalid value for '--reason': not UTF-8 text"),
        (["push", "--key", "caf\udce9", "{}"], "apalis: error: Invalid value for '--key': not UTF-8 text"),
        (["push", "--queue", "caf\udce9", "{}"], "apalis: error: Invalid value for '--queue' / '-q': not UTF-8"),
        (["run", "--burst", "--worker", "caf\udce9"], "apalis: error: Invalid value for '--worker' / '-w': not UTF"),
        (["inspect", "--id", "caf\udce9"], "apalis: error: Invalid value for '--id': not UTF-8 text"),
        (["retry", "caf\udce9"], "apalis: error: Invalid value for 'TASK_ID': not UTF-8 text"),
        (["push", "caf\udce9"], "apalis: error: the argument is not UTF-8 text (byte 0xe9 at column 4)"),
        (["retry", ""], "apalis: error: Invalid value for 'TASK_ID': a task id cannot be empty"),
        (["kill", " "], "apalis: error: Invalid value for 'TASK_ID': a task id cannot be empty"),
        (["inspect", "--id", ""], "apalis: error: Invalid value for '--id': a task id cannot be empty"),
        (["push", "--queue", "q" * 101, "{}"], "apalis: error: the queue name must be at most 100 characters, got 101"),
        (["push", "--key", "k" * 256, "{}"], "apalis: error: --key: must be at most 255 characters, got 256"),
        # A typo in a name gets the known names suggested.
        (["push", "--worker", "emials", "{}"], 'apalis: error: no worker named "emials" in '),
        (["push", "--queue", "emials", "{}"], "apalis: error: no worker in "),
        (["run", "--burst", "--worker", "emials"], 'apalis: error: no worker named "emials" in '),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], memory_config: Path, argv: list[str], message: str
) -> None:
    code, out, err = apalis(capsys, *argv, "--config", str(memory_config))
    assert code == 2
    assert out == ""
    assert err.startswith(message)
    assert err.count("\n") == 1


def test_a_typo_gets_the_known_names_suggested(capsys: pytest.CaptureFixture[str], memory_config: Path) -> None:
    code, _, err = apalis(capsys, "inspect", "--worker", "emials", "--config", str(memory_config))
    assert (code, err) == (
        2,
        f'apalis: error: no worker named "emials" in {memory_config}; did you mean "emails"? (workers: emails)\n',
    )
    code, _, err = apalis(capsys, "stats", "--queue", "emial", "--config", str(memory_config))
    assert code == 2
    assert err.startswith(
        f'apalis: error: no worker in {memory_config} takes the queue "emial"; did you mean "emails"?'
    )
    # A name that resembles none is a queue of its own, as before (several producers may share one).
    assert apalis(capsys, "push", "--queue", "reports", "{}", "--config", str(memory_config))[0] == 0


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert apalis(capsys, "--version") == (0, f"apalis {apalis_cli.__version__}\n", "")
    assert apalis(capsys, "-V") == (0, f"apalis {apalis_cli.__version__}\n", "")


def test_bad_config_names_file_and_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(MEMORY.replace('backend = "mem"', 'backend = "mem"\nconcurrency = 0'))
    code, _, err = apalis(capsys, "run", "--config", str(path))
    assert code == 2
    assert err == f"apalis: error: {path}:7: workers[0].concurrency: must be >= 1, got 0\n"


def test_missing_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = apalis(capsys, "push", "--config", str(tmp_path / "none.toml"), "{}")
    assert code == 2
    assert "config file not found" in err


def test_bad_handler_is_a_config_error_at_its_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "jobs.toml"
    path.write_text(MEMORY.replace("apalis_cli.demo:resize_image", "apalis_cli.demo:no_such_function"))
    code, _, err = apalis(capsys, "run", "--burst", "--config", str(path))
    assert code == 2
    assert err.startswith(f"apalis: error: {path}:7: workers[0].handler: cannot import")


def test_inspect_on_an_empty_memory_queue(capsys: pytest.CaptureFixture[str], memory_config: Path) -> None:
    code, out, _ = apalis(capsys, "inspect", "--json", "--config", str(memory_config))
    assert (code, json.loads(out)) == (0, [])


def test_unknown_task_id_is_a_runtime_failure(capsys: pytest.CaptureFixture[str], memory_config: Path) -> None:
    code, _, err = apalis(capsys, "retry", "NOPE", "--config", str(memory_config))
    assert code == 1
    assert err.startswith("apalis: error: no task NOPE")


def test_run_burst_on_an_empty_queue_exits_0(capsys: pytest.CaptureFixture[str], memory_config: Path) -> None:
    code, _, _ = apalis(capsys, "run", "--burst", "--no-live", "--log-format", "json", "--config", str(memory_config))
    assert code == 0


def test_a_store_without_a_sink_says_why(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "cron.toml"
    path.write_text('[[workers]]\nname = "t"\nbackend = "cron"\nschedule = "* * * * *"\nhandler = "m:f"\n')
    code, _, err = apalis(capsys, "push", "--config", str(path), "{}")
    assert code == 2
    assert "cron worker without pipe_to" in err
    assert err.count("\n") == 1


def test_init_writes_a_config_that_checks(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = apalis(capsys, "init")
    assert code == 0
    assert "wrote apalis.toml" in out
    assert apalis(capsys, "init")[0] == 2  # no silent overwrite
    code, out, _ = apalis(capsys, "check")
    assert code == 0
    assert "ok    backend main (sqlite) sqlite:///apalis.db" in out


def test_init_says_what_is_wrong_with_the_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = apalis(capsys, "init", str(tmp_path))
    assert (code, out) == (2, "")
    assert (
        err
        == f"apalis: error: {tmp_path} is a directory; give the config file's name, e.g. {tmp_path / 'apalis.toml'}\n"
    )
    target = tmp_path / "no" / "such" / "jobs.toml"
    code, out, err = apalis(capsys, "init", str(target))
    assert (code, out) == (2, "")
    assert err == f"apalis: error: cannot write {target}: there is no directory {target.parent}\n"


def test_starter_config_is_valid_toml_with_comments() -> None:
    text = starter_config()
    config = parse_config(text, Path("apalis.toml"))
    assert config.workers[0].handler is not None
    assert text.count("#") > 15


def test_check_never_prints_a_password(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "pg.toml"
    path.write_text(
        '[backends.pg]\nkind = "postgres"\nurl = "postgresql://app:s3cret@127.0.0.1:1/app"\nconnect_timeout = "1s"\n'
    )
    code, out, err = apalis(capsys, "check", "--config", str(path))
    assert code in (1, 2)
    assert "s3cret" not in out + err


def test_fail_line_masks_passwords_and_newlines() -> None:
    assert fail_line("cannot reach\nredis://:hunter2@h:6379/0") == "apalis: error: cannot reach redis://:***@h:6379/0"


def test_parse_at() -> None:
    assert parse_at("1970-01-01T00:01:00Z") == 60.0
    assert parse_at("1970-01-01T00:01:00") == 60.0  # no offset: UTC
    assert parse_at("1970-01-01T01:01:00+01:00") == 60.0
    with pytest.raises(UsageError):
        parse_at("noon")
