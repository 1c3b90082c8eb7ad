"""`python -m bench`: measure apalis-cli per backend, beside raw drivers and peers in one run.

    python -m bench --backend sqlite --tasks 20000
    python -m bench --backend memory,sqlite,postgres,redis --baseline
    python -m bench --backend redis,postgres --baseline --peers taskiq-stream,procrastinate,raw-pg
    python -m bench --backend sqlite --json > sqlite.json

See bench/README.md for what each figure means and the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from apalis_cli import loops
from rich.console import Console

from . import baselines
from .control import measure_control, print_control
from .isolation import compare_isolation, print_isolation
from .measure import Settings, measure_backend
from .peers import RUN_ALL, load_peers, merge_rounds, run_peers
from .report import baseline_ratios, peer_ratios, print_report, targets
from .rounds import Opened, RoundSettings, interleave
from .servercpu import name_target
from .soak import print_soak, soak
from .stores import DEFAULT_URLS, KINDS, Unavailable, open_store, prepare

_ERR = Console(stderr=True)


def _log(msg: str) -> None:
    _ERR.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}", highlight=False)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()
    return url


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--backend", default="sqlite", help=f"comma list of kinds: {','.join(KINDS)} (default sqlite)")
    ap.add_argument("--url", default=None, help="store URL (only with one --backend); default: the local server")
    ap.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a store option (VALUE as JSON when it parses, else text), e.g. realtime=true for rsmq; repeatable",
    )
    ap.add_argument("--tasks", type=int, default=20000, help="tasks per enqueue and per drain backlog (20000)")
    ap.add_argument("--conc", default="1,10,50", help="drain concurrencies (1,10,50; '' for none)")
    ap.add_argument("--drain-max", type=float, default=10.0, help="seconds a drain may take before it is cut (10)")
    ap.add_argument("--single-max", type=float, default=6.0, help="seconds for one-at-a-time enqueue at most (6)")
    ap.add_argument("--bulk-max", type=float, default=6.0, help="seconds for each bulk enqueue at most (6)")
    ap.add_argument("--lat-n", type=int, default=500, help="measured latency tasks (500)")
    ap.add_argument("--lat-rate", type=float, default=200.0, help="latency stream rate, tasks/s (200)")
    ap.add_argument("--wakeup-probes", type=int, default=3, help="wake-up probes after 2 s idle, per latency round (3)")
    ap.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds of the push one at a time, ours and peers' (5)"
    )
    ap.add_argument("--push-n", type=int, default=10000, help="pushes one at a time per round (10000)")
    ap.add_argument(
        "--lat-rounds", type=int, default=3, help="interleaved rounds of latency and wake-up, ours and peers' (3)"
    )
    ap.add_argument("--in-process", action="store_true", help="run the worker in this process (memory always does)")
    ap.add_argument("--baseline", action="store_true", help="also measure raw sqlite3 / psycopg / redis-py ceilings")
    ap.add_argument("--peers", default="", help="comma list of peers-bench labels to run now (run_all.sh --list)")
    ap.add_argument("--peers-repeats", type=int, default=1, help="peers-bench passes (1)")
    ap.add_argument(
        "--peers-from",
        default=None,
        metavar="RESULTS.jsonl[@SESSION]",
        help="use an earlier peers-bench results file instead of running peers now (not same-run)",
    )
    ap.add_argument(
        "--out", default="/tmp/apalis-bench", help="folder for logs, peers results and JSON (/tmp/apalis-bench)"
    )
    ap.add_argument(
        "--store-loop", action="store_true", help="also drain through the store alone (no Worker): core vs store"
    )
    ap.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="the event loop of the worker process and of this one, which pushes (auto: as the daemon picks it, "
        "uvloop's when installed unless APALIS_LOOP=asyncio)",
    )
    ap.add_argument("--profile", action="store_true", help="cProfile each worker process into OUT/profiles/")
    ap.add_argument(
        "--isolation",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="instead of the usual figures: a sync handler in threads vs in child processes, ROUNDS interleaved rounds",
    )
    ap.add_argument(
        "--soak",
        type=int,
        default=0,
        metavar="TASKS",
        help="instead of the usual figures: one worker drains TASKS tasks (e.g. 1000000); its RSS at every tenth",
    )
    ap.add_argument("--soak-conc", type=int, default=50, help="the --soak worker's concurrency (50)")
    ap.add_argument(
        "--control",
        action="store_true",
        help="measure the control plane instead: wait and cancel latency, bulk kill/retry rates (--lat-n, --tasks)",
    )
    ap.add_argument("--json", action="store_true", help="print the whole run as one JSON document on stdout")
    args = ap.parse_args(argv)
    args.kinds = [k.strip() for k in args.backend.split(",") if k.strip()]
    if args.url and len(args.kinds) != 1:
        ap.error("--url goes with exactly one --backend")
    for k in args.kinds:
        if k not in DEFAULT_URLS:
            ap.error(f'unknown backend "{k}" (one of {", ".join(KINDS)})')
    if args.peers and not RUN_ALL.is_file():  # said now, not after our own figures were measured
        ap.error(f"--peers needs {RUN_ALL} (set APALIS_PEERS_BENCH to the peers-bench folder)")
    return args


def _interleaved(args: argparse.Namespace) -> bool:
    """Push, latency and wake-up measured in rounds (bench.rounds), not in each backend's run."""
    return not (args.isolation or args.soak or args.control)


async def _one_backend(
    kind: str, args: argparse.Namespace, run_id: str, out: Path, kept: list[Opened]
) -> dict[str, Any]:
    """Measure `kind`; with the rounds to come, its store is left open in `kept`."""
    target = prepare(kind, args.url, run_id)
    for item in args.option:
        key, _, value = item.partition("=")
        try:
            target.options[key] = json.loads(value)
        except ValueError:
            target.options[key] = value
    name_target(target, f"bench-{run_id}")  # PostgreSQL: this run's backends, for the server CPU
    try:
        store = await open_store(target)
    except Unavailable as exc:
        _log(f"[yellow]{kind}: skipped: {exc}[/]")
        await target.cleanup()
        return {"kind": kind, "error": str(exc)}
    settings = Settings(
        tasks=args.tasks,
        single_max_s=args.single_max,
        bulk_max_s=args.bulk_max,
        concs=tuple(int(c) for c in args.conc.split(",") if c.strip()),
        drain_max_s=args.drain_max,
        lat_n=args.lat_n,
        lat_rate=args.lat_rate,
        wakeup_probes=args.wakeup_probes,
        in_process=args.in_process or kind == "memory",
        profile_dir=str(out / "profiles") if args.profile else None,
        store_loop=args.store_loop,
        loop=args.loop,
        run_id=f"bench-{run_id}",
        interleaved=_interleaved(args),
    )
    if settings.profile_dir:
        os.makedirs(settings.profile_dir, exist_ok=True)
    t0 = time.monotonic()
    keep = False
    try:
        if args.isolation:
            return await compare_isolation(store, target, settings, _log, args.isolation)
        if args.control:
            return await measure_control(store, target, settings, _log)
        if args.soak:
            return await soak(store, target, settings, _log, args.soak, args.soak_conc)
        result = await measure_backend(store, target, settings, _log)
        result["url"] = _redact(target.url)
        result["options"] = target.options
        result["secs"] = round(time.monotonic() - t0, 1)
        keep = settings.interleaved
    except Exception as exc:  # one backend failing must not lose the others' figures
        _log(f"[red]{kind}: failed: {type(exc).__name__}: {exc}[/]")
        result = {"kind": kind, "error": f"failed: {type(exc).__name__}: {exc}"}
    finally:
        if keep:
            kept.append(Opened(store, target, settings, result))
        else:
            await _close(store, target)
    return result


async def _close(store: Any, target: Any) -> None:
    try:
        await store.close()
    finally:
        await target.cleanup()


async def _baselines(kinds: list[str]) -> list[dict[str, Any]]:
    out = []
    runs: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
        ("raw sqlite3", lambda: asyncio.to_thread(baselines.raw_sqlite)),
        ("raw psycopg SKIP LOCKED", lambda: asyncio.to_thread(baselines.raw_psycopg, DEFAULT_URLS["postgres"])),
        ("raw redis-py RPOP", lambda: baselines.raw_redis(DEFAULT_URLS["redis"])),
        ("raw aio-pika prefetch", lambda: baselines.raw_amqp(DEFAULT_URLS["amqp"])),
        ("raw nats-py JetStream fetch", lambda: baselines.raw_nats(DEFAULT_URLS["nats"])),
    ]
    for name, fn in runs:
        _log(f"baseline: {name}")
        try:
            out.append(await fn())
        except Exception as exc:  # a server that is down skips its baseline only
            out.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
    return out


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - before any timing
    run_id = time.strftime("%H%M%S", time.gmtime()) + f"_{os.getpid()}"  # a-z0-9_: a valid name anywhere
    load = os.getloadavg()
    doc: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, load {load[0]:.2f} at start, Python {platform.python_version()}"
        f" on {args.loop}",
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "kinds")},
        "backends": [],
        "notes": [
            "Shared 2-core machine: driver, worker and server share the cores with other test runs; read +-20%.",
            "RSS: peak (VmHWM) of the worker's own process; memory runs in-process (whole process, queue included).",
        ],
    }
    kept: list[Opened] = []
    try:
        for kind in args.kinds:
            doc["backends"].append(await _one_backend(kind, args, run_id, out, kept))
        if not _interleaved(args):
            return doc
        peers = await _peers_and_rounds(args, doc, kept, out)
    finally:
        for opened in kept:
            await _close(opened.store, opened.target)
    doc["peers"] = peers
    doc["peer_ratios"] = peer_ratios(doc["backends"], peers)
    doc["ceiling_ratios"] = baseline_ratios(doc["backends"], doc.get("baselines", []), peers)
    doc["targets"] = targets(doc["backends"], doc["peer_ratios"], doc["ceiling_ratios"])
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(out / f"bench-{run_id}.json", "w") as f:  # noqa: ASYNC230 - after every timing
        json.dump(doc, f, indent=1)
    _log(f"saved {out / f'bench-{run_id}.json'}")
    return doc


async def _peers_and_rounds(
    args: argparse.Namespace, doc: dict[str, Any], kept: list[Opened], out: Path
) -> list[dict[str, Any]]:
    """Baselines, the peers' full run, then the interleaved rounds (ours and the peers' push,
    latency and wake-up); the peers' figures with the rounds' medians in place."""
    if args.baseline:
        doc["baselines"] = await _baselines(args.kinds)
    peers: list[dict[str, Any]] = []
    labels: list[str] = []
    session = ""
    if args.peers:
        labels = [x.strip() for x in args.peers.split(",") if x.strip()]
        session = await asyncio.to_thread(run_peers, labels, out / "peers", args.peers_repeats, _log)
        doc["peers_session"], peers = load_peers(out / "peers" / "results.jsonl", session)
    elif args.peers_from:
        path, _, named = args.peers_from.partition("@")
        doc["peers_session"], peers = load_peers(Path(path), named or None)
        doc["notes"].append(f"Peers from an earlier run ({path}, session {doc['peers_session']}): not the same run.")
    rounds_session = (session or "apalis-bench") + "-rounds"
    rs = RoundSettings(push_rounds=args.rounds, push_n=args.push_n, lat_rounds=args.lat_rounds)
    (out / "peers").mkdir(parents=True, exist_ok=True)
    doc["rounds"] = await interleave(kept, labels, rs, out / "peers", rounds_session, _log)
    if labels:
        doc["rounds"]["peers_session"] = rounds_session
        _, in_rounds = load_peers(out / "peers" / "results.jsonl", rounds_session)
        peers = merge_rounds(peers, in_rounds)
    doc["notes"].append(
        f"Push one at a time: median of {rs.push_rounds} interleaved rounds (ours and each peer's, in turn); "
        f"latency and wake-up: of {rs.lat_rounds}; (min-max) the spread over the rounds."
    )
    return peers


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print tables (or JSON with --json)."""
    args = _args(argv)
    if args.loop != "auto":
        os.environ[loops.ENV] = args.loop  # the worker processes inherit it
    args.loop = "uvloop" if loops.loop_factory() is not None else "asyncio"
    doc = loops.run(_run(args))  # the pushes on the loop the daemon and `apalis push` would use
    if args.json:
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif args.isolation:
        print_isolation([b for b in doc["backends"] if "modes" in b])
    elif args.control:
        print_control(doc["backends"])
    elif args.soak:
        print_soak(doc["backends"])
    else:
        print_report(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
