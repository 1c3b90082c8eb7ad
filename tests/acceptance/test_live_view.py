"""The live view of `apalis run`, as the real daemon draws it in 80 columns: every count whole,
each queue's depth counted by the store, the errors with their task ids."""

from __future__ import annotations

from .conftest import CONFIG, Apalis

TWO_WORKERS = (
    CONFIG
    + """
[[workers]]
name = "bad"
handler = "acc_handlers:boom"
max_attempts = 1
poll_interval = "100ms"
"""
)


class In80Columns(Apalis):
    """`apalis` in a terminal of the most common width."""

    def env(self) -> dict[str, str]:
        return {**super().env(), "COLUMNS": "80"}


def test_live_view_in_80_columns(apalis: Apalis) -> None:
    apalis = In80Columns(apalis.cwd, apalis.config)
    apalis.write_config(TWO_WORKERS)
    for n in range(5):
        assert apalis("push", "--worker", "echo", f'{{"n": {n}}}').code == 0
    assert apalis("push", "--worker", "echo", "--delay", "1h", '{"n": "later"}').code == 0
    failed = [apalis("push", "--worker", "bad", "{}").out.strip() for _ in range(2)]
    run = apalis("run", "--burst", "--live")
    assert run.code == 0, run.err
    lines = run.out.splitlines()  # not a terminal: the last frame only
    assert all(len(line) <= 80 for line in lines), run.out
    rows = [line.split() for line in lines]
    # worker, queue, state, running, done, retried, killed (then tasks/s)
    assert ["echo", "echo", "stopped", "0", "5", "0", "0"] in [row[:7] for row in rows]
    assert ["bad", "bad", "stopped", "0", "0", "0", "2"] in [row[:7] for row in rows]
    # queue, ready, scheduled, running (then start p50), as the store counts them at the end
    assert ["echo", "0", "1", "0"] in [row[:4] for row in rows]
    assert ["bad", "0", "0", "0"] in [row[:4] for row in rows]
    for task_id in failed:
        assert any(task_id in line and "killed" in line for line in lines), run.out
    assert "ValueError: boom" in run.out
