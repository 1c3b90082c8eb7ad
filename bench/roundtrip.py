"""`python -m bench.roundtrip`: what one loopback round trip costs this machine, with no work in it.

Two processes of this module ping-pong a few bytes over loopback TCP (blocking sockets,
TCP_NODELAY), `--n` round trips one at a time after 2,000 of warm-up, in `--rounds` rounds. Per
round trip it prints the wall time, the CPU time (user + system, from `/proc`) of each side,
and the wait: wall less both CPU times, the time in which neither process ran, i.e. the two
wake-ups (each side sleeps until the other's bytes arrive).

A push one at a time pays one such round trip, so its wall time is about the client's CPU, the
server's CPU and this wait (bench/README.md, "Redis, session 11"). The wait depends on how busy
the machine is, not on any queue: with the cores busy the woken process often finds a core
awake; on a quiet virtual machine each wake-up may have to wake a halted virtual CPU first.

    python -m bench.roundtrip --n 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

__all__ = ["main", "round_trips"]

_WARM_UP = 2000


def _cpu(pid: int) -> float:
    """A process's CPU seconds (user + system) from `/proc/PID/stat`."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _echo(listener: socket.socket) -> None:
    """The other side: answer every read with a few bytes until the connection closes."""
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while conn.recv(64):
        conn.sendall(b"+PONG\r\n")


def round_trips(n: int) -> dict[str, float]:
    """`n` round trips to a child process; wall, each side's CPU and the wait, in us each."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child process
        try:
            _echo(listener)
        finally:
            os._exit(0)
    address = listener.getsockname()
    listener.close()
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for _ in range(_WARM_UP):
            sock.sendall(b"PING\r\n")
            sock.recv(64)
        me, other, t0 = _cpu(os.getpid()), _cpu(child), time.perf_counter()
        for _ in range(n):
            sock.sendall(b"PING\r\n")
            sock.recv(64)
        wall = time.perf_counter() - t0
        me, other = _cpu(os.getpid()) - me, _cpu(child) - other
    finally:
        sock.close()
        os.waitpid(child, 0)
    per = 1e6 / n
    return {
        "wall_us": wall * per,
        "client_cpu_us": me * per,
        "server_cpu_us": other * per,
        "wait_us": max(0.0, wall - me - other) * per,
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.roundtrip", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="round trips a round (default 20000)")
    ap.add_argument("--rounds", type=int, default=3)
    opts = ap.parse_args()
    runs = []
    for _ in range(opts.rounds):
        load = os.getloadavg()[0]
        r = round_trips(opts.n)
        runs.append(r)
        print(
            f"load {load:5.2f}  wall {r['wall_us']:6.1f} us  cpu {r['client_cpu_us']:5.1f} + "
            f"{r['server_cpu_us']:5.1f} us  wait {r['wait_us']:6.1f} us a round trip"
        )
    if len(runs) > 1:
        print("median: " + "  ".join(f"{k} {statistics.median(r[k] for r in runs):.1f}" for k in runs[0]))


if __name__ == "__main__":
    main()
