"""The peer queues, measured in the same run by ../shared/peers-bench (`--peers LABEL,...`).

`run_peers` calls peers-bench's `run_all.sh` with the given labels into a results folder of its
own (PEERS_OUT) and a session name of ours; `load_peers` reads that session's
`results.jsonl` (one JSON object per measurement, written by peers-bench/harness.py) and takes
the median per peer over the passes, as peers-bench's report.py does. The definitions of every
figure are the same on both sides (see measure.py), so the ratios compare like with like.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["PEERS_DIR", "list_labels", "load_peers", "merge_rounds", "peer_phase", "run_peers", "same_store"]


def _peers_dir() -> Path:
    """`$APALIS_PEERS_BENCH`, else the nearest `shared/peers-bench` beside the checkout or one of
    its parents (a git worktree under /work/wt/NAME finds /work/shared/peers-bench too)."""
    given = os.environ.get("APALIS_PEERS_BENCH")
    if given:
        return Path(given)
    here = Path(__file__).resolve().parents[1]
    for parent in here.parents:
        candidate = parent / "shared" / "peers-bench"
        if candidate.is_dir():
            return candidate
    return here.parent / "shared" / "peers-bench"


PEERS_DIR = _peers_dir()
RUN_ALL = PEERS_DIR / "run_all.sh"

# Which peers-bench backend runs on the same store as each of our kinds.
_SAME_STORE = {"redis": "redis", "rsmq": "redis", "postgres": "postgres", "pgmq": "postgres", "amqp": "rabbitmq"}


def same_store(kind: str, peer_backend: str) -> bool:
    """True when a peer measured on `peer_backend` uses the same server as our `kind`."""
    return _SAME_STORE.get(kind) == peer_backend


def list_labels() -> list[str]:
    """The run labels peers-bench knows (`run_all.sh --list`)."""
    out = subprocess.run(["bash", str(RUN_ALL), "--list"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split()


def run_peers(labels: list[str], out_dir: Path, repeats: int, log: Any) -> str:
    """Run peers-bench for `labels` into `out_dir`; returns the session name to load."""
    known = list_labels()
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise ValueError(f"unknown peer label(s) {', '.join(unknown)}; known: {', '.join(known)}")
    session = "apalis-bench-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PEERS_OUT": str(out_dir),
        "PEERS_SESSION": session,
        "PEERS_RESULTS": str(out_dir / "results.jsonl"),
        "REPEATS": str(repeats),
    }
    log(f"peers: run_all.sh {' '.join(labels)} (REPEATS={repeats}; about 1-3 min per label and pass)")
    with open(out_dir / f"run_all-{session}.out", "w") as out:
        proc = subprocess.Popen(["bash", str(RUN_ALL), *labels], stdout=subprocess.PIPE, stderr=out, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if line.startswith(("pass ", "!!", "session ", "creating")):
                log("peers: " + line.rstrip())
        proc.wait()
    return session


def _commands() -> dict[str, str]:
    """Each label's script and arguments, as `run_all.sh` lists them (`"label|server|script args"`)."""
    text = RUN_ALL.read_text()
    return {m[1]: m[3] for m in re.finditer(r'^\s*"([^|"\s]+)\|([^|"]+)\|([^"]+)"', text, re.MULTILINE)}


def peer_phase(label: str, phase: str, out_dir: Path, session: str, run_id: str, extra: list[str]) -> int:
    """One phase of one peer, alone, in a process of its own: its script as `run_all.sh` runs it,
    with harness.py's `--skip` for every other phase (`phase` "single": the pushes one at a time;
    "lat": the latency stream and the wake-ups). The figures land in `out_dir/results.jsonl`
    under `session` (`load_peers`). Returns the script's exit status (124: cut by the timeout)."""
    skip = {"single": "bulk,drain,lat", "lat": "single,bulk,drain"}[phase]
    command = _commands()[label].split()
    python = os.environ.get("PEERS_VENV", "/tmp/peers-venv") + "/bin/python"
    env = {
        **os.environ,
        "PEERS_OUT": str(out_dir),
        "PEERS_SESSION": session,
        "PEERS_RESULTS": str(out_dir / "results.jsonl"),
    }
    argv = [python, *command, "--skip", skip, "--run-id", run_id, "--deadline", "150", *extra]
    with open(out_dir / f"rounds-{session}.log", "a") as log:
        try:
            return subprocess.run(argv, cwd=PEERS_DIR, env=env, stdout=log, stderr=log, timeout=170).returncode
        except subprocess.TimeoutExpired:  # the harness stops its own workers at its deadline
            return 124


def merge_rounds(peers: list[dict[str, Any]], rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The peers of the full run, their push, latency and wake-up figures replaced by the medians
    of the interleaved rounds (`rounds`: `load_peers` of the rounds' session), with each round's
    figure beside them (`*_runs`). A peer measured only in the rounds is listed as it is."""
    by_key = {(p["peer"], p["backend"], p["variant"]): p for p in rounds}
    out = []
    for p in peers:
        r = by_key.pop((p["peer"], p["backend"], p["variant"]), None)
        if r is not None:
            p = {**p, **{k: v for k, v in r.items() if k in _ROUND_FIGURES or k.endswith("_runs")}}
            p["rounds"] = r["runs"]
        out.append(p)
    return out + list(by_key.values())


_ROUND_FIGURES = ("enqueue_single", "latency_p50_ms", "latency_p99_ms", "wakeup_p50_ms", "wakeup_max_ms")


def _med(xs: list[Any]) -> float | None:
    vals = [x for x in xs if isinstance(x, (int, float)) and x == x]
    return statistics.median(vals) if vals else None


def load_peers(results: Path, session: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Per peer (peer, backend, variant): median figures over the session's passes."""
    recs = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    if session is None:
        named = [r.get("session", "manual") for r in recs if r.get("session", "manual") != "manual"]
        session = named[-1] if named else "manual"
    groups: dict[tuple[str, str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in recs:
        if r.get("session", "manual") != session or r.get("metric") == "redis_benchmark":
            continue
        key = (r["peer"], r["backend"], r.get("variant") or "default")
        metric = r["metric"]
        groups[key][f"drain:{r['conc']}" if metric == "drain" else metric].append(r)
    peers = []
    for (peer, backend, variant), g in groups.items():
        drains: dict[str, float | None] = {}
        for name, rs in g.items():
            if name.startswith("drain:"):
                kind = rs[0].get("conc_kind", "c")
                # as peers-bench's report.py: complete runs only, unless every run was cut; a run that
                # started less than half its backlog failed (a stalled worker) and says nothing
                ok = [r for r in rs if r.get("done", 0) >= r.get("n", 0) / 2]
                drains[f"{kind}{name[6:]}"] = _med(
                    [r["rate"] for r in ok if not r.get("timed_out")] or [r["rate"] for r in ok]
                )
        lat = [r for r in g.get("latency", []) if "p50_ms" in r and r.get("rate") == 200.0]
        wake = g.get("wakeup", [])
        rss = [r.get("rss_mb") for name, rs in g.items() if name.startswith("drain:") for r in rs]
        best = max((v for v in drains.values() if v is not None), default=None)
        peers.append(
            {
                "peer": peer,
                "backend": backend,
                "variant": variant,
                "enqueue_single": _med([r["rate"] for r in g.get("enqueue_single", [])]),
                "enqueue_bulk": _med([r["rate"] for r in g.get("enqueue_bulk", [])]),
                "drain": drains,
                "drain_best": best,
                "enqueue_single_runs": [r["rate"] for r in g.get("enqueue_single", [])],
                "latency_p50_ms": _med([r["p50_ms"] for r in lat]),
                "latency_p99_ms": _med([r["p99_ms"] for r in lat]),
                "wakeup_p50_ms": _med([r["p50_ms"] for r in wake]),
                "wakeup_max_ms": max((r["max_ms"] for r in wake), default=None),
                "latency_p50_ms_runs": [r["p50_ms"] for r in lat],
                "latency_p99_ms_runs": [r["p99_ms"] for r in lat],
                "wakeup_p50_ms_runs": [r["p50_ms"] for r in wake],
                "rss_mb": max((x for x in rss if x is not None), default=None),
                "runs": len({r["run_id"] for rs in g.values() for r in rs}),
            }
        )
    return session, peers
