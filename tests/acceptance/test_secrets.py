"""Secrets never print: `check`, `push`, `run` (its logs and errors) and `inspect` against stores
that cannot be reached or refuse the password, with every URL and DSN form the stores accept.
And an unreachable store is reported at once: open tries it once, `apalis run` waits for it."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.services import need_server

from .conftest import Apalis, lines

SECRET = "S3cr3tPw"


@dataclass(frozen=True)
class Form:
    """A backend table whose URL carries SECRET, and the server it needs (None: none)."""

    kind: str
    url: str
    server: str | None = None

    def config(self) -> str:
        return (
            f'[backends.main]\nkind = "{self.kind}"\nurl = "{self.url}"\n\n'
            '[[workers]]\nname = "w"\nhandler = "acc_handlers:ok"\n'
        )


FORMS = {
    # libpq's key=value string: the URL error used to print it whole
    "postgres-dsn": Form("postgres", f"host=127.0.0.1 port=1 user=postgres password={SECRET} dbname=test"),
    # an unencoded '@': libpq takes the rest of the password for the host and names it
    "postgres-at": Form("postgres", f"postgresql://postgres:p@{SECRET}@127.0.0.1:1/test"),
    "pgmq-at": Form("pgmq", f"postgresql://postgres:p@{SECRET}@127.0.0.1:1/test"),
    # query-string secrets
    "postgres-sslpassword": Form("postgres", f"postgresql://postgres@127.0.0.1:1/test?sslpassword={SECRET}"),
    "postgres-password-query": Form("postgres", f"postgresql://postgres@127.0.0.1:1/test?password={SECRET}"),
    "mysql-password-query": Form("mysql", f"mysql://root@127.0.0.1:1/test?password={SECRET}"),
    "redis-password-query": Form("redis", f"redis://127.0.0.1:1/0?password={SECRET}"),
    # IPv6 host
    "postgres-ipv6": Form("postgres", f"postgresql://postgres:{SECRET}@[::1]:1/test"),
    # an unencoded '/' or '#': the URL no longer parses as the user meant, and drivers say so
    "mysql-slash": Form("mysql", f"mysql://root:ab/{SECRET}@127.0.0.1:1/test"),
    "redis-hash": Form("redis", f"redis://:{SECRET}#x@127.0.0.1:1/0"),
    "rsmq-at": Form("rsmq", f"redis://:{SECRET}@x@127.0.0.1:1/0"),
    "amqp-at": Form("amqp", f"amqp://guest:{SECRET}@x@127.0.0.1:1/"),
    # tokens and comma lists
    "nats-token": Form("nats", f"nats://{SECRET}@127.0.0.1:1"),
    "nats-list": Form("nats", f"nats://u:{SECRET}@127.0.0.1:1,nats://u:{SECRET}@127.0.0.1:2"),
    # another store's URL given to sqlite
    "sqlite-given-a-dsn": Form("sqlite", f"host=127.0.0.1 user=app password='{SECRET} x' dbname=app"),
    # a server that refuses the password
    "mysql-wrong-password": Form("mysql", f"mysql://root:{SECRET}@127.0.0.1:3306/test", "mysql"),
    "redis-wrong-password": Form("redis", f"redis://nobody:{SECRET}@127.0.0.1:6379/0", "redis"),
    "amqp-wrong-password": Form("amqp", f"amqp://guest:{SECRET}@127.0.0.1:5672/", "amqp"),
}


def _pieces() -> list[str]:
    # The secret, and any piece of it long enough to identify it.
    return [SECRET, SECRET[:5], SECRET[-5:]]


def assert_secret_absent(text: str) -> None:
    for piece in _pieces():
        assert piece not in text, text


@pytest.mark.parametrize("name", FORMS)
def test_check_and_push_never_print_the_secret(apalis: Apalis, name: str) -> None:
    form = FORMS[name]
    if form.server is not None:
        need_server(form.server)
    apalis.write_config(form.config())
    check = apalis("check")
    push = apalis("push", "{}")
    burst = apalis("run", "--burst", "--log-format", "json")
    for result in (check, push, burst):
        assert result.code in (1, 2), result
        assert_secret_absent(result.out + result.err)
        assert "Traceback" not in result.err
    assert len(lines(push.err)) == 1, push.err
    assert lines(burst.err)[-1].startswith("apalis: error: "), burst.err  # after the drivers' log lines


def test_the_waiting_daemon_never_logs_the_secret(apalis: Apalis) -> None:
    apalis.write_config(FORMS["postgres-at"].config())
    daemon = apalis.start("run", "--no-live", "--log-format", "json")
    try:
        assert daemon.stderr is not None
        first = daemon.stderr.readline()  # "cannot open the backend, retrying", with libpq's reason
        assert "retrying" in first
        assert "@127.0.0.1" in first  # the host libpq named is there, with the password piece masked
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert_secret_absent(first + err)


HANDLER_WITH_A_SECRET = f"""
def leaky(args):
    raise ConnectionError("cannot reach postgresql://app@db/app?sslpassword={SECRET}&sslmode=require")
"""


def test_a_handler_error_is_stored_logged_and_shown_without_the_secret(apalis: Apalis) -> None:
    (apalis.cwd / "leaky_handlers.py").write_text(HANDLER_WITH_A_SECRET)
    apalis.write_config(
        '[backends.main]\nkind = "sqlite"\nurl = "sqlite:///jobs.db"\n\n'
        '[[workers]]\nname = "w"\nhandler = "leaky_handlers:leaky"\nmax_attempts = 1\n'
        'middleware = [{ kind = "tracing", level = "info" }]\n'
    )
    assert apalis("push", "{}").code == 0
    run = apalis("run", "--burst", "--log-format", "json", "--log-level", "info")
    assert run.code == 0, run.err
    assert "sslpassword=***" in run.err  # the error is logged, masked
    (row,) = apalis.inspect()
    assert row["last_error"].startswith(
        "ConnectionError: cannot reach postgresql://app@db/app?sslpassword=***&sslmode="
    )
    table = apalis("inspect")
    for result in (run, table):
        assert_secret_absent(result.out + result.err)


@pytest.fixture
def closing_server() -> Iterator[tuple[int, list[int]]]:
    """A port that accepts connections and closes them at once, counting them."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = [0]

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted[0] += 1
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    server.close()
    thread.join(timeout=5)


SCHEMES = {"redis": "redis", "rsmq": "redis", "nats": "nats", "amqp": "amqp", "postgres": "postgresql"}
SCHEMES |= {"mysql": "mysql", "pgmq": "postgresql"}


@pytest.mark.parametrize("kind", SCHEMES)
def test_a_store_that_cannot_be_reached_is_tried_once(
    apalis: Apalis, closing_server: tuple[int, list[int]], kind: str
) -> None:
    # A server that hangs up is reported at once by check, push and run --burst: the reconnect
    # backoff is for a store lost while running (redis used to try 13 times, about 9 s; NATS
    # for ever; pgmq until its connect_timeout). nats-py's first connect tries a server a few
    # times (apalis_nats.connection), and then gives up.
    attempts = 4 if kind == "nats" else 1
    port, accepted = closing_server
    path = "/test" if kind in ("postgres", "mysql", "pgmq") else "/"
    apalis.write_config(Form(kind, f"{SCHEMES[kind]}://u:{SECRET}@127.0.0.1:{port}{path}").config())
    for command in (["check"], ["push", "{}"], ["run", "--burst"]):
        before = accepted[0]
        result = apalis(*command, timeout=60)
        assert result.code == 1, result
        assert 1 <= accepted[0] - before <= attempts, f"{command}: {accepted[0] - before} connections"
        assert_secret_absent(result.out + result.err)
