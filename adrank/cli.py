"""`adrank`: one console script fronting every stage. The verbs live beside what they drive
(`models/cli.py` the offline side, `exporters/cli.py` export, `serving/cli.py` serve / score / auth,
`serving/triton/cli.py` the bundled tritonserver, `loadtests` load tests and benchmarks); this module only
assembles them, so `adrank serve` imports the serving runtime and nothing else.
"""

from __future__ import annotations

import argparse
import logging
import sys

from models.paths import DEFAULT_RUN


def _cmd_demo(a: argparse.Namespace) -> int:
    from adrank.demo import run_demo

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
    if a.rest[:1] == ["rollout"]:
        from loadtests.rollout_acceptance import main as rollout_bench

        return rollout_bench(a.rest[1:])
    if a.rest[:1] == ["triton"]:
        from loadtests.bench_triton import main as triton_bench

        return triton_bench(a.rest[1:])
    from loadtests.bench import main as bench

    return bench(a.rest)


def _cmd_logs(a: argparse.Namespace) -> int:
    """`logs join` is the label join (models.logjoin); `logs eval` scores later traffic (models.logeval)."""
    if a.rest[:1] == ["join"]:
        from models.logjoin import main as join

        return join(a.rest[1:])
    if a.rest[:1] == ["eval"]:
        from models.logeval import main as evaluate

        return evaluate(a.rest[1:])
    print("usage: adrank logs join --request-log DIR --labels F --click-window S --conversion-window S "
          "--out events.npz\n       adrank logs eval --checkpoint vm.pt --request-log DIR --labels F --truth F "
          "[--context events.npz]", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    from exporters.cli import register as export_verbs
    from models.cli import register as offline_verbs
    from serving.cli import register as serving_verbs
    from stack.cli import register as stack_verbs

    p = argparse.ArgumentParser(prog="adrank", description="Ads ranking on historical FM embeddings.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="verb", required=True)
    offline_verbs(sub)
    export_verbs(sub)
    serving_verbs(sub)
    stack_verbs(sub)

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
                               ("bench", _cmd_bench, "benchmarks: cache | serve | triton | rollout | all"),
                               ("simulate", "loadtests.simulate", "simulated users of the synthetic world against "
                                "a server; writes labels"),
                               ("logs", _cmd_logs, "request-log tools: `logs join` (labels within attribution "
                                "windows → EventLog), `logs eval` (a VM on later traffic vs the oracle)"),
                               ("replay", "serving.replay", "re-score logged requests; share reproduced bit for bit"),
                               ("monitor", "models.monitor", "calibration and live transfer ratio per model version "
                                "and arm from a joined log; --serve-metrics for Prometheus")):
        sp = sub.add_parser(verb, help=text, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
        sp.set_defaults(func=_delegate(module) if isinstance(module, str) else module)
    return p


# Verbs whose flags belong to another module's parser: handed over before argparse sees them.
DELEGATED = {"triton": "serving.triton.cli", "loadtest": "loadtests.runner", "bench": _cmd_bench,
             "simulate": "loadtests.simulate", "logs": _cmd_logs, "replay": "serving.replay",
             "monitor": "models.monitor"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        ns = argparse.Namespace(rest=argv[1:])
        module = DELEGATED[argv[0]]
        try:
            return int((_delegate(module) if isinstance(module, str) else module)(ns) or 0)
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


_PROJECT_PACKAGES = frozenset({"adrank", "models", "embedding_cache", "exporters", "serving", "loadtests", "stack"})


def _is_user_error(exc: Exception) -> bool:
    """A refusal raised on purpose by the project (bad flags, files, schemas), not a bug: print it, no trace."""
    return type(exc).__module__.split(".")[0] in _PROJECT_PACKAGES


if __name__ == "__main__":
    sys.exit(main())
