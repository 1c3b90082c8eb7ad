"""Private server instances for the chaos tests: started on their own ports and data directories,
restarted mid-run, and always stopped by PID afterwards, so the shared servers that other tests
use are never disturbed.

A missing server binary skips the test locally and fails it under APALIS_REQUIRE_SERVICES=1
(the convention of `tests/services.py`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["PG_BIN", "PrivateServer", "free_port", "need_binary", "owned_tmpdir", "private_mariadb", "private_postgres"]

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def need_binary(path: str | Path) -> str:
    """`path` (or the command found on PATH) if it exists; otherwise skip (fail under CI)."""
    found = str(path) if Path(path).is_file() else shutil.which(str(path))
    if found:
        return found
    reason = f"{path} is not installed"
    if os.environ.get("APALIS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"APALIS_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def free_port(preferred: int) -> int:
    """`preferred` if nothing listens there on loopback, else a free ephemeral port."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise AssertionError("no free port on 127.0.0.1")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(slots=True)
class PrivateServer:
    """One server process (`argv`) on 127.0.0.1:`port`, its output in `log`."""

    name: str
    argv: Sequence[str]
    port: int
    log: Path
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    ready: Callable[[int], bool] | None = None
    """Beyond an open port: is the server ready for clients (PostgreSQL listens while starting)?"""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self, timeout: float = 30) -> None:
        """Start the server and wait (bounded) until its port answers."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                list(self.argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=self.user,
                group=self.user,
                start_new_session=True,  # a Ctrl-C of pytest does not reach it before the fixture's stop
            )
        deadline = time.monotonic() + timeout
        while not (_answers(self.port) and (self.ready is None or self.ready(self.port))):
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.process.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} did not listen on {self.port} within {timeout:.0f} s:\n{self.tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 20) -> None:
        """Stop the server by its PID (`stop_signal`, then SIGKILL after `timeout`); idempotent."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(self.stop_signal)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self, down_for: float = 2.0) -> None:
        """Stop, stay down for `down_for` seconds, start again on the same data."""
        self.stop()
        assert not _answers(self.port), f"{self.name} still answers after its stop"
        time.sleep(down_for)
        self.start()

    def tail(self, chars: int = 3000) -> str:
        """The end of the server's log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def owned_tmpdir(prefix: str, user: str | None) -> Path:
    """A fresh directory in /tmp (readable by `user`, unlike pytest's root-only tmp_path)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if user is not None:
        shutil.chown(path, user, user)
    return path


def _pg_ready(pg_isready: str, port: int) -> bool:
    done = subprocess.run(
        [pg_isready, "-q", "-h", "127.0.0.1", "-p", str(port), "-t", "2"], capture_output=True, timeout=10
    )
    return done.returncode == 0


@contextlib.contextmanager
def private_postgres(port: int) -> Iterator[PrivateServer]:
    """A fresh PostgreSQL 15 cluster (trust auth, loopback only) run as the `postgres` user."""
    initdb = need_binary(PG_BIN / "initdb")
    pg_isready = need_binary(PG_BIN / "pg_isready")
    postgres = need_binary(PG_BIN / "postgres")
    base = owned_tmpdir("apalis-chaos-pg-", "postgres")
    data = base / "data"
    server = PrivateServer(
        "postgres",
        [postgres, "-D", str(data), "-p", str(port), "-k", str(base), "-c", "listen_addresses=127.0.0.1"],
        port,
        base / "server.log",
        user="postgres",
        stop_signal=signal.SIGINT,  # "fast" shutdown, as `pg_ctl stop -m fast`
        ready=lambda port: _pg_ready(pg_isready, port),
    )
    try:
        subprocess.run(
            [initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-instructions"],
            check=True,
            capture_output=True,
            user="postgres",
            group="postgres",
            timeout=120,
        )
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


_MARIADB_INSTALL = ("--auth-root-authentication-method=normal", "--skip-test-db")


@contextlib.contextmanager
def private_mariadb(port: int) -> Iterator[PrivateServer]:
    """A fresh MariaDB data directory (root without a password over TCP, loopback only)."""
    install = need_binary("mariadb-install-db")
    mariadbd = need_binary("mariadbd")
    base = owned_tmpdir("apalis-chaos-mariadb-", "mysql")
    data = base / "data"
    argv = [mariadbd, "--no-defaults", f"--datadir={data}", f"--port={port}", "--bind-address=127.0.0.1"]
    argv += [f"--socket={base}/sock", f"--pid-file={base}/pid", "--user=mysql"]
    server = PrivateServer("mariadb", argv, port, base / "server.log")
    try:
        subprocess.run(
            [install, "--no-defaults", f"--datadir={data}", "--user=mysql", *_MARIADB_INSTALL],
            check=True,
            capture_output=True,
            timeout=120,
        )
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
