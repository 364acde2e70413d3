"""What `adrank up` starts, as one frozen dataclass validated at construction (errors name the flag)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

BALANCERS = ("haproxy", "nginx")
REDIS_MODES = ("single", "cluster", "none")
MAX_REPLICAS = 32
MAX_SHARDS = 16


class StackError(RuntimeError):
    """The stack could not be started or stopped; the message names the flag, file or process at fault."""


class StackAlreadyUp(StackError):
    """A stack recorded in the run folder still has live processes."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True, kw_only=True)
class StackConfig:
    """One local stack. Every field is an `adrank up` flag of the same name."""

    run_dir: Path = field(default=Path("runs/stack"))
    """State (stack.json), the Redis password, generated configs and every process's log."""
    replicas: int = 2
    """`adrank serve` processes behind the balancer (1..32)."""
    port: int = 50051
    """The balancer's gRPC port on 127.0.0.1; 0 picks a free one."""
    balancer: str = "haproxy"
    """haproxy (round-robin per call, reuses h2 connections) or nginx (grpc_pass, keepalive tuned)."""
    redis: str = "single"
    """single: one redis-server; cluster: `redis_shards` primaries (redis-cli --cluster create); none."""
    redis_shards: int = 3
    """Primaries of the Redis Cluster (3..16; a cluster needs at least 3)."""
    repository: Path = field(default=Path("runs/demo/model_repository"))
    """The model repository every replica (and Triton) serves."""
    cache_dir: Path | None = None
    """An embedded cache whose current snapshots are copied into the stack's Redis (or, with redis none,
    read by the replicas directly). Default: the `cache` folder beside the repository, when there is one
    (runs/demo/cache for the demo's runs/demo/model_repository)."""
    model: str | None = None
    """The replicas' default model (`serve --model`)."""
    triton: bool = False
    """Start the bundled tritonserver and serve with `--backend triton` (the `triton` extra)."""
    startup_timeout_s: float = 90.0
    """How long each part may take to become healthy."""
    stop_timeout_s: float = 15.0
    """`adrank down`: SIGTERM, then SIGKILL after this many seconds."""

    def __post_init__(self) -> None:
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise StackError(f"{_flag('replicas')}: must be 1..{MAX_REPLICAS}, got {self.replicas}")
        if not 0 <= self.port <= 65535:
            raise StackError(f"{_flag('port')}: must be 0..65535, got {self.port}")
        if self.balancer not in BALANCERS:
            raise StackError(f"{_flag('balancer')}: one of {BALANCERS}, got {self.balancer!r}")
        if self.redis not in REDIS_MODES:
            raise StackError(f"{_flag('redis')}: one of {REDIS_MODES}, got {self.redis!r}")
        if not 3 <= self.redis_shards <= MAX_SHARDS:
            raise StackError(f"{_flag('redis_shards')}: must be 3..{MAX_SHARDS}, got {self.redis_shards}")
        if not self.repository.is_dir():
            raise StackError(f"--repository {self.repository}: no model repository there (run `make demo` or "
                             "`adrank export`, or pass --repository)")
        if self.cache_dir is not None and not self.cache_dir.is_dir():
            raise StackError(f"{_flag('cache_dir')} {self.cache_dir}: not a directory")
        for name in ("startup_timeout_s", "stop_timeout_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise StackError(f"{_flag(name)}: must be in (0, 3600], got {getattr(self, name)}")
