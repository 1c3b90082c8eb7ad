"""Stored text never drives the terminal: a handler's error, its result, an idempotency key or a
kill reason holding escape sequences, a carriage return or rich markup is printed visibly by
every command that shows it, as the real `apalis` command writes it to a terminal."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..services import need_server
from .conftest import APALIS, CONFIG, Apalis, Result

HOSTILE = "[red]x[/red] \x1b[2J \x1b]0;title\x07 \r end"
RAW = ("\x1b[2J", "\x1b]0;", "\x07", "\r")


class InTerminal(Apalis):
    """`apalis` writing as to a terminal (rich styles its output), its output read as the bytes
    it wrote (text mode would turn a carriage return into a newline); $HOSTILE is given to the
    handler script in printf's notation."""

    def env(self) -> dict[str, str]:
        printf = HOSTILE.replace("\x07", "\\007").replace("\x1b", "\\033").replace("\r", "\\r")
        return {**super().env(), "TTY_COMPATIBLE": "1", "HOSTILE": printf}

    def __call__(self, *argv: str, stdin: str | None = None, timeout: float = 60) -> Result:
        done = subprocess.run([APALIS, *argv], cwd=self.cwd, env=self.env(), capture_output=True, timeout=timeout)
        out, err = (stream.decode("utf-8", "surrogateescape") for stream in (done.stdout, done.stderr))
        return Result(done.returncode, out, err)


def shows_safely(result: Result, *, markup: bool = True) -> None:
    assert result.code == 0, result.err
    for output in (result.out, result.err):
        for raw in RAW:
            assert raw not in output, (raw, output)
    if markup:  # rich markup in stored text prints as written, not as a style
        assert "[red]x[/red]" in result.out + result.err


def test_hostile_stored_text_is_escaped_everywhere(tmp_path: Path, apalis: Apalis) -> None:
    apalis = InTerminal(apalis.cwd, apalis.config)
    script = tmp_path / "hostile.sh"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$(cat)" = \'"fail"\' ]; then printf "$HOSTILE" >&2; exit 3; fi\n'
        'printf "$HOSTILE"\n'  # success: stdout is the task's result
    )
    script.chmod(0o755)
    apalis.write_config(
        CONFIG.replace('handler = "acc_handlers:ok"', 'handler = { command = ["./hostile.sh"] }\nmax_attempts = 1')
    )
    failing = apalis("push", '"fail"').out.strip()
    succeeding = apalis("push", "--key", HOSTILE, '"ok"').out.strip()
    killed = apalis("push", "--delay", "1h", '"later"').out.strip()
    assert apalis("kill", killed, "--reason", HOSTILE).code == 0

    run = apalis("run", "--burst", "--no-live", "--log-format", "console", "--log-level", "info")
    shows_safely(run)
    stored = {row["id"]: row for row in apalis.inspect()}
    assert "\x1b[2J" in stored[failing]["last_error"]  # the store keeps what the handler wrote
    assert stored[succeeding]["result"] == HOSTILE
    assert stored[killed]["last_error"] == HOSTILE

    shows_safely(apalis("inspect"))
    shows_safely(apalis("inspect", "--decode"))
    for task_id in (failing, succeeding, killed):
        shows_safely(apalis("inspect", "--id", task_id))
        shows_safely(apalis("inspect", "--id", task_id, "--json"), markup=False)
    shows_safely(apalis("stats"), markup=False)
    shows_safely(apalis("workers"), markup=False)
    missing = apalis("inspect", "--id", HOSTILE)  # an error naming what was asked for
    assert missing.code == 1
    assert not any(raw in missing.err for raw in RAW)


def test_check_prints_what_the_server_quotes_visibly(apalis: Apalis) -> None:
    # The server quotes the database name it was asked for, escape sequence included.
    base = urlsplit(need_server("postgres"))
    url = urlunsplit(base._replace(path="/no%1B%5B2Jsuch%07db"))
    apalis = InTerminal(apalis.cwd, apalis.config)
    apalis.write_config(f'[backends.main]\nkind = "postgres"\nurl = "{url}"\n\n[[workers]]\nname = "w"\n')
    checked = apalis("check")
    assert checked.code == 1
    assert "no\\x1b[2Jsuch\\x07db" in checked.out
    assert not any(raw in checked.out + checked.err for raw in RAW)
