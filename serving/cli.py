"""`adrank`: one console script fronting every stage. Each verb parses flags and calls one package
function; heavy imports (torch, locust) happen inside the verb so `adrank serve` starts light."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_RUN = "runs/demo"


def _load_events(a: argparse.Namespace):
    from models.data import load_dataset
    from models.data.schema import EventLog

    if getattr(a, "events_file", None):
        return EventLog.load(a.events_file)
    return load_dataset(a.dataset, n_events=a.events, seed=a.seed, path=a.data_path)


def _cmd_data(a: argparse.Namespace) -> int:
    events = _load_events(a)
    events.save(a.out)
    print(f"{len(events):,} events from {events.source} → {a.out}; cardinality {dict(events.cardinality)}")
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    if a.what == "fm":
        return _cmd_train_fm(a)
    from models.pipeline import TrainJob, run_train_job

    job = TrainJob(dataset=a.dataset, n_events=a.events, seed=a.seed, epochs=a.epochs, data_path=a.data_path,
                   events_file=a.events_file, out_dir=a.out, fm_checkpoint=a.fm_checkpoint, cache_dir=a.cache_dir,
                   cache_url=a.cache_url, history=a.history, history_len=a.history_len,
                   history_width=a.history_width, kd=a.kd, kd_strength=a.kd_strength, adapter=a.adapter, das=a.das)
    result, ckpt = run_train_job(job)
    t = result.metrics["test"]
    variant = f"history={job.history} kd={job.kd}" + (f" ({job.kd_strength:g})" if job.kd != "none" else "")
    print(f"VM ({variant}, fm_version {result.fm_version}) → {ckpt}: test CTR AUC {t['ctr_auc']:.4f} "
          f"NE {t['ctr_ne']:.4f}; CVR AUC {t.get('cvr_auc', float('nan')):.4f}")
    return 0


def _cmd_train_fm(a: argparse.Namespace) -> int:
    from models.das import DAS_FILE, write_das
    from models.fm_pipeline import FMTrainConfig, save_fm, train_fm
    from models.train import TrainConfig, prepare_vm_data

    events = _load_events(a)
    data = prepare_vm_data(events, TrainConfig.for_dataset(events.source))
    config = FMTrainConfig(epochs=a.epochs, seed=a.seed)
    fm = train_fm(data, config)
    path = save_fm(fm, data, config, Path(a.out) / "fm.pt")
    das = write_das(Path(a.out) / DAS_FILE, fm.fm_version, events["event_id"], fm.logits, source=events.source)
    t = fm.metrics["test"]
    print(f"FM {fm.fm_version} → {path}: test CTR AUC {t['ctr_auc']:.4f} NE {t['ctr_ne']:.4f}; "
          f"DAS log of {len(events):,} examples → {das}")
    return 0


def _cmd_das(a: argparse.Namespace) -> int:
    from models.fm_pipeline import log_predictions
    from models.train import TrainConfig, prepare_vm_data

    events = _load_events(a)
    data = prepare_vm_data(events, TrainConfig.for_dataset(events.source))
    path = log_predictions(a.fm_checkpoint, data, a.out)
    print(f"DAS log: FM predictions for {len(events):,} examples → {path}")
    return 0


def _cmd_embed(a: argparse.Namespace) -> int:
    import numpy as np

    from models.embed import CacheLocation
    from models.fm_pipeline import embed_split
    from models.train import TrainConfig, prepare_vm_data

    cache = CacheLocation.from_flags(a.cache_dir or (None if a.cache_url else f"{DEFAULT_RUN}/cache"), a.cache_url)
    events = _load_events(a)
    data = prepare_vm_data(events, TrainConfig.for_dataset(events.source))
    rows = {"train": data.train_idx, "test": data.test_idx, "all": np.arange(len(events))}[a.split]
    since = None if a.since is None else ("auto" if a.since == "auto" else int(a.since))
    res = embed_split(a.fm_checkpoint, data, rows, cache, codec=a.codec, since=since)
    if res is None:
        print(f"nothing to embed: no {a.split}-split event at or after the published high-water mark ({cache})")
        return 0
    print(f"{res.rows_offered:,} codes of {res.fm_version} ({a.split} split, {res.codec}) published as snapshot "
          f"{res.snapshot_id} in {cache}: {res.rows_before:,} → {res.rows_after:,} rows "
          f"(+{res.rows_added:,}), high-water mark {res.high_water_ms}")
    return 0


def _cmd_experiment(a: argparse.Namespace) -> int:
    from models.experiment import run_experiment

    command = (f"adrank experiment --dataset {a.dataset} --seeds {a.seeds} --out {a.out}"
               + (" --quick" if a.quick else ""))
    summary = run_experiment(a.dataset, a.seeds, a.out, quick=a.quick, command=command)
    print(Path(a.out, "results.md").read_text())
    failed = [k for k, ok in summary["checks"].items() if not ok]
    print("all checks hold" if not failed else f"checks that do not hold: {failed}")
    return 0


def _cmd_fm_ablation(a: argparse.Namespace) -> int:
    from models.fm_ablation import run_fm_ablation

    command = (f"adrank fm-ablation --dataset {a.dataset} --seeds {a.seeds} --out {a.out}"
               + (" --quick" if a.quick else ""))
    run_fm_ablation(a.dataset, a.seeds, a.out, quick=a.quick, command=command)
    print(Path(a.out, "results.md").read_text())
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from exporters.onnx_export import export_onnx

    repo = Path(a.repository)
    from serving.model_repository import next_version

    version = a.version or next_version(repo, a.name)
    path = export_onnx(a.checkpoint, repo, a.name, version)
    print(f"exported {a.name} v{version} → {path}")
    return 0


def _cmd_serve(a: argparse.Namespace) -> int:
    """Flags over ADRANK_* environment over ServerConfig defaults: a flag left out is None, so it
    leaves the environment's value in place."""
    import asyncio
    from dataclasses import fields

    from serving.config import ConfigError, ServerConfig
    from serving.server import serve_forever

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
    asyncio.run(serve_forever(config, ready_file=a.ready_file))
    return 0


def _cmd_score(a: argparse.Namespace) -> int:
    from rich.console import Console

    from serving.client import build_request, render_table, score

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
        resp = score(a.target, req, timeout_s=a.timeout, tls=tls, token=token)
    except grpc.RpcError as exc:  # print the status code and message, exit non-zero
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    if a.json:
        from google.protobuf.json_format import MessageToJson

        print(MessageToJson(resp, preserving_proto_field_name=True, indent=1))
        return 0
    Console().print(render_table(resp, req, limit=a.show))
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from serving.demo import run_demo

    return run_demo(out_dir=a.out, n_events=a.events, seed=a.seed, requests=a.requests, fm_epochs=a.fm_epochs)


def _delegate(module: str, func: str = "main"):
    def run(a: argparse.Namespace) -> int:
        import importlib

        return importlib.import_module(module).__dict__[func](a.rest)

    return run


def _cmd_bench(a: argparse.Namespace) -> int:
    """`bench cache` is the embedding cache's own benchmark; the rest live in loadtests."""
    if a.rest[:1] == ["cache"]:
        from embedding_cache.bench import main as cache_bench

        return cache_bench(a.rest[1:])
    if a.rest[:1] == ["triton"]:
        from serving.triton.bench import main as triton_bench

        return triton_bench(a.rest[1:])
    from loadtests.bench import main as bench

    return bench(a.rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adrank", description="Ads ranking on historical FM embeddings.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="verb", required=True)

    def data_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dataset", default="synthetic", choices=("synthetic", "movielens", "taobao"))
        sp.add_argument("--events", type=int, default=300_000, help="synthetic only: number of events")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--data-path", default=None, help="taobao only: folder or CSV in the BARS layout")

    def events_flags(sp: argparse.ArgumentParser) -> None:
        data_flags(sp)
        sp.add_argument("--events-file", default=None, help="an .npz written by `adrank data` (instead of --dataset)")

    def cache_flags(sp: argparse.ArgumentParser, default_dir: str | None) -> None:
        group = sp.add_mutually_exclusive_group()
        group.add_argument("--cache-dir", default=default_dir, help="embedded embedding cache directory")
        group.add_argument("--cache-url", default=None, help="Redis embedding cache, redis://HOST:PORT/DB")

    sp = sub.add_parser("data", help="generate or load events and save them as .npz")
    data_flags(sp)
    sp.add_argument("--out", default=f"{DEFAULT_RUN}/events.npz")
    sp.set_defaults(func=_cmd_data)

    sp = sub.add_parser("train", help="train a model: `train fm` (FM + codes + DAS log) or `train vm` (any variant)")
    sp.add_argument("what", choices=("vm", "fm"))
    events_flags(sp)
    sp.add_argument("--epochs", type=int, default=2)
    sp.add_argument("--out", default=DEFAULT_RUN)
    vm = sp.add_argument_group("vm variants (LoopFM history, KD from the FM's DAS log)")
    vm.add_argument("--fm-checkpoint", default=None, help="fm.pt the VM learns from (needed by --history / --kd)")
    cache_flags(vm, None)
    vm.add_argument("--history", default="none", choices=("none", "sum", "attention"),
                    help="LoopFM: pool the user's FM codes strictly before t (read from the cache)")
    vm.add_argument("--history-len", type=int, default=32, help="L: codes per user the VM reads")
    vm.add_argument("--history-width", type=int, default=None, help="code prefix width (default: the cache's)")
    vm.add_argument("--kd", default="none", choices=("none", "single", "aux"),
                    help="distil from the FM's logged predictions: single head or ExFM's auxiliary head")
    vm.add_argument("--kd-strength", type=float, default=1.0, help="λ (single head) or β (aux head's trunk share)")
    vm.add_argument("--adapter", action="store_true", help="ExFM student adapter on the FM's logit")
    vm.add_argument("--das", default=None, help="DAS log (default: das.npz beside --fm-checkpoint)")
    sp.set_defaults(func=_cmd_train)

    sp = sub.add_parser("das", help="log the FM's prediction for every example of an event log (DAS)")
    events_flags(sp)
    sp.add_argument("--fm-checkpoint", default=f"{DEFAULT_RUN}/fm.pt")
    sp.add_argument("--out", default=f"{DEFAULT_RUN}/das.npz")
    sp.set_defaults(func=_cmd_das)

    sp = sub.add_parser("embed", help="compute LoopFM codes for a data split and publish them to the cache")
    events_flags(sp)
    sp.add_argument("--fm-checkpoint", default=f"{DEFAULT_RUN}/fm.pt")
    sp.add_argument("--split", default="all", choices=("train", "test", "all"))
    cache_flags(sp, None)
    sp.add_argument("--codec", default="int4", choices=("float32", "float16", "int8", "int4", "pq"))
    sp.add_argument("--since", default=None,
                    help="'auto': only events at or after the published snapshot's high-water mark; or a time in ms")
    sp.set_defaults(func=_cmd_embed)

    def study_flags(sp: argparse.ArgumentParser, out: str, quick_minutes: int) -> None:
        sp.add_argument("--dataset", default="synthetic", choices=("synthetic", "movielens"))
        sp.add_argument("--seeds", type=int, default=3)
        sp.add_argument("--out", default=out)
        sp.add_argument("--quick", action="store_true", help=f"small profile (≈ {quick_minutes} min) for tests")

    sp = sub.add_parser("experiment", help="train every VM variant over shared FM artefacts; results table")
    study_flags(sp, "runs/experiment", 3)
    sp.set_defaults(func=_cmd_experiment)

    sp = sub.add_parser("fm-ablation", help="FM with and without CompSkip / sliding window: FLOPs, time, NE")
    study_flags(sp, "runs/fm-ablation", 1)
    sp.set_defaults(func=_cmd_fm_ablation)

    sp = sub.add_parser("export", help="export a VM checkpoint to ONNX in a model repository")
    sp.add_argument("--checkpoint", default=f"{DEFAULT_RUN}/vm.pt")
    sp.add_argument("--repository", default=f"{DEFAULT_RUN}/model_repository")
    sp.add_argument("--name", default="vm")
    sp.add_argument("--version", type=int, default=None, help="default: one above the newest")
    sp.set_defaults(func=_cmd_export)

    from serving.config import BACKENDS, CACHE_FALLBACKS, flag_help
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
    cache = sp.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", help="embedded embedding cache directory (LoopFM models read FM history): "
                       "cache_backend=embedded, cache_location=DIR [env ADRANK_CACHE_BACKEND, ADRANK_CACHE_LOCATION]")
    cache.add_argument("--cache-url", help="Redis embedding cache, redis://HOST:PORT/DB: cache_backend=redis, "
                       "cache_location=URL")
    sp.add_argument("--cache-refresh-s", type=float, help=flag_help("cache_refresh_s"))
    for name in ("max_candidates", "max_message_bytes", "max_future_skew_ms", "intra_op_threads",
                 "max_concurrent_rpcs", "metrics_port", "max_in_flight", "max_queued", "max_queue_wait_ms",
                 "retry_after_ms", "max_deadline_ms", "cache_timeout_ms", "cache_breaker_failures"):
        sp.add_argument("--" + name.replace("_", "-"), type=int, help=flag_help(name))
    for name in ("drain_delay_s", "drain_timeout_s", "cache_breaker_cooldown_s", "readiness_interval_s"):
        sp.add_argument("--" + name.replace("_", "-"), type=float, help=flag_help(name))
    sp.add_argument("--cache-fallback", choices=CACHE_FALLBACKS, help=flag_help("cache_fallback"))
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
    sp.add_argument("--timeout", type=float, default=5.0)
    client_security_flags(sp)
    sp.set_defaults(func=_cmd_score)

    add_auth_parser(sub)

    sp = sub.add_parser("demo", help="the LoopFM loop end to end: FM → embed → VM and LoopFM VM → export → serve "
                                     "→ score")
    sp.add_argument("--out", default=DEFAULT_RUN)
    sp.add_argument("--events", type=int, default=100_000)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--requests", type=int, default=200)
    sp.add_argument("--fm-epochs", type=int, default=2)
    sp.set_defaults(func=_cmd_demo)

    for verb, module, text in (("triton", "serving.triton.cli", "start|stop|status the bundled tritonserver"),
                               ("loadtest", "loadtests.runner", "locust load test against latency budgets"),
                               ("bench", None, "benchmarks: cache | serve | all")):
        sp = sub.add_parser(verb, help=text, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
        sp.set_defaults(func=_delegate(module) if module else _cmd_bench)
    return p


# Verbs whose flags belong to another module's parser: handed over before argparse sees them.
DELEGATED = {"triton": "serving.triton.cli", "loadtest": "loadtests.runner", "bench": None}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        ns = argparse.Namespace(rest=argv[1:])
        module = DELEGATED[argv[0]]
        try:
            return int((_delegate(module) if module else _cmd_bench)(ns) or 0)
        except ModuleNotFoundError as exc:
            print(f"error: {exc}. Is the extra that provides it installed? (pip install -e '.[triton,load,dev]')",
                  file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        print(f"error: {exc}. Is the extra that provides it installed? (pip install -e '.[triton,load,dev]')",
              file=sys.stderr)
        return 2
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)  # the project's typed errors name the flag or file at fault
        return 2


_PROJECT_PACKAGES = frozenset({"models", "embedding_cache", "exporters", "serving", "loadtests"})


def _is_user_error(exc: Exception) -> bool:
    """A refusal raised on purpose by the project (bad flags, files, schemas), not a bug: print it, no trace."""
    return type(exc).__module__.split(".")[0] in _PROJECT_PACKAGES


if __name__ == "__main__":
    sys.exit(main())
