"""What people see of the other commands: the tables of `inspect`, `workers` and `stats` (the live
view of `apalis run` is `live.py`). Stored text is printed through `printable`, as `Text`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..printable import printable
from ..task import Status

__all__ = ["note", "print_stats", "print_task", "print_tasks", "print_workers"]

_STATUS_STYLE = {
    "pending": "cyan",
    "running": "green",
    "done": "dim",
    "failed": "yellow",
    "killed": "red",
    "cancelled": "magenta",
}


def print_tasks(rows: Sequence[Mapping[str, Any]], *, decode: bool) -> None:
    """`apalis inspect` as a table."""
    table = Table()
    for column in ("id", "status", "att", "run_at (UTC)", "prio"):
        table.add_column(column, no_wrap=True)
    for column in ("args" if decode else "payload", "last error"):
        table.add_column(column, overflow="ellipsis", ratio=1, min_width=12)
    for row in rows:
        table.add_row(
            _cell(row["id"]),
            _status(row["status"]),
            f"{row['attempts']}/{row['max_attempts']}",
            _when(row["run_at"]),
            str(row["priority"]),
            _cell(_clip(_shown_payload(row, decode), 60)),
            _cell(_clip(row["last_error"] or "", 60)),
        )
    _out().print(table if rows else "no tasks")


def print_task(row: Mapping[str, Any], *, decode: bool) -> None:
    """`apalis inspect --id`: one task, every field, nothing clipped (line breaks kept)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    fields: list[tuple[str, Text | str]] = [
        ("id", _cell(row["id"])),
        ("status", _status(row["status"])),
        ("queue", _cell(row["queue"])),
        ("attempts", f"{row['attempts']}/{row['max_attempts']}"),
        ("priority", str(row["priority"])),
        ("run_at (UTC)", _when(row["run_at"])),
        ("created (UTC)", _when(row["created_at"])),
        ("done (UTC)", _when(row["done_at"])),
        ("locked by", _cell(row["lock_by"] or "")),
        ("key", _cell(row["idempotency_key"] or "")),
        (f"payload ({row['payload_encoding']})", _cell(row["payload"], newlines=True)),
    ]
    if decode:
        fields.append(("args", _cell(_shown_payload(row, decode=True), newlines=True)))
    if row["result"] is not None:
        fields.append(("result", _cell(_json(row["result"], indent=2), newlines=True)))
    fields.append(("last error", Text(printable(row["last_error"] or "", newlines=True), style="red")))
    for name, value in fields:
        grid.add_row(name, value)
    _out().print(grid)


def print_workers(rows: Sequence[Mapping[str, Any]]) -> None:
    """`apalis workers` as a table."""
    table = Table()
    for column in ("name", "queue", "host", "pid", "started", "last seen", "running", "layers"):
        table.add_column(column)
    for row in rows:
        running = "" if row["running"] is None else str(row["running"])
        table.add_row(
            _cell(row["name"]),
            _cell(row["queue"]),
            _cell(row["host"]),
            str(row["pid"]),
            _when(row["started_at"]),
            _when(row["last_seen"]),
            running,
            _cell(", ".join(row["layers"])),
        )
    _out().print(table if rows else "no workers registered")


def print_stats(rows: Sequence[Mapping[str, Any]]) -> None:
    """`apalis stats` as a table."""
    table = Table()
    table.add_column("queue")
    for status in Status:
        table.add_column(status.value, justify="right")
    table.add_column("state")
    for row in rows:
        counts = [row.get(status.value) for status in Status]
        state = Text("paused", style="yellow") if row.get("paused") else Text("")
        table.add_row(_cell(row["queue"]), *("-" if n is None else str(n) for n in counts), state)
    _out().print(table)


def _cell(value: Any, *, newlines: bool = False) -> Text:
    # Stored text goes in as `Text`: a string cell would be read as rich markup ("[red]" styles,
    # ":emoji:" codes) and its escape sequences would reach the terminal.
    return Text(printable(str(value), newlines=newlines))


def _status(status: str) -> Text:
    return Text(printable(status), style=_STATUS_STYLE.get(status, ""))


def _when(iso_time: str | None) -> Text:
    return _cell((iso_time or "").replace("T", " ")[:19])


def _shown_payload(row: Mapping[str, Any], decode: bool) -> str:
    if not decode:
        return str(row["payload"])
    if "args" in row:
        return _json(row["args"])
    return str(row.get("decode_error") or "")


def _json(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr, indent=indent)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _out() -> Console:
    console = Console(soft_wrap=False)
    if not console.is_terminal:  # piped: no terminal to fit, keep rows readable
        console = Console(soft_wrap=False, width=200)
    return console


def note(text: str) -> None:
    """A one-line remark on stderr, so stdout stays clean for `--json`."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(Text(printable(f"note: {text}")))
