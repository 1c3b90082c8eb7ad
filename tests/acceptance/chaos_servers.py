"""Private server instances for the chaos tests: started on their own ports and data directories,
restarted mid-run, and always stopped by PID afterwards, so the shared servers that other tests
use are never disturbed. They also die with the test process when it is killed (SIGKILL, a CI
timeout) before it could stop them: `spawn_server`.

A missing server binary skips the test locally and fails it under APALIS_REQUIRE_SERVICES=1
(the convention of `tests/services.py`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "PG_BIN",
    "PrivateServer",
    "free_port",
    "mariadb_database",
    "need_binary",
    "owned_tmpdir",
    "pg_database",
    "private_mariadb",
    "private_nats",
    "private_postgres",
    "private_rabbitmq",
    "private_redis",
    "spawn_server",
]

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


def free_port() -> int:
    """A loopback port nothing listens on, drawn at random below the kernel's ephemeral range:
    test runs side by side (another suite's private servers) do not pick the same one, and a
    server stopped for a restart does not find its port taken by another run's server."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port on 127.0.0.1")


_forker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="private-server-forker")
"""The one thread that forks every private server. The kernel's parent-death signal fires when
the *thread* that forked a child ends, not its process: a server started from a short-lived
thread (`asyncio.to_thread`, whose pool ends with the test's event loop) would be killed with it.
This thread lives as long as the test process."""


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
"""Loaded here, not in the forked child: after Popen's switch of user the child may not read
this Python's modules (under /root), and an import there fails the start."""
_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """In the forked child, before exec: be SIGKILLed when the forking thread of `parent` ends."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)


def spawn_server(argv: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(argv, **popen)` of a server the kernel SIGKILLs when this test process
    dies, however it dies (Linux's PR_SET_PDEATHSIG; elsewhere a plain Popen). The server must
    run in the foreground as this child (no daemonizing, no switch of user of its own: pass
    `user=`, which Popen applies before the signal is set; a later setuid would clear it)."""
    parent = os.getpid()

    def fork() -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(argv), preexec_fn=functools.partial(_die_with, parent), **popen)

    return _forker.submit(fork).result()


_REAPER = """
import ctypes, os, signal, sys
group, parent = int(sys.argv[1]), int(sys.argv[2])
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
ctypes.CDLL(None).prctl(1, signal.SIGUSR1, 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() == parent:  # else the test process died already
    signal.sigwait({signal.SIGUSR1})
os.killpg(group, signal.SIGKILL)
"""
"""The watcher of a server started through a wrapper script (RabbitMQ's runs the Erlang VM as a
grandchild, which no parent-death signal reaches): it kills the server's whole process group
when the test process dies."""


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
    env: Mapping[str, str] | None = None
    pid_file: Path | None = None
    """Where a server started through a wrapper script writes its own PID: that process is the
    one stopped (RabbitMQ's script runs the Erlang VM as a child)."""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    reaper: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self, timeout: float = 30) -> None:
        """Start the server and wait (bounded) until its port answers."""
        with self.log.open("ab") as out:
            self.process = spawn_server(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=self.user,
                group=self.user,
                env=None if self.env is None else {**os.environ, **self.env},
                start_new_session=True,  # a Ctrl-C of pytest does not reach it before the fixture's stop
            )
        if self.pid_file is not None:  # its own session: the group holds the wrapper's descendants
            # Forked by the forker thread too (its death signal is bound to it); no death signal
            # of its own before it sets its own, so that a death meanwhile is seen: getppid.
            reap = [sys.executable, "-c", _REAPER, str(self.process.pid), str(os.getpid())]
            self.reaper = _forker.submit(subprocess.Popen, reap).result()
        deadline = time.monotonic() + timeout
        while not (_answers(self.port) and (self.ready is None or self.ready(self.port))):
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.process.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} did not listen on {self.port} within {timeout:.0f} s:\n{self.tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 20, *, crash: bool = False) -> None:
        """Stop the server by its PID (`stop_signal`, then SIGKILL after `timeout`; with `crash`,
        SIGKILL at once: every client loses it in the same instant); idempotent."""
        if self.reaper is not None:
            self.reaper.kill()
            self.reaper.wait()
            self.reaper = None
        process = self.process
        if process is None or process.poll() is not None:
            return
        server = self._server_pid()
        stop_signal = signal.SIGKILL if crash else self.stop_signal
        if server is None:
            process.send_signal(stop_signal)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, stop_signal)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if server is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server, signal.SIGKILL)
            process.kill()
            process.wait(timeout=10)
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)

    def _server_pid(self) -> int | None:
        if self.pid_file is None:
            return None
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def restart(self, down_for: float = 2.0, *, crash: bool = False) -> None:
        """Stop (with `crash`, by SIGKILL), stay down for `down_for` seconds, start again on the
        same data."""
        self.stop(crash=crash)
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


def _set_up(argv: Sequence[str], user: str | None = None) -> None:
    """Run a server's setup command (initdb, mariadb-install-db); a failure says what it printed
    (a bare CalledProcessError, as before, left a failed install under load undiagnosable)."""
    done = subprocess.run(list(argv), capture_output=True, text=True, user=user, group=user, timeout=120)
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-3000:]
        raise AssertionError(f"{Path(argv[0]).name} exited {done.returncode}:\n{output}")


_templates: dict[str, Path] = {}
_templates_lock = threading.Lock()


def _installed(kind: str, user: str, install: Callable[[Path, Path], None], data: Path) -> None:
    """`data` as a fresh install makes it: `install(data_dir, tmpdir)` runs once per test process,
    into a template of its own (removed at exit) that is never started; every server copies it
    (`cp -a`: owner and modes kept). initdb or mariadb-install-db takes seconds each time (3.8 s
    each on the shared machine), a copy a tenth of that."""
    with _templates_lock:
        template = _templates.get(kind)
        if template is None:
            base = owned_tmpdir(f"apalis-chaos-{kind}-template-", user)
            atexit.register(shutil.rmtree, base, True)
            install(base / "data", base)
            template = _templates[kind] = base / "data"
    done = subprocess.run(["cp", "-a", str(template), str(data)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"copying the {kind} template {template} exited {done.returncode}: {done.stderr}")


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
        _installed(
            "postgres",
            "postgres",
            lambda into, _: _set_up(
                [initdb, "-D", str(into), "-A", "trust", "-U", "postgres", "--no-instructions"], user="postgres"
            ),
            data,
        )
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


_MARIADB_INSTALL = ("--auth-root-authentication-method=normal", "--skip-test-db")


@contextlib.contextmanager
def private_mariadb(port: int, *, binlog: bool = False) -> Iterator[PrivateServer]:
    """A fresh MariaDB data directory (root without a password over TCP, loopback only); with
    `binlog`, binary logging on, as on a production server (replication, point-in-time backups)."""
    install = need_binary("mariadb-install-db")
    mariadbd = need_binary("mariadbd")
    base = owned_tmpdir("apalis-chaos-mariadb-", "mysql")
    data = base / "data"
    argv = [mariadbd, "--no-defaults", f"--datadir={data}", f"--port={port}", "--bind-address=127.0.0.1"]
    # Temporary tables in a folder of its own: a MariaDB that starts removes every `#sql` file in
    # its tmpdir, and in the default /tmp a private server (re)started beside another's install
    # removed that install's temporary table ("Unknown table 'mysql.tmp_user_sys'": it failed).
    argv += [f"--socket={base}/sock", f"--pid-file={base}/pid", f"--tmpdir={base}"]
    argv += [f"--log-bin={base}/binlog", "--server-id=1"] if binlog else []
    # Started as `mysql` (not root with --user=mysql): its own switch of user would clear the
    # parent-death signal that stops it with a killed test process.
    server = PrivateServer("mariadb", argv, port, base / "server.log", user="mysql")
    try:
        _installed(
            "mariadb",
            "mysql",
            lambda into, tmp: _set_up(
                [install, "--no-defaults", f"--datadir={into}", "--user=mysql", f"--tmpdir={tmp}", *_MARIADB_INSTALL]
            ),
            data,
        )
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def private_redis(port: int, *, persist: bool = True, password: str | None = None) -> Iterator[PrivateServer]:
    """A Redis that persists every write (`appendfsync always`): a Redis that persists nothing
    loses its data on restart by design, so a durable queue on Redis needs persistence. Without
    `persist` it keeps nothing on disk (a test of reaching it again, not of what it kept)."""
    binary = need_binary("redis-server")
    base = owned_tmpdir("apalis-chaos-redis-", None)
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(base), "--daemonize", "no"]
    argv += ["--appendonly", "yes", "--appendfsync", "always"] if persist else ["--appendonly", "no"]
    argv += ["--save", ""] + (["--requirepass", password] if password is not None else [])
    server = PrivateServer("redis", argv, port, base / "server.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def private_nats(port: int) -> Iterator[PrivateServer]:
    """A NATS server with JetStream, its streams stored in a temporary directory."""
    binary = need_binary("nats-server")
    base = owned_tmpdir("apalis-chaos-nats-", None)
    argv = [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(base)]
    server = PrivateServer("nats", argv, port, base / "server.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def private_rabbitmq(port: int) -> Iterator[PrivateServer]:
    """A RabbitMQ node of its own (own node name, ports, database and cookie), run as the
    `rabbitmq` user; `guest` may log in over loopback."""
    binary = need_binary("rabbitmq-server")
    base = owned_tmpdir("apalis-chaos-rabbitmq-", "rabbitmq")
    env = {
        "HOME": str(base),  # the Erlang cookie of this node only
        "RABBITMQ_NODENAME": f"apalis-chaos-{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),  # absent: the defaults
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(base / "pid"),
    }
    server = PrivateServer(
        "rabbitmq", [binary], port, base / "server.log", user="rabbitmq", env=env, pid_file=base / "pid"
    )
    try:
        server.start(timeout=60)
        yield server
    finally:
        server.stop(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def pg_database(server: PrivateServer, name: str, *, pgmq: bool = False) -> str:
    """The URL of a new, empty database `name` on a private PostgreSQL (with pgmq installed)."""
    import psycopg

    from tests.integration.pgmq_install import pgmq_sql

    admin = f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    url = f"postgresql://postgres@127.0.0.1:{server.port}/{name}"
    if pgmq:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute(pgmq_sql().encode())
    return url


def mariadb_database(server: PrivateServer, name: str) -> str:
    """The URL of database `name` (created if missing) on a private MariaDB."""
    import asyncio

    import asyncmy

    async def create() -> None:
        conn = await asyncmy.connect(host="127.0.0.1", port=server.port, user="root", password="")
        try:
            async with conn.cursor() as cur:
                await cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}`")
        finally:
            conn.close()

    asyncio.run(create())
    return f"mysql://root@127.0.0.1:{server.port}/{name}"
