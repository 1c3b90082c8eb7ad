"""`python -m bench.claimcount`: PostgreSQL's claim path counted, the server's instructions of one
variant's drain under callgrind. Not part of the suite.

`bench.claimpath` reads a backend's CPU from `/proc`, which the load of a shared machine moves
by more than a change to the claim is worth; a count does not move. Here the same drain as
`bench.claimpath`'s (`--tasks` over `--keys` keys, claims of `--want`, each carrying the ack of the
last one's tasks; `limited` with `--hot` tasks of one key waiting behind one that runs for good)
runs on a connection of its own, opened after the pushes, so that its backend does nothing but
the drain; once it exits, callgrind writes that backend's count. A server of your own, started
under callgrind with one output file per process:

    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=/tmp/cg/cg.%p \\
        postgres -D DATA -p 15133 -c autovacuum=off -c fsync=off
    python -m bench.claimcount --url postgresql://postgres@127.0.0.1:15133/test --callgrind-dir /tmp/cg \\
        --variants plain,limited,limited:my_claim --install my_claim.sql

Each variant drains in turn, in a schema of its own (`--install` files are filled in as in
`bench.claimpath`). A LISTEN connection on the store's channel stays open during each drain, as
a daemon's does, so that a NOTIFY costs what it costs in a drain. Read the counts with
`callgrind_annotate --inclusive=yes DIR/cg.PID`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from apalis_postgres.schema import COLUMNS, load_statements

from .claimpath import _call, _Drain, _fill, _params
from .stores import DEFAULT_URLS, open_store, prepare

__all__ = ["main"]


def _summary(path: Path, wait: float = 120.0) -> int:
    """The instruction count callgrind writes for a backend once it exits."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1])
        time.sleep(0.5)
    raise TimeoutError(f"no callgrind summary in {path}")


def count(args: argparse.Namespace, variant: str) -> tuple[int, int, int]:
    """Drain one variant's queue on a backend of its own: (its pid, tasks drained, calls)."""
    url = args.url or DEFAULT_URLS["postgres"]
    target = prepare("postgres", url, uuid.uuid4().hex[:8])

    async def migrate() -> None:
        await (await open_store(target)).close()

    asyncio.run(migrate())
    schema = target.options["schema"]
    sql, quoted = load_statements(schema), f'"{schema}"'
    queue = f"q_{variant.replace(':', '_')}"
    with psycopg.connect(url, autocommit=True) as setup:
        for path in args.install:
            text = Path(path).read_text().replace("{schema}", quoted).replace("{channel}", f"'{schema}'")
            setup.execute(text.replace("{columns}", COLUMNS).encode())
        _fill(setup, schema, queue, 0 if variant == "plain" else args.hot, args.tasks, args.keys)
    function = None if variant == "plain" else variant.partition(":")[2] or "limit_claim"
    drain = _Drain(queue, f"w-{variant}", function)
    with (
        psycopg.connect(url, autocommit=True) as listener,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        listener.execute(f'LISTEN "{schema}"'.encode())
        pid: int = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        text = sql["ack_done"] if function is None else sql["ack_done_limit_claim"]
        text = text.replace(f"{quoted}.limit_claim(", f"{quoted}.{function}(")
        while True:
            rows: list[Any] = _call(conn, pid, text, _params(schema, drain, args.want))[0]
            if function is not None:
                drain.after, rows = rows[-1][15], rows[:-1]
            drain.ids = [row[0] for row in rows]
            drain.tasks, drain.calls = drain.tasks + len(drain.ids), drain.calls + 1
            if not drain.ids:
                break
    with psycopg.connect(url, autocommit=True) as cleanup:
        cleanup.execute(f"DROP SCHEMA IF EXISTS {quoted} CASCADE".encode())
    return pid, drain.tasks, drain.calls


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.claimcount", description=__doc__.split("\n")[0])
    parser.add_argument("--url", help=f"a PostgreSQL URL, the server under callgrind ({DEFAULT_URLS['postgres']})")
    parser.add_argument("--callgrind-dir", required=True, help="where callgrind writes cg.PID")
    parser.add_argument("--variants", default="plain,limited")
    parser.add_argument("--install", action="append", default=[], metavar="FILE")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--hot", type=int, default=2000)
    parser.add_argument("--want", type=int, default=48)
    args = parser.parse_args()
    for variant in args.variants.split(","):
        pid, tasks, calls = count(args, variant)
        total = _summary(Path(args.callgrind_dir) / f"cg.{pid}")
        print(f"{variant}: {total:,} instructions, {total / max(tasks, 1):,.0f} a task ({tasks} in {calls} calls)")


if __name__ == "__main__":
    main()
