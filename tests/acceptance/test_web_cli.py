"""`apalis web` and `apalis run --web` as a person starts them: the address, the mode, a refusal."""

from __future__ import annotations

import json
import re
import signal
import socket
import urllib.error
import urllib.request

import pytest

from .browser import eventually
from .conftest import Apalis


def get(url: str) -> tuple[int, str]:
    """Status and body of a GET (0 and the reason while nothing listens yet)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def test_web_serves_on_the_address_it_prints_and_stops_on_sigterm(apalis: Apalis) -> None:
    assert apalis("push", '{"n": 1}').code == 0
    board = apalis.start("web", "--addr", "127.0.0.1:0")
    try:
        assert board.stdout is not None
        line = board.stdout.readline()
        match = re.fullmatch(
            r"apalis web: serving (http://127\.0\.0\.1:\d+)/ \(read-only \(--admin for actions\)\)\n", line
        )
        assert match, line
        status, body = get(match.group(1) + "/api/queues")
        assert status == 200
        assert json.loads(body)[0]["counts"]["pending"] == 1
        status, body = get(match.group(1) + "/api/workers")
        assert (status, json.loads(body)) == (200, [])
    finally:
        board.send_signal(signal.SIGTERM)
        _, err = board.communicate(timeout=30)
    assert board.returncode == 0, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["web", "--addr", "0.0.0.0:0", "--admin"],
            "apalis: error: --addr: 0.0.0.0 is not a loopback address, and --admin there needs a token: "
            "set APALIS_WEB_TOKEN (clients then send it as a bearer token or sign in with it)",
        ),
        (["web", "--addr", "localhost"], 'apalis: error: --addr: expected HOST:PORT such as "127.0.0.1:8080"'),
        (
            ["run", "--burst", "--web-admin"],
            "apalis: error: --web-admin: give the board's address with --web HOST:PORT",
        ),
        (["run", "--burst", "--web", "[::1:80"], 'apalis: error: --web: the IPv6 host "[::1:80"'),
    ],
)
def test_unsafe_or_bad_addresses_are_refused_in_one_line(apalis: Apalis, argv: list[str], message: str) -> None:
    result = apalis(*argv)
    assert result.code == 2
    assert result.err.startswith(message), result.err
    assert len(result.err.splitlines()) == 1


def test_a_busy_port_is_one_line(apalis: Apalis) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = apalis("web", "--addr", f"127.0.0.1:{port}")
    assert result.code == 2
    assert result.err.startswith(f"apalis: error: --addr: cannot listen on 127.0.0.1:{port}: "), result.err


def test_the_daemon_serves_the_board_with_metrics_and_healthz(apalis: Apalis) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert apalis("push", '{"n": 1}').code == 0
    daemon = apalis.start("run", "--no-live", "--web", f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: get(url + "/healthz")[0] == 200, what="a healthy daemon")
        eventually(lambda: '"done":1' in get(url + "/api/queues")[1].replace(" ", ""), what="the run")
        status, text = get(url + "/metrics")
        assert status == 200
        assert 'apalis_tasks_total{queue="echo",status="done",worker="echo"} 1.0' in text
        status, page = get(url + "/workers")
        assert status == 200
        assert socket.gethostname() in page
        request = urllib.request.Request(url + "/api/queues/echo/purge", data=b'{"status": "done"}', method="POST")
        request.add_header("content-type", "application/json")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        refused.value.close()
        assert refused.value.code == 403  # read-only without --web-admin
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=30)
    assert daemon.returncode == 0
