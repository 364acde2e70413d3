"""gRPC load balancer configs: haproxy (default) or nginx, in front of the replicas, on 127.0.0.1 only.

Both were measured on this kind of machine (docs/scaling.md): haproxy needs no tuning (it reuses h2 connections to
the replicas and balances each call); nginx needs `keepalive_requests` (else a GOAWAY after 1000 streams per
client connection) and upstream `keepalive` (else one TCP connection per call), and an `access_log` line (else it
logs to its compiled-in system path).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from stack.config import StackError


def executable(kind: str) -> str:
    exe = shutil.which(kind) or (f"/usr/sbin/{kind}" if Path(f"/usr/sbin/{kind}").exists() else None)
    if exe is None:
        raise StackError(f"--balancer {kind}: {kind} not found on PATH (apt-get install {kind})")
    return exe


def haproxy_config(port: int, replica_ports: list[int]) -> str:
    servers = "\n".join(f"    server r{i} 127.0.0.1:{p} proto h2 check inter 1s" for i, p in enumerate(replica_ports))
    return f"""# written by `adrank up`; round-robin per call over h2 connections it keeps to each replica
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
frontend grpc_in
    bind 127.0.0.1:{port} proto h2
    default_backend replicas
backend replicas
    balance roundrobin
{servers}
"""


def nginx_config(port: int, replica_ports: list[int]) -> str:
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in replica_ports)
    return f"""# written by `adrank up`; run as nginx -p PREFIX -e logs/error.log -c nginx.conf
daemon off;
pid nginx.pid;
error_log logs/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path tmp;
    upstream adrank {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        keepalive_requests 1000000;
        location / {{ grpc_pass grpc://adrank; }}
    }}
}}
"""


def command(kind: str, run_dir: Path, port: int, replica_ports: list[int]) -> list[str]:
    """Writes the config under `run_dir` and returns the foreground command line of the balancer."""
    exe = executable(kind)
    if kind == "haproxy":
        cfg = run_dir / "haproxy.cfg"
        cfg.write_text(haproxy_config(port, replica_ports))
        return [exe, "-db", "-f", str(cfg)]
    prefix = run_dir / "nginx"
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(nginx_config(port, replica_ports))
    return [exe, "-p", str(prefix.resolve()), "-e", "logs/error.log", "-c", "nginx.conf"]
