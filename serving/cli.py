"""`adrank` verbs of the serving runtime: serve, score (a client of the running service) and auth.

`register` adds them to the dispatcher's parser (adrank/cli.py); nothing here imports training, export or
load-test code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.paths import DEFAULT_RUN


def _cmd_serve(a: argparse.Namespace) -> int:
    """Flags over ADRANK_* environment over ServerConfig defaults: a flag left out is None, so it
    leaves the environment's value in place."""
    from dataclasses import fields

    from serving.config import ConfigError, ServerConfig, resolved_workers

    flags = {f.name: getattr(a, f.name) for f in fields(ServerConfig) if hasattr(a, f.name)}
    if a.cache_url or a.cache_dir:
        flags["cache_backend"], flags["cache_location"] = ("redis", a.cache_url) if a.cache_url else \
            ("embedded", a.cache_dir)
    try:
        config = ServerConfig.from_env(**flags)
    except ConfigError as exc:
        flag = {"cache_backend": "--cache-dir/--cache-url", "cache_location": "--cache-dir/--cache-url"}.get(
            exc.field, "--" + exc.field.replace("_", "-"))
        where = exc.field if exc.field.startswith("ADRANK_") else flag
        print(f"error: {where}: {exc.reason}", file=sys.stderr)
        return 2
    workers = resolved_workers(config)
    if workers > 1:  # N processes on one port (serving/workers.py)
        from serving.security.auth import TokenTable
        from serving.security.tls import ServerTls
        from serving.workers import serve_workers

        # the files each worker reads at start, checked once here: a bad one is the caller's error
        # (exit 2 naming the flag), not N workers failing one after another
        ServerTls.from_config(config)
        if config.auth_tokens:
            TokenTable.load(config.auth_tokens)

        return serve_workers(config, workers, ready_file=a.ready_file)
    from serving import busy_poll
    from serving.server import serve_forever

    busy_poll.run(serve_forever(config, ready_file=a.ready_file), config.busy_poll_us)
    return 0


def _cmd_score(a: argparse.Namespace) -> int:
    from rich.console import Console

    from serving.client import build_request, render_table, rows_from_columns, score, score_columns, to_columns

    if not a.catalog or not Path(a.catalog).is_file():
        print(f"error: --catalog {a.catalog}: no catalog file there. Requests are built from the ads and users of a "
              "trained model's catalog.npz (written by `adrank train vm` beside vm.pt); pass --catalog PATH",
              file=sys.stderr)
        return 2
    from models.catalog import load_catalog

    catalog = load_catalog(a.catalog)
    req = build_request(a.user, a.candidates, catalog, seed=a.seed, request_time_ms=a.time_ms, model=a.model,
                        version=a.version)
    import grpc

    from serving.security.cli import client_security

    tls, token = client_security(a)
    try:
        if a.columns:  # the same candidates through ScoreColumns
            resp = score_columns(a.target, to_columns(req), timeout_s=a.timeout, tls=tls, token=token)
        else:
            resp = score(a.target, req, timeout_s=a.timeout, tls=tls, token=token)
    except grpc.RpcError as exc:  # print the status code and message, exit non-zero
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    if a.json:
        from google.protobuf.json_format import MessageToJson

        print(MessageToJson(resp, preserving_proto_field_name=True, indent=1))
        return 0
    Console().print(render_table(rows_from_columns(resp) if a.columns else resp, req, limit=a.show))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """serve, score and auth, on the dispatcher's subparsers."""
    from serving.config import BACKENDS, CACHE_FALLBACKS, LOG_FORMATS, TRITON_FALLBACKS, flag_help
    from serving.security.cli import add_auth_parser, client_security_flags

    # Each flag's dest is its ServerConfig field and its default None ("not given"): the environment
    # (ADRANK_<FIELD>) and then the field's default fill what is left out.
    sp = sub.add_parser("serve", help="run the gRPC ranking service",
                        description="Flags override ADRANK_<FIELD> environment variables, which override defaults. "
                        "The request-schema limits (max_dense_features, max_recent_categories, max_request_id_len, "
                        "max_bid, max_abs_dense_feature) come from the environment only, so every replica accepts "
                        "the same requests.")
    sp.add_argument("--backend", choices=BACKENDS, help=flag_help("backend"))
    sp.add_argument("--host", help=flag_help("host"))
    sp.add_argument("--port", type=int, help=flag_help("port"))
    sp.add_argument("--repository", "--model-repository", dest="model_repository", help=flag_help("model_repository"))
    sp.add_argument("--model", "--default-model", dest="default_model", help=flag_help("default_model"))
    sp.add_argument("--triton-url", help=flag_help("triton_url"))
    sp.add_argument("--triton-fallback", choices=TRITON_FALLBACKS, help=flag_help("triton_fallback"))
    cache = sp.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", help="embedded embedding cache directory (LoopFM models read FM history): "
                       "cache_backend=embedded, cache_location=DIR [env ADRANK_CACHE_BACKEND, ADRANK_CACHE_LOCATION]")
    cache.add_argument("--cache-url", help="Redis embedding cache, redis://HOST:PORT/DB: cache_backend=redis, "
                       "cache_location=URL")
    sp.add_argument("--cache-refresh-s", type=float, help=flag_help("cache_refresh_s"))
    for name in ("workers", "busy_poll_us", "max_candidates", "max_message_bytes", "max_future_skew_ms",
                 "intra_op_threads", "max_concurrent_rpcs", "metrics_port", "max_in_flight", "max_queued",
                 "max_queue_wait_ms", "retry_after_ms", "max_deadline_ms", "cache_timeout_ms", "cache_breaker_failures",
                 "triton_breaker_failures", "access_log_failures_per_s"):
        sp.add_argument("--" + name.replace("_", "-"), type=int, help=flag_help(name))
    for name in ("drain_delay_s", "drain_timeout_s", "cache_breaker_cooldown_s", "readiness_interval_s",
                 "triton_breaker_cooldown_s"):
        sp.add_argument("--" + name.replace("_", "-"), type=float, help=flag_help(name))
    sp.add_argument("--cache-fallback", choices=CACHE_FALLBACKS, help=flag_help("cache_fallback"))
    sp.add_argument("--log-format", choices=LOG_FORMATS, help=flag_help("log_format"))
    sp.add_argument("--access-log-sample", type=float, metavar="R", help=flag_help("access_log_sample"))
    sp.add_argument("--request-log", metavar="DIR", help=flag_help("request_log"))
    sp.add_argument("--request-log-sample", type=float, metavar="R", help=flag_help("request_log_sample"))
    sp.add_argument("--request-log-queue", type=int, metavar="N", help=flag_help("request_log_queue"))
    sp.add_argument("--request-log-rotate-s", type=float, metavar="S", help=flag_help("request_log_rotate_s"))
    sp.add_argument("--request-log-writer", choices=("process", "thread"), help=flag_help("request_log_writer"))
    sp.add_argument("--transfer-sample", type=float, metavar="R", help=flag_help("transfer_sample"))
    sp.add_argument("--rollout-registry", metavar="DIR|URL", help=flag_help("rollout_registry"))
    for name in ("rollout_poll_s", "rollout_unload_grace_s", "rollout_lease_s"):
        sp.add_argument("--" + name.replace("_", "-"), type=float, help=flag_help(name))
    sp.add_argument("--reflection", action=argparse.BooleanOptionalAction, default=None, help=flag_help("reflection"))
    security = sp.add_argument_group("security (docs/security.md)")
    for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_tokens"):
        security.add_argument("--" + name.replace("_", "-"), metavar="PATH", help=flag_help(name))
    security.add_argument("--insecure", action="store_true", default=None, help=flag_help("insecure"))
    sp.add_argument("--ready-file", default=None, help="written with the bound port once SERVING")
    sp.set_defaults(func=_cmd_serve)

    sp = sub.add_parser("score", help="score candidates for a user and print the ranking")
    sp.add_argument("--target", default="127.0.0.1:50051")
    sp.add_argument("--user", type=int, required=True)
    sp.add_argument("--candidates", type=int, default=200)
    sp.add_argument("--catalog", default=f"{DEFAULT_RUN}/catalog.npz")
    sp.add_argument("--model", default="")
    sp.add_argument("--version", type=int, default=None)
    sp.add_argument("--time-ms", type=int, default=None)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--show", type=int, default=20, help="rows to print")
    sp.add_argument("--json", action="store_true", help="print the whole response as JSON instead of a table")
    sp.add_argument("--columns", action="store_true", help="send the candidates as columns (ScoreColumns)")
    sp.add_argument("--timeout", type=float, default=5.0)
    client_security_flags(sp)
    sp.set_defaults(func=_cmd_score)

    add_auth_parser(sub)

    from serving.rollout.cli import add_rollout_parser

    add_rollout_parser(sub)
