"""`adrank up` / `adrank down`: the local multi-replica stack (stack/launch.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from stack.config import BALANCERS, REDIS_MODES, StackConfig


def _cmd_up(a: argparse.Namespace) -> int:
    from stack.launch import refuse_if_up, up

    refuse_if_up(Path(a.run_dir))
    config = StackConfig(run_dir=Path(a.run_dir), replicas=a.replicas, port=a.port, balancer=a.balancer,
                         redis=a.redis, redis_shards=a.redis_shards, repository=Path(a.repository),
                         cache_dir=Path(a.cache_dir) if a.cache_dir else None, model=a.model, triton=a.triton,
                         startup_timeout_s=a.timeout, stop_timeout_s=a.stop_timeout)
    state = up(config)
    replicas = state.of_role("replica")
    print(f"stack up: {config.balancer} on {state.target} → {len(replicas)} replicas "
          f"(metrics {', '.join(f'127.0.0.1:{r.metrics_port}' for r in replicas)}); state {state.run_dir}/stack.json")
    print(f"next: adrank score --target {state.target} --user 42 · adrank down --run-dir {a.run_dir}")
    return 0


def _cmd_down(a: argparse.Namespace) -> int:
    from stack.launch import down

    down(Path(a.run_dir), a.stop_timeout)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    defaults = StackConfig.__dataclass_fields__
    sp = sub.add_parser("up", help="start a local stack: Redis, N ranking replicas and a gRPC balancer (127.0.0.1)",
                        description="Starts redis-server (or a Redis Cluster), optionally the bundled tritonserver, "
                        "N `adrank serve` replicas and haproxy/nginx in front, waits until each is healthy and "
                        "records pids, ports and logs in RUN_DIR/stack.json. Refuses when a stack is already up there.")
    sp.add_argument("--run-dir", default=str(defaults["run_dir"].default), help="state, logs, generated configs")
    sp.add_argument("--replicas", type=int, default=defaults["replicas"].default)
    sp.add_argument("--port", type=int, default=defaults["port"].default, help="the balancer's port (0: a free one)")
    sp.add_argument("--balancer", choices=BALANCERS, default=defaults["balancer"].default)
    sp.add_argument("--redis", choices=REDIS_MODES, default=defaults["redis"].default,
                    help="one redis-server, a Redis Cluster, or none (replicas read --cache-dir directly)")
    sp.add_argument("--redis-shards", type=int, default=defaults["redis_shards"].default,
                    help="primaries of the cluster with --redis cluster")
    sp.add_argument("--repository", "--model-repository", dest="repository",
                    default=str(defaults["repository"].default))
    sp.add_argument("--cache-dir", default=None, help="embedded cache copied into the stack's Redis "
                    "(default: the cache folder beside --repository, e.g. runs/demo/cache)")
    sp.add_argument("--model", default=None, help="the replicas' default model")
    sp.add_argument("--triton", action="store_true", help="start the bundled tritonserver; replicas use it")
    sp.add_argument("--timeout", type=float, default=defaults["startup_timeout_s"].default,
                    help="seconds for the whole stack to become healthy")
    sp.add_argument("--stop-timeout", type=float, default=defaults["stop_timeout_s"].default)
    sp.set_defaults(func=_cmd_up)

    sp = sub.add_parser("down", help="stop everything `adrank up` started (SIGTERM, then SIGKILL); idempotent")
    sp.add_argument("--run-dir", default=str(defaults["run_dir"].default))
    sp.add_argument("--stop-timeout", type=float, default=defaults["stop_timeout_s"].default,
                    help="seconds between SIGTERM and SIGKILL")
    sp.set_defaults(func=_cmd_down)
