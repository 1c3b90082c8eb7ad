"""A password given in a URL's query string (`?password=...`) never prints, whatever the command
and whichever way it fails: one-line errors, `check`, config errors, the daemon's logs while it
waits for its store (its drivers' debug lines included), `--burst` failures, and a handler's
error that quotes such a URL; for every store kind that takes a URL."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path
from typing import IO

import pytest

from .conftest import Apalis

SECRET = "Qx7pSecretW0rd"

# Unreachable on purpose (port 1): every command fails, after saying something about the URL.
URLS = {
    "postgres": f"postgresql://app@127.0.0.1:1/app?password={SECRET}&connect_timeout=1",
    "pgmq": f"postgresql://app@127.0.0.1:1/app?sslmode=disable&password={SECRET}",
    "mysql": f"mysql://app@127.0.0.1:1/app?password={SECRET}",
    "redis": f"redis://127.0.0.1:1/0?password={SECRET}",
    "rsmq": f"redis://app@127.0.0.1:1/0?socket_timeout=1&password={SECRET}",
    "amqp": f"amqp://app@127.0.0.1:1/?password={SECRET}",
    "nats": f"nats://app@127.0.0.1:1?password={SECRET}",
}

CONFIG = """\
[backends.main]
kind = "{kind}"
url = "{url}"

[[workers]]
name = "echo"
handler = "acc_handlers:ok"
keep_alive = "1s"
"""

COMMANDS = (
    ("check",),
    ("push", '{"n": 1}'),
    ("run", "--burst", "--no-live", "--log-format", "json", "--log-level", "debug"),
    ("run", "--burst", "--no-live", "--log-format", "console", "--log-level", "debug"),
)


def assert_masked(text: str, what: str) -> None:
    assert SECRET not in text, f"{what} printed the password:\n{text}"


class Lines:
    """A running process's output, read line by line as it comes (a wait for a line does not
    depend on how fast a loaded machine started the process)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self.out: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(process.stderr, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(process.stdout, self.out), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str] | None, into: list[str]) -> None:
        assert stream is not None
        for line in stream:
            with self._changed:
                into.append(line)
                self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: any(text in line for line in self.lines), timeout)

    def stop(self) -> tuple[str, str]:
        """SIGTERM, then everything the process wrote."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        for reader in self._readers:
            reader.join(timeout=30)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return "".join(self.out), "".join(self.lines)


@pytest.mark.parametrize("kind", sorted(URLS))
def test_no_output_of_a_store_that_cannot_be_reached_shows_the_password(apalis: Apalis, kind: str) -> None:
    apalis.write_config(CONFIG.format(kind=kind, url=URLS[kind]))
    # All at once: some stores retry their first connect for seconds before they give up.
    commands = {argv: apalis.start(*argv) for argv in COMMANDS}
    daemon = Lines(apalis.start("run", "--no-live", "--log-format", "json", "--log-level", "debug"))
    try:
        for argv, process in commands.items():
            out, err = process.communicate(timeout=90)
            assert process.returncode != 0, f"apalis {' '.join(argv)} reached a store on port 1"
            assert_masked(out + err, f"apalis {' '.join(argv)}")
        daemon.wait_for("retrying", timeout=60)  # it has failed to open at least once, and retries
    finally:
        for process in commands.values():
            if process.poll() is None:
                process.kill()
        out, err = daemon.stop()
    assert "retrying" in err, f"the daemon did not log its wait:\n{err}"
    assert_masked(out + err, "apalis run, waiting for its store")


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql//app@127.0.0.1:1/app?password={SECRET}",  # no "://"
        f"postgresql://app@127.0.0.1:notaport/app?password={SECRET}",
        f"postgresql://app@127.0.0.1:1/app?password={SECRET}&schema=1x",
    ],
    ids=["no-scheme-separator", "bad-port", "bad-option"],
)
def test_config_errors_about_the_url_mask_the_password(apalis: Apalis, url: str) -> None:
    apalis.write_config(CONFIG.format(kind="postgres", url=url))
    for argv in (("check",), ("push", "{}"), ("run", "--burst", "--no-live")):
        result = apalis(*argv)
        assert result.code != 0
        assert_masked(result.out + result.err, f"apalis {' '.join(argv)}")


def test_a_handler_error_quoting_a_url_is_masked(apalis: Apalis, tmp_path: Path) -> None:
    # A handler's own error that quotes a URL with its query password (a driver's message).
    (tmp_path / "leaky.py").write_text(
        f"def connect(args):\n    raise ConnectionError('cannot reach postgresql://app@db/app?password={SECRET}')\n"
    )
    apalis.write_config(
        '[backends.main]\nkind = "sqlite"\nurl = "sqlite:///jobs.db"\n\n'
        '[[workers]]\nname = "echo"\nhandler = "leaky:connect"\nmax_attempts = 1\n'
    )
    assert apalis("push", "{}").code == 0
    ran = apalis("run", "--burst", "--no-live", "--log-format", "json")
    assert_masked(ran.out + ran.err, "apalis run --log-format json")
    for argv in (("inspect", "--json"), ("inspect",), ("inspect", "--status", "killed", "--decode")):
        shown = apalis(*argv)
        assert shown.code == 0, shown.err
        assert_masked(shown.out + shown.err, f"apalis {' '.join(argv)}")
