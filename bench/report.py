"""Tables for people (rich) and the ratio / target checks shared with `--json`."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from .peers import same_store

__all__ = ["baseline_ratios", "peer_ratios", "print_report", "targets"]

# The raw baseline that bounds each of our kinds (baselines.py).
_CEILING_STORE = {
    "sqlite": "sqlite",
    "postgres": "postgres",
    "pgmq": "postgres",
    "redis": "redis",
    "rsmq": "redis",
    "amqp": "amqp",
    "nats": "nats",
}
SERVER_NOTE = (
    "server µs/task: the server's CPU time during the drain per task: PostgreSQL's backends of this run's"
    " connections; * the whole server process (MariaDB, Redis: other clients' work included);"
    " - where it cannot be told apart (in-process stores, brokers, peers)"
)
_PEER_CEILING = {"postgres": "raw-pg (psycopg3 SKIP LOCKED)", "redis": "raw-redis (asyncio redis-py)"}


def _f(x: Any, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    if digits:
        return f"{x:.{digits}f}"
    return f"{x:,.0f}" if x >= 100 else (f"{x:.1f}" if x >= 1 else f"{x:.2f}")


def _range(runs: Any, digits: int = 0) -> str:
    """The spread of a figure over the interleaved rounds, e.g. " (6,217-9,910)"; "" for one run."""
    vals = [x for x in runs or [] if isinstance(x, (int, float)) and x == x]
    if len(vals) < 2:
        return ""
    return f" ({_f(min(vals), digits)}-{_f(max(vals), digits)})"


def _scope_mark(scope: Any) -> str:
    """A mark after a server figure that covers the whole server process (other clients' work
    included): " *"; "" for this run's own backends or no figure."""
    return " *" if scope and "whole" in scope else ""


def _pair(process: Any, server: Any) -> str:
    """ "worker + server = total" in µs per task; the server "-" (and no total) when unknown."""
    if process is None:
        return "-"
    if server is None:
        return f"{_f(process)} + -"
    return f"{_f(process)} + {_f(server)} = {_f(process + server)}"


def _best_drain(r: dict[str, Any]) -> dict[str, Any]:
    """The drain with our best rate (whose CPU per task the ceiling table sets beside the raw one)."""
    known = [d for d in r.get("drain", []) if d.get("rate") == d.get("rate") and d.get("rate") is not None]
    return max(known, key=lambda d: d["rate"]) if known else {}


def _ratio(a: Any, b: Any) -> float | None:
    if not a or not b or a != a or b != b:
        return None
    return round(float(a) / float(b), 2)


def peer_ratios(ours: list[dict[str, Any]], peers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours against each peer on the same store (else against the fastest peer measured).

    Rates are ours ÷ theirs, latencies theirs ÷ ours: above 1 means apalis-cli is ahead.
    """
    rows = []
    for r in ours:
        if "error" in r:
            continue
        mates = [p for p in peers if same_store(r["kind"], p["backend"])]
        if not mates and peers:
            real = [p for p in peers if not p["peer"].startswith("raw")]
            mates = [max(real or peers, key=lambda p: p["drain_best"] or 0)]
        lat = r.get("latency", {})
        wake = r.get("wakeup", {})
        for p in mates:
            rows.append(
                {
                    "kind": r["kind"],
                    "peer": p["peer"],
                    "peer_backend": p["backend"],
                    "peer_variant": p["variant"],
                    "same_store": same_store(r["kind"], p["backend"]),
                    "enqueue_single": _ratio(r.get("enqueue_single", {}).get("rate"), p["enqueue_single"]),
                    "enqueue_bulk": _ratio(r["enqueue_bulk"]["rate"], p["enqueue_bulk"]),
                    "drain_best": _ratio(r["drain_best"], p["drain_best"]),
                    "ours_drain_best": r["drain_best"],
                    "peer_drain_best": p["drain_best"],
                    "latency_p50": _ratio(p["latency_p50_ms"], lat.get("p50_ms")),
                    "latency_p99": _ratio(p["latency_p99_ms"], lat.get("p99_ms")),
                    "wakeup_p50": _ratio(p["wakeup_p50_ms"], wake.get("p50_ms")),
                    "rss": _ratio(p["rss_mb"], r.get("rss_mb")),
                }
            )
    return rows


def baseline_ratios(
    ours: list[dict[str, Any]], baselines: list[dict[str, Any]], peers: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Our best drain as a fraction of the raw-driver ceiling on the same store."""
    rows = []
    for r in ours:
        if "error" in r:
            continue
        store = _CEILING_STORE.get(r["kind"])
        best = _best_drain(r)
        ours_cpu = {
            "ours_conc": best.get("conc"),
            "ours_cpu_us_per_task": best.get("cpu_us_per_task"),
            "ours_server_cpu_us_per_task": best.get("server_cpu_us_per_task"),
        }
        for b in baselines:
            if b.get("store") == store and b.get("rate"):
                rows.append(
                    {
                        "kind": r["kind"],
                        "ceiling": f"{b['name']} k{b['k']}",
                        "ceiling_rate": b["rate"],
                        "fraction": _ratio(r["drain_best"], b["rate"]),
                        **ours_cpu,
                        "ceiling_cpu_us_per_task": b.get("cpu_us_per_task"),
                        "ceiling_server_cpu_us_per_task": b.get("server_cpu_us_per_task"),
                    }
                )
        for p in peers:
            if store and p["peer"] == _PEER_CEILING.get(store):
                k100 = p["drain"].get("k100")
                rows.append(
                    {
                        "kind": r["kind"],
                        "ceiling": f"peers-bench {p['peer']} k100",
                        "ceiling_rate": k100,
                        "fraction": _ratio(r["drain_best"], k100),
                        **ours_cpu,
                    }
                )
    return rows


def targets(
    ours: list[dict[str, Any]], ratios: list[dict[str, Any]], ceilings: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """DESIGN.md §7 targets checked against what this run measured (None: not measured here)."""
    out: list[dict[str, Any]] = []

    def add(kind: str, what: str, value: Any, ok: bool | None) -> None:
        out.append({"kind": kind, "target": what, "measured": value, "ok": ok})

    for r in ours:
        if "error" in r:
            continue
        k, best = r["kind"], r["drain_best"]
        lat, wake = r.get("latency", {}), r.get("wakeup", {})
        if k in ("sqlite", "mysql"):
            add(k, "drain >= 10,000/s", best, best is not None and best >= 10000)
        if k in ("redis", "rsmq"):
            mates = [x for x in ratios if x["kind"] == k and x["same_store"] and not x["peer"].startswith("raw")]
            top = max((x["peer_drain_best"] or 0 for x in mates), default=None)
            met = None if not top or best is None else best >= 5 * top  # no drain: --conc ''
            add(k, "drain >= 5x the best peer on Redis", _ratio(best, top), met)
        if k in ("postgres", "pgmq"):
            pro = [x for x in ratios if x["kind"] == k and x["peer"] == "procrastinate"]
            add(
                k,
                "drain >= 20x procrastinate",
                pro[0]["drain_best"] if pro else None,
                None if not pro or pro[0]["drain_best"] is None else pro[0]["drain_best"] >= 20,
            )
            ceil = [c for c in ceilings if c["kind"] == k and c["fraction"] is not None]
            add(
                k,
                "drain >= 25% of the raw psycopg ceiling",
                ceil[0]["fraction"] if ceil else None,
                None if not ceil else ceil[0]["fraction"] >= 0.25,
            )
        if k in ("amqp", "nats"):
            ceil = [c for c in ceilings if c["kind"] == k and c["fraction"] is not None]
            add(
                k,
                "drain >= 30% of the raw client's batched ceiling",
                ceil[0]["fraction"] if ceil else None,
                None if not ceil else ceil[0]["fraction"] >= 0.30,
            )
        p50_cap = {"redis": 1.0, "rsmq": 1.0, "postgres": 2.0, "pgmq": 2.0}.get(k)
        if p50_cap is not None:
            p50 = lat.get("p50_ms")
            add(k, f"latency p50 <= {p50_cap:g} ms", p50, None if p50 is None else p50 <= p50_cap)
        p99 = lat.get("p99_ms")
        add(k, "latency p99 <= 5 ms", p99, None if p99 is None else p99 <= 5.0)
        w = wake.get("p50_ms")
        add(k, "wake-up after idle <= 2 ms (stores that can signal)", w, None if w is None else w <= 2.0)
        cpu = r.get("idle_cpu_pct")
        add(k, "idle CPU ~ 0 (<= 1% of a core)", cpu, None if cpu is None else cpu <= 1.0)
        rss = r.get("rss_mb")
        if not r["worker"].startswith("in-process"):
            add(k, "worker RSS <= 45 MB while draining", rss, None if rss is None else rss <= 45.0)
    return out


def print_report(doc: dict[str, Any], console: Console | None = None) -> None:
    """Print every table of one run."""
    con = console or Console(width=None if sys.stdout.isatty() else 200)
    ours = doc["backends"]
    t = Table(title=f"apalis-cli, one worker, no-op tasks ({doc['machine']})", show_lines=False)
    for col in (
        "backend",
        "enq 1-by-1 /s",
        "enq bulk /s",
        "drain /s by concurrency",
        "lat p50/p99 ms @200/s",
        "wake-up p50/max ms",
        "idle CPU %",
        "RSS MB",
        "CPU µs/task c10 / c50",
        "server µs/task c10 / c50",
    ):
        t.add_column(col, justify="right" if col != "backend" else "left")
    for r in ours:
        if "error" in r:
            t.add_row(r["kind"], f"[yellow]skipped: {r['error']}[/]", *[""] * 8)
            continue
        drains = " · ".join(
            f"c{d['conc']}: {_f(d['rate'])}" + ("" if d["complete"] else f" ({d['done']}/{d['n']} in time)")
            for d in r["drain"]
        )
        lat, wake = r.get("latency", {}), r.get("wakeup", {})
        cpu = {d["conc"]: d.get("cpu_us_per_task") for d in r["drain"]}
        served = {d["conc"]: d.get("server_cpu_us_per_task") for d in r["drain"]}
        t.add_row(
            r["kind"] + (" (in-process)" if r["worker"].startswith("in-process") else ""),
            _f(r.get("enqueue_single", {}).get("rate")) + _range(r.get("enqueue_single", {}).get("runs")),
            _f(r["enqueue_bulk"]["rate"]),
            drains,
            f"{_f(lat.get('p50_ms'))}{_range(lat.get('p50_runs'))}"
            f" / {_f(lat.get('p99_ms'))}{_range(lat.get('p99_runs'))}",
            f"{_f(wake.get('p50_ms'))}{_range(wake.get('p50_runs'))} / {_f(wake.get('max_ms'))}",
            _f(r.get("idle_cpu_pct"), 2),
            _f(r.get("rss_mb")),
            f"{_f(cpu.get(10))} / {_f(cpu.get(50))}",
            f"{_f(served.get(10))} / {_f(served.get(50))}" + _scope_mark(r.get("server_cpu_scope")),
        )
    con.print(t)
    if any(r.get("server_cpu_scope") for r in ours):
        con.print(f"[dim]{SERVER_NOTE}[/]")
    loops = [r for r in ours if "store_loop" in r]
    if loops:
        s = Table(title="the store alone (poll_compact + ack_batch, k=50, no Worker) vs the worker at c50")
        for col in ("backend", "store loop /s", "worker c50 /s", "core share of the per-task time"):
            s.add_column(col)
        for r in loops:
            loop = r["store_loop"]
            c50 = next((d["rate"] for d in r["drain"] if d["conc"] == 50), None)
            share = 1 - c50 / loop["rate"] if c50 and loop.get("rate") else None
            s.add_row(r["kind"], _f(loop.get("rate")) if "error" not in loop else loop["error"], _f(c50), _f(share, 2))
        con.print(s)
    if doc.get("baselines"):
        b = Table(title="raw-driver ceilings (same run)")
        for col in ("baseline", "store", "drain /s", "bulk insert /s", "CPU µs/task client", "server µs/task"):
            b.add_column(col)
        for x in doc["baselines"]:
            b.add_row(
                x["name"] + (f" k{x['k']}" if "k" in x else ""),
                x.get("store", ""),
                _f(x.get("rate")) if "error" not in x else f"[yellow]{x['error']}[/]",
                _f(x.get("enqueue_bulk_rate")),
                _f(x.get("cpu_us_per_task")),
                _f(x.get("server_cpu_us_per_task")) + _scope_mark(x.get("server_cpu_scope")),
            )
        con.print(b)
        if any(x.get("server_cpu_scope") for x in doc["baselines"]):
            con.print(f"[dim]{SERVER_NOTE}; CPU µs/task client: this process's, which runs the raw loop[/]")
    if doc.get("ceiling_ratios"):
        c = Table(title="our best drain as a fraction of the raw ceiling")
        for col in (
            "backend",
            "ceiling",
            "ceiling /s",
            "ours / ceiling",
            "CPU µs/task ours (worker + server)",
            "ceiling (client + server)",
        ):
            c.add_column(col)
        for x in doc["ceiling_ratios"]:
            c.add_row(
                x["kind"],
                x["ceiling"],
                _f(x["ceiling_rate"]),
                _f(x["fraction"], 2),
                _pair(x.get("ours_cpu_us_per_task"), x.get("ours_server_cpu_us_per_task")),
                _pair(x.get("ceiling_cpu_us_per_task"), x.get("ceiling_server_cpu_us_per_task")),
            )
        con.print(c)
    if doc.get("peers"):
        p = Table(title=f"peers (peers-bench session {doc.get('peers_session')})")
        for col in (
            "peer",
            "store",
            "variant",
            "enq 1-by-1",
            "enq bulk",
            "drain /s",
            "lat p50/p99",
            "wake p50/max",
            "RSS",
        ):
            p.add_column(col)
        for x in doc["peers"]:
            p.add_row(
                x["peer"],
                x["backend"],
                x["variant"],
                _f(x["enqueue_single"]) + _range(x.get("enqueue_single_runs")),
                _f(x["enqueue_bulk"]),
                " · ".join(f"{k}: {_f(v)}" for k, v in x["drain"].items()),
                f"{_f(x['latency_p50_ms'])}{_range(x.get('latency_p50_ms_runs'))}"
                f" / {_f(x['latency_p99_ms'])}{_range(x.get('latency_p99_ms_runs'))}",
                f"{_f(x['wakeup_p50_ms'])}{_range(x.get('wakeup_p50_ms_runs'))} / {_f(x['wakeup_max_ms'])}",
                _f(x["rss_mb"]),
            )
        con.print(p)
    if doc.get("peer_ratios"):
        q = Table(title="ratios (> 1 = apalis-cli ahead: rates ours/theirs, latencies theirs/ours)")
        for col in (
            "backend",
            "vs peer",
            "enq 1-by-1",
            "enq bulk",
            "drain (best)",
            "lat p50",
            "lat p99",
            "wake p50",
            "RSS",
        ):
            q.add_column(col)
        for x in doc["peer_ratios"]:
            vs = (
                f"{x['peer']} ({x['peer_backend']}{'' if x['peer_variant'] == 'default' else ', ' + x['peer_variant']})"
            )
            if not x["same_store"]:
                vs += " [dim]other store[/]"
            q.add_row(
                x["kind"],
                vs,
                *(
                    _f(x[k], 2) + "x" if x[k] else "-"
                    for k in (
                        "enqueue_single",
                        "enqueue_bulk",
                        "drain_best",
                        "latency_p50",
                        "latency_p99",
                        "wakeup_p50",
                        "rss",
                    )
                ),
            )
        con.print(q)
    if doc.get("targets"):
        g = Table(title="DESIGN.md §7 targets")
        for col in ("backend", "target", "measured", "met"):
            g.add_column(col)
        for x in doc["targets"]:
            ok = {True: "[green]yes[/]", False: "[red]no[/]", None: "[dim]not measured[/]"}[x["ok"]]
            g.add_row(
                x["kind"],
                x["target"],
                _f(x["measured"], 2 if isinstance(x["measured"], float) and x["measured"] < 100 else 0),
                ok,
            )
        con.print(g)
    for note in doc.get("notes", []):
        con.print(f"[dim]{note}[/]")
