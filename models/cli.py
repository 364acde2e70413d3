"""`adrank` verbs of the offline side: data, train fm|vm, das, embed, experiment, fm-ablation,
fm-scaling, fm-gap.

Each verb parses its flags and calls one `models` function; torch is imported inside the verb, so the
dispatcher (adrank/cli.py) starts light. `register` adds the verbs to the dispatcher's parser.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.paths import DEFAULT_RUN


def _load_events(a: argparse.Namespace):
    from models.pipeline import EventSource

    return EventSource(dataset=a.dataset, n_events=a.events, seed=a.seed, data_path=a.data_path,
                       events_file=getattr(a, "events_file", None)).load()


def _cmd_data(a: argparse.Namespace) -> int:
    events = _load_events(a)
    events.save(a.out)
    print(f"{len(events):,} events from {events.source} → {a.out}; cardinality {dict(events.cardinality)}")
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    """`--nproc N` > 1 hands the same job to N torchrun workers (models.distributed); rank 0 prints."""
    if a.what == "fm":
        return _cmd_train_fm(a)
    from models.pipeline import TrainJob, run_train_job, vm_summary

    job = TrainJob(dataset=a.dataset, n_events=a.events, seed=a.seed, epochs=a.epochs, data_path=a.data_path,
                   events_file=a.events_file, out_dir=a.out, fm_checkpoint=a.fm_checkpoint, cache_dir=a.cache_dir,
                   cache_url=a.cache_url, history=a.history, history_len=a.history_len,
                   history_width=a.history_width, kd=a.kd, kd_strength=a.kd_strength, adapter=a.adapter, das=a.das)
    if a.nproc != 1:
        from models.distributed import launch

        return launch("train_vm", job, a.nproc)
    result, ckpt = run_train_job(job)
    print(vm_summary(job, result, ckpt))
    return 0


def _cmd_train_fm(a: argparse.Namespace) -> int:
    from models.pipeline import FMJob, run_fm_job

    job = FMJob(dataset=a.dataset, n_events=a.events, seed=a.seed, epochs=a.epochs, data_path=a.data_path,
                events_file=a.events_file, out_dir=a.out)
    if a.nproc != 1:
        from models.distributed import launch

        return launch("train_fm", job, a.nproc)
    print(run_fm_job(job))
    return 0


def _cmd_das(a: argparse.Namespace) -> int:
    from models.fm_pipeline import log_predictions
    from models.train import TrainConfig, prepare_vm_data

    events = _load_events(a)
    data = prepare_vm_data(events, TrainConfig.for_dataset(events.source))
    if a.out_of_sample:
        from models.fm_pipeline import log_out_of_sample

        path, oos = log_out_of_sample(a.fm_checkpoint, data, a.out, a.out_of_sample, folds=a.folds,
                                      windows=a.windows)
        print(f"DAS log ({a.out_of_sample}): {int(oos.logged.sum()):,} of {len(events):,} examples, each logged by "
              f"an FM that did not train on it ({len(oos.teacher_ne)} FMs; test NE per FM "
              + ", ".join(f"{k}: {v:.4f}" for k, v in oos.teacher_ne.items()) + f") → {path}")
        return 0
    path = log_predictions(a.fm_checkpoint, data, a.out)
    print(f"DAS log: FM predictions for {len(events):,} examples → {path}")
    return 0


def _cmd_embed(a: argparse.Namespace) -> int:
    """`--nproc N` > 1: N torchrun workers each embed their users' events; one publish at the end."""
    from models.pipeline import EmbedJob, run_embed_job

    job = EmbedJob(dataset=a.dataset, n_events=a.events, seed=a.seed, data_path=a.data_path,
                   events_file=a.events_file, fm_checkpoint=a.fm_checkpoint, split=a.split,
                   cache_dir=a.cache_dir or (None if a.cache_url else f"{DEFAULT_RUN}/cache"), cache_url=a.cache_url,
                   codec=a.codec, since=a.since)
    if a.nproc != 1:
        from models.distributed import launch

        return launch("embed", job, a.nproc)
    print(run_embed_job(job))
    return 0


def _cmd_experiment(a: argparse.Namespace) -> int:
    from models.experiment import run_experiment

    command = (f"adrank experiment --dataset {a.dataset} --seeds {a.seeds} --out {a.out}"
               + (" --quick" if a.quick else "") + (f" --das-log {a.das_log}" if a.das_log != "in-sample" else ""))
    summary = run_experiment(a.dataset, a.seeds, a.out, quick=a.quick, command=command, jobs=a.jobs,
                             das_log=a.das_log)
    print(Path(a.out, "results.md").read_text())
    claims = summary["claims"]
    print("; ".join(f"{k}: {c['verdict']}" for k, c in claims.items()))
    return 0


def _cmd_fm_ablation(a: argparse.Namespace) -> int:
    from models.fm_ablation import run_fm_ablation

    command = (f"adrank fm-ablation --dataset {a.dataset} --seeds {a.seeds} --out {a.out}"
               + (" --quick" if a.quick else ""))
    run_fm_ablation(a.dataset, a.seeds, a.out, quick=a.quick, command=command)
    print(Path(a.out, "results.md").read_text())
    return 0


def _cmd_fm_scaling(a: argparse.Namespace) -> int:
    from models.fm_scaling import run_fm_scaling

    if a.seeds is not None:
        return _sweep("fm-scaling", a)
    command = (f"adrank fm-scaling --dataset {a.dataset}" + (f" --seed {a.seed}" if a.seed else "")
               + f" --out {a.out}" + (" --quick" if a.quick else ""))
    run_fm_scaling(a.dataset, a.out, quick=a.quick, seed=a.seed, command=command)
    print(Path(a.out, "results.md").read_text())
    return 0


def _sweep(study: str, a: argparse.Namespace) -> int:
    """`--seeds N`: the study over seeds 0 … N-1 in parallel processes, summarised with 95% t intervals."""
    from models import seed_sweep
    from models.seed_sweep import run_sweep

    dataset = getattr(a, "dataset", "synthetic")
    command = (f"adrank {study}" + (f" --dataset {dataset}" if study == "fm-scaling" else "")
               + f" --seeds {a.seeds}" + (f" --jobs {a.jobs}" if a.jobs else "") + f" --out {a.out}"
               + (" --quick" if a.quick else ""))
    options = gap_options(a) if study == "fm-gap" else {}
    resume = bool(getattr(a, "resume", False))
    command += seed_sweep.gap_flags(**options) + (" --resume" if resume else "")
    run_sweep(study, a.seeds, a.out, dataset=dataset, quick=a.quick, jobs=a.jobs, command=command, resume=resume,
              **options)
    print(Path(a.out, "results.md").read_text())
    return 0


def gap_options(a: argparse.Namespace) -> dict:
    """fm-gap's `--candidates` / `--no-ablations` as run_fm_gap keywords (only the ones given)."""
    from models.fm_gap import PROFILES

    options: dict = {}
    if a.candidates is not None:
        options["candidates"] = tuple(k.strip() for k in a.candidates.split(",") if k.strip())
        PROFILES["quick" if a.quick else "default"].candidate_subset(options["candidates"])  # unknown keys fail here
    if a.no_ablations:
        options["ablations"] = False
    return options


def _cmd_fm_gap(a: argparse.Namespace) -> int:
    from models.fm_gap import run_fm_gap
    from models.seed_sweep import gap_flags

    if a.seeds is not None:
        return _sweep("fm-gap", a)
    options = gap_options(a)
    command = ("adrank fm-gap" + (f" --seed {a.seed}" if a.seed else "") + f" --out {a.out}"
               + (" --quick" if a.quick else "") + gap_flags(**options))
    run_fm_gap(a.out, quick=a.quick, seed=a.seed, command=command, **options)
    print(Path(a.out, "results.md").read_text())
    return 0


def _cmd_history_bound(a: argparse.Namespace) -> int:
    from models.history_bound import run_history_bound

    placements = tuple(int(p) for p in a.placements.split(",")) if a.placements else None
    command = (f"adrank history-bound --n-events {a.n_events} --seeds {a.seeds}"
               + (f" --placements {a.placements}" if a.placements else "")
               + (f" --experiment {a.experiment}" if a.experiment else "") + f" --out {a.out}")
    run_history_bound(a.n_events, a.seeds, a.out, placements=placements, experiment=a.experiment, command=command)
    print(Path(a.out, "results.md").read_text())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """The offline verbs, on the dispatcher's subparsers."""
    def data_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dataset", default="synthetic", choices=("synthetic", "movielens", "taobao"))
        sp.add_argument("--events", type=int, default=300_000, help="synthetic only: number of events")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--data-path", default=None, help="taobao only: folder or CSV in the BARS layout")

    def events_flags(sp: argparse.ArgumentParser, *aliases: str) -> None:
        data_flags(sp)
        sp.add_argument("--events-file", *aliases, dest="events_file", default=None,
                        help="an .npz written by `adrank data` or `adrank logs join` (instead of --dataset)")

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
    events_flags(sp, "--from-log")  # --from-log: the EventLog `adrank logs join` wrote
    sp.add_argument("--epochs", type=int, default=2)
    sp.add_argument("--out", default=DEFAULT_RUN)
    sp.add_argument("--nproc", type=int, default=1,
                    help="processes: above 1 trains DistributedDataParallel under torchrun (gloo on CPU, NCCL with "
                    "CUDA), the global batch split between them; rank 0 evaluates and writes (docs/distributed.md)")
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
    sp.add_argument("--out-of-sample", default=None, choices=("kfold", "progressive"),
                    help="log each training example with an FM that did not train on it: K FMs on the other users' "
                    "rows (kfold), or FMs on the earlier time windows (progressive); test rows with --fm-checkpoint")
    sp.add_argument("--folds", type=int, default=3, help="kfold: user folds (one FM each)")
    sp.add_argument("--windows", type=int, default=4, help="progressive: time windows (the first is not logged)")
    sp.set_defaults(func=_cmd_das)

    sp = sub.add_parser("embed", help="compute LoopFM codes for a data split and publish them to the cache")
    events_flags(sp)
    sp.add_argument("--fm-checkpoint", default=f"{DEFAULT_RUN}/fm.pt")
    sp.add_argument("--split", default="all", choices=("train", "test", "all"))
    cache_flags(sp, None)
    sp.add_argument("--codec", default="int4", choices=("float32", "float16", "int8", "int4", "pq"))
    sp.add_argument("--since", default=None,
                    help="'auto': only events at or after the published snapshot's high-water mark; or a time in ms")
    sp.add_argument("--nproc", type=int, default=1,
                    help="processes under torchrun, users split between them by hash; one publish of the combined "
                    "snapshot at the end, identical to one process's (docs/distributed.md)")
    sp.set_defaults(func=_cmd_embed)

    def study_flags(sp: argparse.ArgumentParser, out: str, quick_minutes: int) -> None:
        sp.add_argument("--dataset", default="synthetic", choices=("synthetic", "movielens"))
        sp.add_argument("--seeds", type=int, default=3)
        sp.add_argument("--out", default=out)
        sp.add_argument("--quick", action="store_true", help=f"small profile (≈ {quick_minutes} min) for tests")

    sp = sub.add_parser("experiment", help="train every VM variant over shared FM artefacts; results table")
    study_flags(sp, "runs/experiment", 3)
    sp.add_argument("--jobs", type=int, default=None,
                    help="seeds trained at once, each in its own process with 1 torch thread (default: one per core)")
    sp.add_argument("--das-log", default="in-sample", choices=("in-sample", "kfold", "progressive"),
                    help="the FM predictions KD distils from: the FM's own pass over its training rows (in-sample), "
                    "or out-of-sample logs from FMs that did not train on the row (models/das_oos.py)")
    sp.set_defaults(func=_cmd_experiment)

    sp = sub.add_parser("fm-ablation", help="FM with and without CompSkip / sliding window: FLOPs, time, NE")
    study_flags(sp, "runs/fm-ablation", 1)
    sp.set_defaults(func=_cmd_fm_ablation)

    sp = sub.add_parser("fm-scaling", help="FM test NE against FLOPs per example at several sizes; power-law fit")
    sp.add_argument("--dataset", default="synthetic", choices=("synthetic", "movielens"))
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", default="runs/fm-scaling")
    sp.add_argument("--seeds", type=int, default=None,
                    help="run seeds 0 … N-1 (N >= 2) in parallel processes and report 95%% t intervals "
                         "(models/seed_sweep.py); --seed is then ignored")
    sp.add_argument("--jobs", type=int, default=None, help="seeds trained at once with --seeds (default: one per core)")
    sp.add_argument("--quick", action="store_true", help="tiny profile (≈ 30 s) for tests")
    sp.set_defaults(func=_cmd_fm_scaling)

    sp = sub.add_parser("fm-gap", help="synthetic world: the FM's gap to the oracle with each world term removed; "
                        "FM changes compared on validation")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", default="runs/fm-gap")
    sp.add_argument("--seeds", type=int, default=None,
                    help="run seeds 0 … N-1 (N >= 2) in parallel processes and report 95%% t intervals "
                         "(models/seed_sweep.py); --seed is then ignored")
    sp.add_argument("--jobs", type=int, default=None, help="seeds trained at once with --seeds (default: one per core)")
    sp.add_argument("--quick", action="store_true", help="tiny profile for tests")
    sp.add_argument("--candidates", default=None,
                    help="comma-separated FM candidates to train, by key (default profile: experiment, all-global, "
                         "wider, longer, interaction, category-preference, interaction-category, wider-interaction); "
                         "the experiment FM always runs")
    sp.add_argument("--no-ablations", action="store_true",
                    help="train only the full world (its FM, the history bound, the candidates): skip the world-term "
                         "ablations and the short-history probe")
    sp.add_argument("--resume", action="store_true",
                    help="with --seeds: read each seed-S/results.json that already holds that seed of the same study "
                         "(profile, candidates, ablations) instead of training it again")
    sp.set_defaults(func=_cmd_fm_gap)

    sp = sub.add_parser("history-bound", help="synthetic world: the NE a model that knows the world but infers each "
                        "user's interest from their history could reach (models/history_bound.py)")
    sp.add_argument("--n-events", type=int, default=300_000)
    sp.add_argument("--seeds", type=int, default=5)
    sp.add_argument("--placements", default=None, help="comma-separated placements of the test rows (the VMs' "
                    "vertical of `adrank experiment` is 0,1); default every placement")
    sp.add_argument("--experiment", default=None, help="an `adrank experiment --dataset synthetic` results.json: "
                    "pair its per-seed FM NE (on the same rows) with the bound")
    sp.add_argument("--out", default="runs/history-bound")
    sp.set_defaults(func=_cmd_history_bound)
