"""The benchmark's server CPU per task (bench.servercpu, bench.report, bench.limits): reading
`/proc`, finding the server that listens on a port, and how the report shows the figure, a
missing one as "-". Nothing here is timed."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
from pathlib import Path
from typing import Any

import bench.limits
import bench.servercpu
import pytest
from bench.limits import scaled_tasks
from bench.limits_verdict import judge
from bench.report import baseline_ratios, print_report
from bench.servercpu import (
    PG_SCOPE,
    WHOLE_SCOPE,
    ServerCpu,
    listening_inodes,
    listening_pid,
    name_target,
    parse_stat,
    proc_cpu,
)
from bench.stores import prepare
from rich.console import Console

# A /proc/PID/stat line whose command name holds a space and a ')': utime 250, stime 50 ticks.
_STAT = "4242 (redis (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 5 0 100 1000 200"


def test_parse_stat_adds_user_and_system_time_past_a_command_name_with_parentheses() -> None:
    assert parse_stat(_STAT, tick=100) == 3.0


def test_proc_cpu_reads_a_process_and_is_zero_once_it_is_gone(tmp_path: Path) -> None:
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "stat").write_text(_STAT)
    assert proc_cpu(4242, proc=str(tmp_path)) == parse_stat(_STAT)
    assert proc_cpu(4243, proc=str(tmp_path)) == 0.0
    assert proc_cpu(os.getpid()) > 0.0  # this test process has run


_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1
   1: 0100007F:1920 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41000 1
   2: 0100007F:18EB 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 55555 1
"""


def test_listening_inodes_takes_the_listening_socket_of_the_port_only() -> None:
    assert listening_inodes(6379, [_TCP]) == {"31337"}  # 0x18EB; the established one is not it
    assert listening_inodes(6432, [_TCP]) == {"41000"}
    assert listening_inodes(5432, [_TCP]) == set()


def test_listening_pid_finds_the_process_that_listens_on_a_port() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert listening_pid(port) == os.getpid()
    assert listening_pid(port) is None


def test_a_whole_server_figure_covers_the_process_on_the_urls_port() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        cpu = ServerCpu("redis", f"redis://127.0.0.1:{server.getsockname()[1]}/0")
        assert cpu.scope == WHOLE_SCOPE
        cpu.start()
        sum(range(200_000))  # this process is "the server" here: it spends some CPU
        spent = cpu.spent()
    assert spent is not None
    assert spent >= 0.0


def test_in_process_stores_and_unnamed_postgres_have_no_server_figure() -> None:
    for cpu in (ServerCpu("memory", "memory://"), ServerCpu("sqlite", ""), ServerCpu("postgres", "postgresql://x")):
        assert cpu.scope is None
        cpu.start()
        assert cpu.spent() is None
        assert cpu.per_task_us(100) is None


def test_a_server_on_another_machine_has_no_figure() -> None:
    for cpu in (
        ServerCpu("redis", "redis://cache.example:6379/0"),
        ServerCpu("postgres", "postgresql://db.example/x", "n"),
    ):
        assert cpu.scope is None
        cpu.start()
        assert cpu.spent() is None
    assert ServerCpu("postgres", "postgresql://postgres@/test", "n").scope == PG_SCOPE  # a Unix socket


def test_name_target_keeps_an_application_name_given_as_an_option() -> None:
    pg = prepare("postgres", None, "t1")
    pg.options["application_name"] = "mine"
    assert name_target(pg, "bench-t1") == "mine"
    assert pg.application_name == "mine"


def test_name_target_names_postgres_and_pgmq_connections_only() -> None:
    pg = prepare("postgres", None, "t1")
    assert name_target(pg, "bench-t1") == "bench-t1"
    assert pg.options["application_name"] == "bench-t1"
    assert pg.application_name == "bench-t1"
    assert ServerCpu(pg.kind, pg.url, pg.application_name).scope == PG_SCOPE
    mq = prepare("pgmq", None, "t1")
    assert name_target(mq, "x" * 80) == "x" * 63  # PostgreSQL's limit
    assert mq.url.endswith("?application_name=" + "x" * 63)
    redis = prepare("redis", None, "t1")
    assert name_target(redis, "bench-t1") is None
    assert "application_name" not in redis.options


def test_min_seconds_scales_the_task_count_up_never_down() -> None:
    assert scaled_tasks(5000, 2000.0, 1.5) == 5000
    assert scaled_tasks(5000, 10_000.0, 1.5) == 15_000
    assert scaled_tasks(5000, 10_001.0, 1.5) == 15_100  # rounded up to a hundred
    assert scaled_tasks(5000, 10_000.0, 0.0) == 5000  # --min-seconds 0: as given
    assert scaled_tasks(5000, float("nan"), 1.5) == 5000


def test_limits_ratio_is_saturated_over_unlimited_of_worker_and_server_cpu(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The limited claim runs on the server: the worker's share alone (20 -> 22 us) would hide
    # that saturated costs 1.5 times the unlimited drain's CPU per task (20 + 30 -> 22 + 53).
    figures = {"unlimited": (20.0, 30.0), "saturated": (22.0, 53.0)}

    async def drain(store: Any, mode: str, *args: Any) -> bench.limits.Drained:
        worker, server = figures.get(mode, (21.0, 40.0))
        return bench.limits.Drained(1000.0, 1000.0, worker, server, worker, server - 8.0)

    monkeypatch.setattr(bench.limits, "drain", drain)
    asyncio.run(bench.limits.run(["memory"], tasks=10, keys=2, hot=5, rounds=1))
    out = capsys.readouterr().out
    saturated = next(line for line in out.splitlines() if line.startswith("│ saturated"))
    assert saturated.split("│")[-2].strip() == "1.50"  # CPU / unlimited, worker + server
    assert "memory: no head-of-line blocking: met, ratio 1.00 (range 1.00-1.00 over 1 rounds)" in out


def test_the_bar_is_judged_on_each_rounds_adjacent_pair_not_on_rates_taken_apart(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The machine slows down and speeds up between rounds (drift); within a round the saturated
    # drain keeps 0.8 of the unlimited one beside it. The medians of each mode's rates taken
    # apart would say 3000 / 3000 = 1.0, "met"; the rounds' own ratios say 0.8.
    unlimited = iter([1000.0, 3000.0, 5000.0, 3000.0, 5000.0])
    saturated = iter([800.0, 2400.0, 4000.0, 2400.0, 4000.0])
    calls: list[str] = []

    async def drain(store: Any, mode: str, *args: Any) -> bench.limits.Drained:
        calls.append(mode)
        rate = next(unlimited if mode == "unlimited" else saturated)
        return bench.limits.Drained(rate, rate, 20.0, None, 20.0, None)

    monkeypatch.setattr(bench.limits, "drain", drain)
    verdicts = asyncio.run(
        bench.limits.run(["memory"], tasks=10, keys=2, hot=5, rounds=5, modes=("unlimited", "saturated"))
    )
    verdict = verdicts["memory"]
    assert [round(x, 6) for x in (verdict.median, verdict.low, verdict.high)] == [0.8, 0.8, 0.8]
    assert verdict.rounds == 5
    assert not verdict.met
    # back to back in every round, the first of the two alternating
    assert calls == ["unlimited", "saturated", "saturated", "unlimited"] * 2 + ["unlimited", "saturated"]
    assert (
        "memory: no head-of-line blocking: not met, ratio 0.80 (range 0.80-0.80 over 5 rounds)"
        in capsys.readouterr().out
    )


def test_a_verdict_is_the_median_of_the_rounds_ratios_with_their_range() -> None:
    verdict = judge([0.97, 0.80, 0.92, 1.05, 0.90])
    assert verdict.met  # median 0.92: one slow round does not decide
    assert verdict.line("sqlite") == "sqlite: no head-of-line blocking: met, ratio 0.92 (range 0.80-1.05 over 5 rounds)"
    assert not judge([0.89, 0.95, 0.70]).met


def test_limits_takes_a_url_per_kind_and_always_the_two_modes_the_bar_compares() -> None:
    assert bench.limits.parse_urls(["postgres=postgresql://h:15432/test?a=b", "redis=redis://h:15433/0"]) == {
        "postgres": "postgresql://h:15432/test?a=b",
        "redis": "redis://h:15433/0",
    }
    with pytest.raises(argparse.ArgumentTypeError):
        bench.limits.parse_urls(["postgresql://h/test"])
    assert bench.limits.parse_modes("keyed") == ("unlimited", "keyed", "saturated")
    with pytest.raises(argparse.ArgumentTypeError):
        bench.limits.parse_modes("fast")


def test_a_mark_splits_the_servers_cpu_and_a_process_that_came_after_start_counts_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readings = {4242: 1.0}
    monkeypatch.setattr(bench.servercpu, "proc_cpu", lambda pid, proc="/proc": readings.get(int(pid), 0.0))
    server = ServerCpu("redis", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(server, "_pids", lambda: sorted(readings))
    server.start()
    readings.update({4242: 3.0, 4243: 0.5})  # 4243 came after start
    mark = server.mark()
    assert mark == {4242: 3.0}
    readings.update({4242: 7.0, 4243: 2.0})
    assert server.spent() == 8.0  # 4242: 7 - 1, and 4243 whole
    assert server.spent(since=mark) == 6.0  # 4242: 7 - 3, and 4243 whole


def _drain(conc: int, rate: float, cpu: float, server: float | None) -> dict[str, Any]:
    return {"conc": conc, "n": 100, "done": 100, "complete": True, "rate": rate, "cpu_us_per_task": cpu} | (
        {} if server is None else {"server_cpu_us_per_task": server}
    )


def _backend(kind: str, scope: str | None, server: float | None) -> dict[str, Any]:
    return {
        "kind": kind,
        "worker": "own process",
        "enqueue_bulk": {"rate": 50_000.0},
        "drain": [_drain(10, 8000.0, 61.0, server), _drain(50, 9000.0, 52.0, server)],
        "drain_best": 9000.0,
        "server_cpu_scope": scope,
    }


def _render(doc: dict[str, Any]) -> str:
    out = io.StringIO()
    print_report(doc, Console(file=out, width=400, color_system=None))
    return out.getvalue()


def test_the_report_prints_the_servers_cpu_per_task_beside_the_workers_and_dash_when_unknown() -> None:
    doc = {
        "machine": "2 cores",
        "backends": [
            _backend("postgres", PG_SCOPE, 87.4),
            _backend("redis", WHOLE_SCOPE, 23.0),
            _backend("sqlite", None, None),  # an old JSON or an in-process store: no field at all
        ],
    }
    text = _render(doc)
    assert "server µs/task c10 / c50" in text
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 5}
    assert "61.0 / 52.0" in rows["postgres"]
    assert "87.4 / 87.4" in rows["postgres"]
    assert "23.0 / 23.0 *" in rows["redis"]  # the whole server process: marked
    assert rows["sqlite"].rstrip("│ ").endswith("- / -")
    assert "other clients' work included" in text


def test_the_ceiling_table_sets_ours_cpu_per_task_beside_the_raw_drivers() -> None:
    baselines = [
        {
            "name": "raw redis-py RPOP",
            "store": "redis",
            "k": 100,
            "rate": 60_000.0,
            "cpu_us_per_task": 9.0,
            "server_cpu_us_per_task": 6.5,
            "server_cpu_scope": WHOLE_SCOPE,
        }
    ]
    ours = [_backend("redis", WHOLE_SCOPE, 23.0)]
    rows = baseline_ratios(ours, baselines, [])
    assert rows[0]["ours_conc"] == 50
    assert (rows[0]["ours_cpu_us_per_task"], rows[0]["ours_server_cpu_us_per_task"]) == (52.0, 23.0)
    assert (rows[0]["ceiling_cpu_us_per_task"], rows[0]["ceiling_server_cpu_us_per_task"]) == (9.0, 6.5)
    text = _render({"machine": "2 cores", "backends": ours, "baselines": baselines, "ceiling_ratios": rows})
    assert "52.0 + 23.0 = 75.0" in text
    assert "9.0 + 6.5 = 15.5" in text
    no_server = baseline_ratios([_backend("redis", None, None)], [{**baselines[0], "server_cpu_us_per_task": None}], [])
    text = _render({"machine": "2 cores", "backends": ours, "ceiling_ratios": no_server})
    assert "52.0 + -" in text
    assert "9.0 + -" in text


def test_the_bar_is_judged_on_the_steady_drains(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A queue's one-time setup (pgmq's key index made by the saturated drain's first claim) slows
    # the saturated drain's first fifth: over the whole drain 0.5 of unlimited's rate, over its
    # last four fifths 0.95. The verdict is the steady one.
    async def drain(store: Any, mode: str, *args: Any) -> bench.limits.Drained:
        if mode == "unlimited":
            return bench.limits.Drained(1000.0, 1000.0, 20.0, None, 20.0, None)
        return bench.limits.Drained(500.0, 950.0, 20.0, None, 20.0, None)

    monkeypatch.setattr(bench.limits, "drain", drain)
    verdicts = asyncio.run(
        bench.limits.run(["memory"], tasks=10, keys=2, hot=5, rounds=3, modes=("unlimited", "saturated"))
    )
    assert round(verdicts["memory"].median, 6) == 0.95
    out = capsys.readouterr().out
    assert "memory: no head-of-line blocking: met, ratio 0.95 (range 0.95-0.95 over 3 rounds)" in out
    assert "whole drains: 0.50" in out
