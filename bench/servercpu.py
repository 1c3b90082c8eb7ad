"""The server's CPU time spent on a measurement, read from `/proc` (the servers run on this machine).

- PostgreSQL (postgres, pgmq): the backends of this run's connections only, the ones whose
  `application_name` is the run's (`name_target` sets it): `pg_stat_activity` gives their pids;
- MariaDB and Redis (mysql, redis, rsmq): the whole server process listening on the URL's port,
  so other clients' work in the same window is included (`scope` says so);
- the in-process stores (memory, sqlite) and the brokers: none (`scope` is None).

A figure is a difference of two readings (`start`, then `spent`; or a `mark` taken between them,
then `spent(since=mark)`); a backend that appeared in between counts whole, one that exited in
between is lost (the bench's connections stay open through a drain).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ServerCpu", "is_local", "listening_pid", "name_target", "parse_stat", "proc_cpu", "scope_of"]

TICK = os.sysconf("SC_CLK_TCK")
_PG_KINDS = ("postgres", "pgmq")
_WHOLE = ("mysql", "redis", "rsmq")
_DEFAULT_PORTS = {"mysql": 3306, "redis": 6379, "rsmq": 6379}
PG_SCOPE = "PostgreSQL backends of this run's connections"
WHOLE_SCOPE = "the whole server process (other clients' work included)"


def parse_stat(text: str, tick: int = TICK) -> float:
    """CPU seconds (utime + stime, fields 14 and 15) of one `/proc/PID/stat` line; the command
    name in parentheses may hold spaces and parentheses, hence the split at the last ')'."""
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick


def proc_cpu(pid: int | str, proc: str = "/proc") -> float:
    """A process's CPU seconds (all its threads, user + system); 0 once it is gone."""
    try:
        with open(f"{proc}/{pid}/stat") as stat:
            return parse_stat(stat.read())
    except OSError:
        return 0.0


def listening_inodes(port: int, tables: list[str]) -> set[str]:
    """The socket inodes listening (state 0A) on `port` in the text of /proc/net/tcp and tcp6."""
    inodes = set()
    for table in tables:
        for line in table.splitlines()[1:]:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes


def listening_pid(port: int, proc: str = "/proc") -> int | None:
    """The pid of the process listening on TCP `port` on this machine, or None (not found, or
    its fds not readable)."""
    tables = []
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{proc}/net/{name}") as f:
                tables.append(f.read())
        except OSError:
            continue
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(port, tables)}
    if not wanted:
        return None
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"{proc}/{entry}/fd")
            for fd in fds:
                if os.readlink(f"{proc}/{entry}/fd/{fd}") in wanted:
                    return int(entry)
        except OSError:
            continue
    return None


def is_local(url: str) -> bool:
    """True when `url`'s server runs on this machine (loopback, or no host: a Unix socket), so
    that its processes are in this `/proc`."""
    host = urlsplit(url).hostname
    return host in (None, "", "localhost", "127.0.0.1", "::1")


def scope_of(kind: str) -> str | None:
    """What a server figure of `kind` covers, or None when there is none."""
    if kind in _PG_KINDS:
        return PG_SCOPE
    return WHOLE_SCOPE if kind in _WHOLE else None


def name_target(target: Any, label: str) -> str | None:
    """Give a PostgreSQL target's connections an `application_name` of their own (`label`, cut to
    63 bytes), so that `ServerCpu` can tell its backends apart: the postgres store takes it as an
    option, pgmq from its URL. Returns the name, or None for other kinds."""
    name = label[:63]
    if target.kind == "postgres":  # a name given with --option application_name=... is kept
        name = target.options.setdefault("application_name", name)
    elif target.kind == "pgmq":
        target.url += ("&" if "?" in target.url else "?") + f"application_name={name}"
    else:
        return None
    target.application_name = name
    return name


class ServerCpu:
    """The server's CPU seconds between `start()` and `spent()`, as `scope_of(kind)` says; for a
    kind without a server figure, a server elsewhere (or not found here), `spent()` is None."""

    def __init__(self, kind: str, url: str, application_name: str | None = None) -> None:
        self.kind, self.url, self.application_name = kind, url, application_name
        named = kind not in _PG_KINDS or application_name
        self.scope = scope_of(kind) if named and is_local(url) else None
        self._start: dict[int, float] | None = None
        self._server_pid: int | None = None  # the whole server's, found once

    def _pids(self) -> list[int] | None:
        if self.scope is None:
            return None
        if self.kind in _PG_KINDS:
            import psycopg

            url = urlsplit(self.url)._replace(scheme="postgresql").geturl()
            # a name of its own: a pgmq URL carries the run's, and this connection is not the run's
            with psycopg.connect(url, autocommit=True, connect_timeout=3, application_name="bench-servercpu") as conn:
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.application_name,)
                ).fetchall()
            return [int(pid) for (pid,) in rows]
        if self._server_pid is None:
            self._server_pid = listening_pid(urlsplit(self.url).port or _DEFAULT_PORTS[self.kind])
        return None if self._server_pid is None else [self._server_pid]

    def start(self) -> None:
        """Take the first reading."""
        pids = self._pids()
        self._start = None if pids is None else {pid: proc_cpu(pid) for pid in pids}

    def mark(self) -> dict[int, float] | None:
        """A reading of the processes `start` read, from `/proc` alone (no query, so it can be
        taken in the middle of a drain); for `spent(since=...)`."""
        return None if self._start is None else {pid: proc_cpu(pid) for pid in self._start}

    def spent(self, since: dict[int, float] | None = None) -> float | None:
        """CPU seconds since `start`, or since the `mark` `since` (a process that appeared after
        `start` counts whole: its part before the mark is not known); None: no server figure for
        this kind here."""
        if self._start is None:
            return None
        pids = self._pids()
        if pids is None:
            return None
        first = self._start if since is None else since
        return sum(proc_cpu(pid) - first.get(pid, 0.0) for pid in pids)

    def per_task_us(self, tasks: int) -> float | None:
        """`spent()` per task, in microseconds, rounded to 0.1 (None without a figure or tasks)."""
        spent = self.spent()
        return round(spent / tasks * 1e6, 1) if spent is not None and tasks else None
