"""The `apalis` command in-process: exit codes, one-line errors, init/check, and the memory store.

The acceptance tests run the real command as a subprocess against SQLite; these check the
command's contract quickly, where one process is enough.
"""

from __future__ import annotations

import json
from pathlib import Path

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
