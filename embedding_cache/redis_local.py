"""Private redis-server processes on loopback: one node, or a Redis Cluster built with `redis-cli --cluster create`.

The cache tests, the Redis benchmarks and local stacks need a real server (no mocks, no fakes) on a free port,
started from nothing and torn down without leaving a process behind. Persistence is off (`--save ''`,
`--appendonly no`): the store is rebuilt by a publish, never recovered from disk.

Usage::

    with LocalRedisCluster(primaries=3, replicas=1) as cluster:
        writer = RedisWriter(cluster.url, "fm-v1", dim=32)      # redis+cluster://127.0.0.1:P1,...
        cluster.kill(cluster.primary_ports()[0])                # SIGKILL one primary
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

HOST = "127.0.0.1"


class RedisNotInstalledError(RuntimeError):
    """redis-server or redis-cli is not on PATH (tests skip on it; `apt-get install redis-server`)."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the usual bind-to-0 trick; racy, but fine on loopback)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _free_cluster_port() -> int:
    # A cluster node also listens on port + 10000 (the cluster bus), so both must be free and below 65536.
    for _ in range(100):
        port = free_port()
        if port + 10000 < 65536:
            try:
                with socket.socket() as s:
                    s.bind((HOST, port + 10000))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port pair (port, port + 10000) on 127.0.0.1")


def _executable(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise RedisNotInstalledError(f"{name} not found: install it (apt-get install redis-server)")
    return exe


def _wait_ping(port: int, timeout_s: float = 10.0) -> None:
    client = redis.Redis(host=HOST, port=port, socket_connect_timeout=0.2, socket_timeout=1.0)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
    finally:
        client.close()


class LocalRedis:
    """One redis-server on a free loopback port; `url` is its redis:// URL (db 0)."""

    def __init__(self, extra_args: tuple[str, ...] = ()) -> None:
        self._exe = _executable("redis-server")
        self.port = free_port()
        self._proc = subprocess.Popen(
            [self._exe, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no", *extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_ping(self.port)
        except Exception:
            self.stop()
            raise
        self.url = f"redis://{HOST}:{self.port}/0"

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    def __enter__(self) -> LocalRedis:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class LocalRedisCluster:
    """A Redis Cluster of `primaries` x (1 + `replicas`) redis-server processes on loopback.

    `node_timeout_ms` is `cluster-node-timeout`: how long a silent node takes to be marked FAIL, which bounds
    failover time (Redis' default is 15 s; 2 s here keeps the failover tests short). `full_coverage=False`
    sets `cluster-require-full-coverage no`, so the surviving primaries keep serving their slots while one
    shard is down (without it the whole cluster answers CLUSTERDOWN once a primary is marked FAIL).
    `appendonly=True` keeps an fsync-always AOF per node, so a node restarted with `start_node` comes back with
    its data (otherwise persistence is off and a restarted node returns empty).
    """

    def __init__(self, primaries: int = 3, replicas: int = 0, *, node_timeout_ms: int = 2000,
                 full_coverage: bool = True, appendonly: bool = False, ready_timeout_s: float = 30.0) -> None:
        self._server, self._cli = _executable("redis-server"), _executable("redis-cli")
        self.node_timeout_ms, self.full_coverage, self.appendonly = node_timeout_ms, full_coverage, appendonly
        self._dir = Path(tempfile.mkdtemp(prefix="adrank-redis-cluster-"))
        self.ports = [_free_cluster_port() for _ in range(primaries * (1 + replicas))]
        self._procs: dict[int, subprocess.Popen] = {}
        try:
            for port in self.ports:
                self.start_node(port)
            for port in self.ports:
                _wait_ping(port)
            subprocess.run([self._cli, "--cluster", "create", *(f"{HOST}:{p}" for p in self.ports),
                            "--cluster-replicas", str(replicas), "--cluster-yes"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
            self.wait_state_ok(ready_timeout_s)
        except Exception:
            self.stop()
            raise
        self.url = "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in self.ports) + "/"

    def start_node(self, port: int) -> None:
        """Start (or restart, reusing its nodes.conf) the node on `port`."""
        node_dir = self._dir / str(port)
        node_dir.mkdir(exist_ok=True)
        self._procs[port] = subprocess.Popen(
            [self._server, "--port", str(port), "--bind", HOST, "--dir", str(node_dir), "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
             "--cluster-require-full-coverage", "yes" if self.full_coverage else "no",
             "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def restart(self, port: int) -> None:
        """Start a killed node again on the same port and directory (it rejoins with its nodes.conf)."""
        self.start_node(port)
        _wait_ping(port)

    def wait_replicas_synced(self, timeout_s: float = 10.0) -> None:
        """Until every replica's replication offset equals its primary's (writes so far survive a failover)."""
        deadline = time.monotonic() + timeout_s
        while True:
            behind = []
            for port in self.primary_ports():
                with self.node(port) as client:
                    info = client.info("replication")
                offset = int(info["master_repl_offset"])
                replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
                behind += [port for r in replicas if int(r["offset"]) < offset]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas of {behind} still behind after {timeout_s} s")
            time.sleep(0.05)

    def node(self, port: int) -> redis.Redis:
        """A plain client of one node (for CLUSTER INFO, FLUSHALL, INFO replication)."""
        return redis.Redis(host=HOST, port=port, socket_connect_timeout=0.5, socket_timeout=2.0)

    def alive_ports(self) -> list[int]:
        return [p for p, proc in self._procs.items() if proc.poll() is None]

    def primary_ports(self) -> list[int]:
        """Ports of the live nodes that are primaries right now (after a failover: the promoted replica)."""
        out = []
        for port in self.alive_ports():
            with self.node(port) as client:
                if client.info("replication").get("role") == "master":
                    out.append(port)
        return sorted(out)

    def wait_state_ok(self, timeout_s: float = 30.0) -> None:
        """Until every live node reports cluster_state:ok (and knows every slot)."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = []
            for port in self.alive_ports():
                try:
                    with self.node(port) as client:
                        info = client.cluster("info")
                    states.append(info.get("cluster_state") == "ok" and int(info.get("cluster_slots_ok", 0)) == 16384)
                except redis.exceptions.RedisError:
                    states.append(False)
            if states and all(states):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster on {self.ports} not ok after {timeout_s} s")
            time.sleep(0.05)

    def flushall(self) -> None:
        for port in self.primary_ports():
            with self.node(port) as client:
                client.flushall()

    def kill(self, port: int) -> None:
        """SIGKILL one node (no shutdown, no goodbye to the cluster bus: what a crashed host looks like)."""
        proc = self._procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalRedisCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
