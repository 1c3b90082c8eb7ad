"""The figures a moment's load moves most, measured in interleaved rounds: medians and spread.

A push one at a time, the latency stream and the wake-ups each took a few seconds, measured once:
the same push phase gave 6,217 and 9,910 per s a minute apart (bench/README.md). So they are
measured here in rounds, ours and each peer's taking turns (peers-bench's script for one phase,
`peers.peer_phase`), the order reversed every other round so that a drift of the machine's load
weighs on both sides alike; the table shows each figure's median over the rounds and its spread.

- push rounds (`--rounds`, 5): per round, each of our stores pushes `--push-n` tasks one at a time
  into a fresh queue (at most `--single-max` s), then each peer does the same in a process of its
  own (its first round 2,000 pushes, later ones as many as its first round's rate fits in
  `--single-max` s, at least 1,000 and at most `--push-n`).
- latency rounds (`--lat-rounds`, 3): per round, each store's latency stream at `--lat-rate` and
  `--wakeup-probes` wake-ups after 2 s idle, with a worker of its own; then each peer's.

Ours run in the bench's process, warm after the first round; a peer's each time in a process
just started, as peers-bench measures it.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apalis_cli.backend import Store

from .measure import Settings, enqueue_single, latency_and_wakeup
from .peers import peer_phase
from .stores import CODEC, Target

__all__ = ["Opened", "RoundSettings", "interleave"]

_PEER_MIN_PUSHES = 1000
_PEER_FIRST_PUSHES = 2000  # a peer's first round, whose rate sizes its later ones (some push 200/s)


@dataclass(slots=True)
class Opened:
    """One of our stores, open for the rounds, and the result its figures go into."""

    store: Store
    target: Target
    settings: Settings
    result: dict[str, Any]


@dataclass(slots=True)
class RoundSettings:
    push_rounds: int = 5
    push_n: int = 10000
    lat_rounds: int = 3


def _spread(values: list[float]) -> dict[str, Any]:
    good = [v for v in values if v == v]
    if not good:
        return {"median": None, "min": None, "max": None, "runs": values}
    return {"median": round(statistics.median(good), 3), "min": min(good), "max": max(good), "runs": values}


async def _ours_push(o: Opened, rnd: int, n: int) -> dict[str, Any]:
    queue = o.store.backend(o.target.queue(f"single{rnd}"), codec=CODEC, max_attempts=1)
    return await enqueue_single(queue, n, o.settings.single_max_s)


async def _ours_latency(o: Opened) -> dict[str, Any]:
    return await latency_and_wakeup(o.store, o.target, o.settings)


def _ours_summary(o: Opened, pushes: list[dict[str, Any]], lats: list[dict[str, Any]]) -> None:
    """Each figure's median over the rounds, where the single run's figure was."""
    r = o.result
    if pushes:
        spread = _spread([p["rate"] for p in pushes])
        r["enqueue_single"] = {
            "rate": spread["median"],
            "n": [p["n"] for p in pushes],
            "min": spread["min"],
            "max": spread["max"],
            "runs": spread["runs"],
            "cpu_us": _spread([p["cpu_us"] for p in pushes])["median"],
            "cpu_us_runs": [p["cpu_us"] for p in pushes],
        }
    done = [x for x in lats if "latency" in x]
    if not done:
        if lats:
            r["latency"] = {"error": lats[0].get("error", "no round measured")}
        return
    lat = {k: v for k, v in done[0]["latency"].items() if not k.endswith("_ms")}
    for key in ("p50_ms", "p90_ms", "p99_ms"):
        spread = _spread([x["latency"][key] for x in done])
        lat[key] = spread["median"]
        lat[key[:-3] + "_runs"] = spread["runs"]
    lat["max_ms"] = max((x["latency"]["max_ms"] or 0.0) for x in done)
    lat["rounds"] = len(done)
    r["latency"] = lat
    wakes = [x["wakeup"] for x in done if "wakeup" in x]
    if wakes:
        values = [v for w in wakes for v in w["values_ms"]]
        r["wakeup"] = {
            "idle_s": wakes[0]["idle_s"],
            "n": sum(w["n"] for w in wakes),
            "received": len(values),
            "p50_ms": _spread([w["p50_ms"] for w in wakes])["median"],
            "p50_runs": [w["p50_ms"] for w in wakes],
            "max_ms": max(values) if values else None,
            "values_ms": values,
        }
    idle = [x["idle_cpu_pct"] for x in done if x.get("idle_cpu_pct") is not None]
    r["idle_cpu_pct"] = round(statistics.mean(idle), 2) if idle else None


async def interleave(
    ours: list[Opened],
    labels: list[str],
    rs: RoundSettings,
    out_dir: Path,
    session: str,
    log: Any,
) -> dict[str, Any]:
    """Run the rounds; our figures go into each `Opened.result`, the peers' into
    `out_dir/results.jsonl` under `session`. Returns what was run (for the JSON)."""
    pushes: dict[int, list[dict[str, Any]]] = {id(o): [] for o in ours}
    lats: dict[int, list[dict[str, Any]]] = {id(o): [] for o in ours}
    peer_n: dict[str, int] = {}
    failed: list[str] = []
    lat_rate = ours[0].settings.lat_rate if ours else 200.0
    probes = ours[0].settings.wakeup_probes if ours else 3
    single_max = ours[0].settings.single_max_s if ours else 6.0

    async def our_turn(phase: str, rnd: int) -> None:
        for o in ours:
            try:
                if phase == "single":
                    pushes[id(o)].append(await _ours_push(o, rnd, rs.push_n))
                else:
                    lats[id(o)].append(await _ours_latency(o))
            except Exception as exc:  # one store failing must not lose the others' rounds
                log(f"[red]{o.target.kind}: {phase} round {rnd + 1} failed: {type(exc).__name__}: {exc}[/]")

    async def peers_turn(phase: str, rnd: int) -> None:
        for label in labels:
            if phase == "single":
                extra = ["--n-single", str(peer_n.get(label, min(rs.push_n, _PEER_FIRST_PUSHES)))]
            else:
                extra = ["--lat-rate", f"{lat_rate:g}", "--wakeup-probes", str(probes)]
            run_id = f"{session}-{label}-{phase}-r{rnd + 1}"
            rc = await asyncio.to_thread(peer_phase, label, phase, out_dir, session, run_id, extra)
            if rc != 0:
                failed.append(f"{label} {phase} r{rnd + 1}: rc={rc}")
            elif phase == "single" and label not in peer_n:
                rate = _rate_of(out_dir / "results.jsonl", run_id)
                if rate:
                    peer_n[label] = max(_PEER_MIN_PUSHES, min(rs.push_n, int(rate * single_max)))

    t0 = time.monotonic()
    for phase, count in (("single", rs.push_rounds), ("lat", rs.lat_rounds)):
        for rnd in range(count):
            log(f"rounds: {phase} {rnd + 1}/{count}")
            turns = (our_turn, peers_turn) if rnd % 2 == 0 else (peers_turn, our_turn)
            for turn in turns:
                await turn(phase, rnd)
    for o in ours:
        _ours_summary(o, pushes[id(o)], lats[id(o)])
    return {
        "push_rounds": rs.push_rounds,
        "push_n": rs.push_n,
        "lat_rounds": rs.lat_rounds,
        "wakeup_probes_per_round": probes,
        "peer_pushes": peer_n,
        "peers_failed": failed,
        "secs": round(time.monotonic() - t0, 1),
    }


def _rate_of(results: Path, run_id: str) -> float | None:
    """The push rate that the peer's run `run_id` wrote, if it did."""
    rate = None
    for line in results.read_text().splitlines() if results.is_file() else []:
        if run_id in line:
            rec = json.loads(line)
            if rec.get("run_id") == run_id and rec.get("metric") == "enqueue_single":
                rate = rec.get("rate")
    return rate if isinstance(rate, (int, float)) and not math.isnan(rate) else None
