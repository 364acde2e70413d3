"""The local multi-replica stack: `adrank up` / `adrank down` (docs/scaling.md).

A supervisor of real processes on 127.0.0.1, without containers: redis-server (one node or a Redis Cluster),
optionally the bundled tritonserver, N `adrank serve` replicas and a gRPC load balancer (haproxy, or nginx) in
front. A package of its own because it is its own runtime boundary: it starts and stops processes and imports
nothing of the request path; the replicas it starts are ordinary `adrank serve` processes.

    adrank up --replicas 2            # prints the balancer's address; state in runs/stack/stack.json
    adrank score --target 127.0.0.1:50051 --user 42
    adrank down                       # SIGTERM, then SIGKILL; idempotent
"""
