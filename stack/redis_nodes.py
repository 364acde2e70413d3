"""The stack's Redis: one password-protected redis-server, or a Redis Cluster of N primaries.

Each node's config is a file (mode 0600) holding `requirepass`, so the password is in no command line; cluster
creation gets it through REDISCLI_AUTH. Persistence is off: the store is rebuilt by a publish (or by copying an
embedded cache, stack/seed.py), never recovered from disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis

from embedding_cache.redis_local import HOST, free_port
from stack.config import StackError
from stack.state import write_secret_file


def executable(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise StackError(f"--redis: {name} not found on PATH (apt-get install redis-server), or pass --redis none")
    return exe


def node_config(port: int, directory: Path, password: str, *, cluster: bool) -> str:
    lines = [f"port {port}", f"bind {HOST}", "protected-mode yes", 'save ""', "appendonly no",
             f"dir {directory.resolve()}", f"requirepass {password}"]
    if cluster:
        # masterauth: replicas added later authenticate to their primary; node timeout 5 s bounds failover time
        lines += ["cluster-enabled yes", "cluster-config-file nodes.conf", "cluster-node-timeout 5000",
                  f"masterauth {password}"]
    return "\n".join(lines) + "\n"


def _free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    import socket

    for _ in range(200):
        port = free_port()
        if port + 10000 >= 65536 or port in taken or port + 10000 in taken:
            continue
        try:
            with socket.socket() as s:
                s.bind((HOST, port + 10000))
        except OSError:
            continue
        return port
    raise StackError("no free port pair (port, port + 10000) on 127.0.0.1 for a Redis Cluster node")


def plan_ports(mode: str, shards: int) -> list[int]:
    if mode == "single":
        return [free_port()]
    taken: set[int] = set()
    ports = []
    for _ in range(shards):
        port = _free_cluster_port(taken)
        taken |= {port, port + 10000}
        ports.append(port)
    return ports


def write_node(run_dir: Path, port: int, password: str, *, cluster: bool) -> list[str]:
    """Writes the node's config (0600) and returns its command line."""
    node_dir = run_dir / "redis" / str(port)
    node_dir.mkdir(parents=True, exist_ok=True)
    conf = node_dir / "redis.conf"
    write_secret_file(conf, node_config(port, node_dir, password, cluster=cluster))
    return [executable("redis-server"), str(conf)]


def url(mode: str, ports: list[int], password: str) -> str:
    if mode == "single":
        return f"redis://:{password}@{HOST}:{ports[0]}/0"
    return f"redis+cluster://:{password}@" + ",".join(f"{HOST}:{p}" for p in ports) + "/"


def wait_ping(port: int, password: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with redis.Redis(host=HOST, port=port, password=password, socket_connect_timeout=0.2, socket_timeout=1.0) as c:
        while True:
            try:
                c.ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise StackError(f"redis-server on port {port} did not answer PING in {timeout_s:.0f} s") from None
                time.sleep(0.05)


def create_cluster(ports: list[int], password: str, timeout_s: float) -> None:
    """`redis-cli --cluster create` over the nodes (no replicas), then wait until every node says cluster_state ok."""
    env = {**os.environ, "REDISCLI_AUTH": password}
    proc = subprocess.run([executable("redis-cli"), "--cluster", "create", *(f"{HOST}:{p}" for p in ports),
                           "--cluster-replicas", "0", "--cluster-yes"], env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise StackError(f"redis-cli --cluster create failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    deadline = time.monotonic() + timeout_s
    while True:
        ok = []
        for port in ports:
            try:
                with redis.Redis(host=HOST, port=port, password=password, socket_timeout=1.0) as c:
                    info = c.cluster("info")
                ok.append(info.get("cluster_state") == "ok" and int(info.get("cluster_slots_ok", 0)) == 16384)
            except redis.exceptions.RedisError:
                ok.append(False)
        if all(ok):
            return
        if time.monotonic() > deadline:
            raise StackError(f"Redis Cluster on ports {ports} not ok after {timeout_s:.0f} s")
        time.sleep(0.1)
