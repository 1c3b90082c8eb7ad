"""A private Redis Cluster for the tests: three masters started with the machine's redis-server
on free loopback ports, each with its own data directory, the 16384 slots split between them,
and stopped by PID afterwards. The shared Redis on 6379 is never touched.
"""

from __future__ import annotations

import random
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.acceptance.chaos_servers import PrivateServer, need_binary, owned_tmpdir

__all__ = ["PrivateCluster"]

_SLOTS = 16384


@dataclass(slots=True)
class PrivateCluster:
    """Three cluster-enabled redis-server processes joined into one cluster."""

    masters: int = 3
    servers: list[PrivateServer] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        """The masters' ports."""
        return [server.port for server in self.servers]

    @property
    def url(self) -> str:
        """A store URL naming every master as a seed node."""
        return "redis://" + ",".join(f"127.0.0.1:{port}" for port in self.ports) + "/0"

    def start(self) -> None:
        """Start the masters, give each a third of the slots, and wait until the cluster is ok."""
        binary = need_binary("redis-server")
        base = owned_tmpdir("apalis-redis-cluster-", None)
        try:
            for n in range(self.masters):
                self.servers.append(_started_node(binary, n, base, self.ports))
            self._join()
        except BaseException:
            self.stop()
            raise

    def _join(self) -> None:
        from redis import Redis

        nodes = [Redis(host="127.0.0.1", port=port) for port in self.ports]
        try:
            share = _SLOTS // len(nodes)
            for n, node in enumerate(nodes):
                last = _SLOTS - 1 if n == len(nodes) - 1 else (n + 1) * share - 1
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", n * share, last)  # type: ignore[no-untyped-call]
            for port in self.ports[1:]:
                nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)  # type: ignore[no-untyped-call]
            deadline = time.monotonic() + 30
            while not all(_cluster_ok(node) for node in nodes):
                if time.monotonic() > deadline:
                    raise AssertionError("the private Redis Cluster did not reach cluster_state:ok within 30 s")
                time.sleep(0.05)
        finally:
            for node in nodes:
                node.close()

    def stop(self) -> None:
        """Stop every master by PID and remove the data directories; idempotent."""
        for server in self.servers:
            server.stop()
        for server in self.servers:
            shutil.rmtree(server.log.parent.parent, ignore_errors=True)
        self.servers.clear()


def _cluster_ok(node: object) -> bool:
    info: dict[str, object] = node.cluster("INFO")  # type: ignore[attr-defined]
    return info.get("cluster_state") == "ok"


def _started_node(binary: str, n: int, base: Path, taken: list[int]) -> PrivateServer:
    """Master `n` started on a free pair of ports. A probed port is only free until someone
    binds it: another test process (pytest-xdist's workers each start a cluster) can take it
    between the probe and the server's bind, and then the server exits at once; a new pair is
    tried then."""
    for _ in range(5):
        port = _free_port_pair(taken)
        directory = base / str(port)
        directory.mkdir()
        argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory)]
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--save", ""]
        argv += ["--appendonly", "no", "--cluster-node-timeout", "2000"]
        server = PrivateServer(f"redis-cluster-{n}", argv, port, directory / "server.log")
        try:
            server.start()
        except AssertionError:
            server.stop()
            if server.process is None or server.process.poll() is None or "in use" not in server.tail():
                raise
            continue
        return server
    raise AssertionError("five pairs of free ports for a Redis Cluster node were taken before its server bound them")


def _free_port_pair(taken: list[int]) -> int:
    """A port free on loopback whose cluster bus port (+10000) is free too, drawn at random (a
    fixed scan from one start made test processes side by side pick the same ports) below the
    kernel's ephemeral range (32768 and up), bus port included, so that no client's outgoing
    connection holds it."""
    for _ in range(500):
        port = random.randrange(20000, 22768)
        if port not in taken and _free(port) and _free(port + 10000):
            return port
    raise AssertionError("no free pair of ports for a Redis Cluster node")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
