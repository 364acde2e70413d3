"""`adrank experiment`: every VM variant over shared FM artefacts, several seeds, one results table.

Per seed: load data → split by time → train the FM (+ code autoencoder) on the train split → log FM
predictions once per example (DAS) and a code per event → train each VM variant on the same split
→ evaluate on the test split. Transfer ratio TR = ΔNE_VM / ΔNE_FM against the seed's own baseline.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from models.das import read_das, write_das
from models.das_oos import OUT_OF_SAMPLE, assert_out_of_sample, out_of_sample_log
from models.data import load_dataset
from models.data.schema import EventLog
from models.distill import DistillConfig
from models.embed import open_history, publish_codes
from models.fm_pipeline import SMALL_FM, FMTrainConfig, fm_metrics, train_fm, validation_split
from models.metrics import summarize, transfer_ratio
from models.stats import HOLDS, paired_interval
from models.train import HistorySource, TrainConfig, TrainResult, VMData, fit_vm, prepare_vm_data
from models.vm import VMConfig


@dataclass(frozen=True, kw_only=True)
class Profile:
    n_events: int
    fm_epochs: int
    vm_epochs: int
    history_len: int  # L the VM reads
    fm_history_len: int  # T the FM reads
    ablations: bool
    fm_batch_size: int = 256
    fm_lr: float = 1e-3
    fm_size: tuple[tuple[str, int | bool], ...] = tuple(SMALL_FM.items())
    vm_placements: tuple[int, ...] = (0, 1)
    """The VMs' vertical: the placements whose traffic they train and are tested on. The FM trains on every
    placement (one FM for many verticals, as in ExFM); datasets with one placement give the VMs everything."""
    kd_grid: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    """Values tried for each KD variant's strength knob (λ for a single head, β for the aux head). Every KD
    variant gets the same grid and picks on the validation slice, so no variant wins by a better default."""
    validation_fraction: float = 0.1  # the latest part of the VM's training range, held out to pick the knob


PROFILES = {
    "quick": Profile(n_events=30_000, fm_epochs=1, vm_epochs=2, history_len=8, fm_history_len=16, ablations=False,
                     kd_grid=(1.0, 2.0)),
    "default": Profile(n_events=300_000, fm_epochs=4, vm_epochs=3, history_len=32, fm_history_len=32, ablations=True,
                       fm_size=tuple({**SMALL_FM, "interaction_category": True}.items())),
}
"""The default profile's FM has the category preference scalars (`FMConfig.interaction_category`): chosen on
validation NE in `adrank fm-gap --seeds 5` (its paired validation gain over the FM without them lies above
zero over 5 seeds; test NE was shown, not used; docs/results.md). The quick profile keeps the FM of the tests."""

# name → (VM config overrides, distillation)
VARIANTS: dict[str, tuple[dict, DistillConfig]] = {
    "vm_baseline": ({}, DistillConfig()),
    "vm_kd": ({}, DistillConfig(mode="single")),
    "vm_kd_aux": ({}, DistillConfig(mode="aux", adapter=True)),
    "vm_loopfm_sum": ({"history_pooling": "sum"}, DistillConfig()),
    "vm_loopfm_attn": ({"history_pooling": "attention"}, DistillConfig()),
    "vm_kd_loopfm": ({"history_pooling": "sum"}, DistillConfig(mode="single")),
}
LOOPFM_VARIANTS = {"vm_loopfm_sum", "vm_loopfm_attn", "vm_kd_loopfm"}
KD_KNOB = {"single": "weight", "aux": "grad_scale"}
"""The knob that sets how hard a KD variant distils: λ scales the single head's soft-label loss; β scales
what the aux head sends into the trunk (its own loss weight w stays 1, so the serving head never sees it)."""


class CodeCache:
    """The seed's FM codes published to the embedded cache, one snapshot root per codec: VMs read
    their history through the same reader the ranking service uses (strictly before t, one fm_version,
    the population prior for users without history)."""

    def __init__(self, root: Path, fm_version: str, events: EventLog, codes: np.ndarray) -> None:
        self.root, self.fm_version, self.events, self.codes = root, fm_version, events, codes

    def history(self, codec: str = "int4", width: int | None = None) -> HistorySource:
        root = self.root / codec
        if not root.exists():
            publish_codes(root, self.fm_version, self.events, np.arange(len(self.events)), self.codes, codec=codec)
        return open_history(root, self.fm_version, self.events, width=width)


def select_kd_strength(data: VMData, cfg: VMConfig, tc: TrainConfig, distill: DistillConfig,
                       grid: tuple[float, ...], fraction: float) -> tuple[DistillConfig, dict[float, float]]:
    """Picks the KD variant's strength knob by NE on the latest `fraction` of the training rows (the test
    rows are never seen), trained on the rest; returns the chosen config and the validation NE per value.

    Why: how hard to distil decides the single- vs aux-head comparison (a single head pulled hard towards
    the FM loses its own calibration; an aux head can take a larger β), so a fixed default would pick the
    winner. Ties go to the smaller value."""
    knob = KD_KNOB[distill.mode]
    fit_rows, val_rows = validation_split(data, fraction)
    if len(val_rows) == 0:
        raise ValueError("KD strength selection needs validation rows: validation_fraction is too small")
    held_out = replace(data, train_idx=fit_rows, test_idx=val_rows)
    scores = {v: fit_vm(held_out, cfg, tc, replace(distill, **{knob: v}), progress=False).metrics["test"]["ctr_ne"]
              for v in grid}
    best = min(grid, key=lambda v: (scores[v], v))
    return replace(distill, **{knob: best}), scores


def _run_variant(data: VMData, name: str, overrides: dict, distill: DistillConfig, base: VMConfig,
                 tc: TrainConfig, profile: Profile, progress: bool) -> dict:
    cfg = replace(base, **overrides) if name in LOOPFM_VARIANTS else replace(base, history_dim=0)
    t0 = time.perf_counter()
    selection: dict = {}
    if distill.mode != "none":
        distill, scores = select_kd_strength(data, cfg, tc, distill, profile.kd_grid, profile.validation_fraction)
        knob = KD_KNOB[distill.mode]
        selection = {"knob": knob, "value": getattr(distill, knob),
                     "validation_ne": {str(v): s for v, s in scores.items()}}
    res = fit_vm(data, cfg, tc, distill, progress=progress, desc=name)
    m = res.metrics["test"]
    return {"auc": m["ctr_auc"], "ne": m["ctr_ne"], "calibration": m["ctr_calibration"],
            "cvr_auc": m.get("cvr_auc", float("nan")), "seconds": time.perf_counter() - t0,
            "loss_curve": res.loss_curve, **({"selection": selection} if selection else {})}


def run_seed(dataset: str, seed: int, profile: Profile, work_dir: Path, *, progress: bool = True,
             log: Callable[[str], None] = print, threads: int = 2, das_log: str = "in-sample") -> dict:
    """One seed: FM, DAS log (`das_log`: in-sample, kfold or progressive; see models.das_oos), every VM
    variant and the ablations, all on that seed's split."""
    events = load_dataset(dataset, n_events=profile.n_events, seed=seed)
    tc = TrainConfig.for_dataset(dataset, epochs=profile.vm_epochs, seed=seed, threads=threads)
    data = prepare_vm_data(events, tc)
    log(f"[seed {seed}] {len(events):,} events, train {len(data.train_idx):,} / test {len(data.test_idx):,}")
    t0 = time.perf_counter()
    fm_config = FMTrainConfig(history_len=profile.fm_history_len, epochs=profile.fm_epochs, seed=seed,
                              batch_size=profile.fm_batch_size, lr=profile.fm_lr, fm=dict(profile.fm_size),
                              threads=threads)
    fm = train_fm(data, fm_config, progress=progress)
    log(f"[seed {seed}] FM {fm.fm_version}: test AUC {fm.metrics['test']['ctr_auc']:.4f} "
        f"NE {fm.metrics['test']['ctr_ne']:.4f}; kept epoch {fm.best_epoch} of {fm.epochs_run} "
        f"(validation NE {', '.join(f'{v:.4f}' for v in fm.validation_ne)}) ({time.perf_counter() - t0:.0f} s)")
    cache = CodeCache(work_dir / f"cache-seed{seed}", fm.fm_version, events, fm.codes)
    full_train = len(data.train_idx)
    train_rows_all = data.train_idx
    data = vertical_view(data, profile.vm_placements)
    # KD reads the DAS log from disk, as `adrank train vm --kd` does: one FM pass per example, logged once
    das_info: dict = {"log": das_log}
    if das_log == "in-sample":
        logged, logits = np.ones(len(events), bool), fm.logits
    else:
        oos = out_of_sample_log(replace(data, train_idx=train_rows_all), fm_config, das_log, main_logits=fm.logits,
                                log=lambda m: log(f"[seed {seed}] {m.strip()}"))
        assert_out_of_sample(oos)
        logged, logits = oos.logged, oos.logits
        das_info["teacher_test_ne"] = {str(k): v for k, v in oos.teacher_ne.items()}
    das = write_das(work_dir / f"das-seed{seed}.npz", fm.fm_version, events["event_id"][logged], logits[logged],
                    source=events.source, log=das_log)
    data.fm_logits, data.fm_version = read_das(das, events, fm.fm_version), fm.fm_version
    vm_train = data.train_idx
    has_log = np.isfinite(data.fm_logits[vm_train])
    das_info["logged_share_of_vm_train"] = float(has_log.mean())
    das_info["teacher_ne_on_vm_train"] = fm_metrics(events, vm_train[has_log], data.fm_logits[vm_train[has_log]])["ne"]
    log(f"[seed {seed}] DAS log {das_log}: {has_log.mean():.1%} of the VM training rows logged; teacher NE on them "
        f"{das_info['teacher_ne_on_vm_train']:.4f}")
    data.history = cache.history("int4")  # served codes are int4 (LoopFM), from the user's events on every placement
    scope = f"placements {profile.vm_placements}" if len(data.train_idx) < full_train else "every row (one placement)"
    log(f"[seed {seed}] VM vertical: {scope}, train {len(data.train_idx):,} / test {len(data.test_idx):,}")
    base = VMConfig(history_dim=fm.codes.shape[1], history_len=profile.history_len)
    fm_test = fm_metrics(events, data.test_idx, fm.logits[data.test_idx])
    log(f"[seed {seed}] FM on the VM test rows: AUC {fm_test['auc']:.4f} NE {fm_test['ne']:.4f}")
    out: dict = {"fm": {"auc": fm_test["auc"], "ne": fm_test["ne"],
                        "calibration": fm_test["calibration"], "loss_curve": fm.loss_curve,
                        "all_placements": {"auc": fm.metrics["test"]["ctr_auc"], "ne": fm.metrics["test"]["ctr_ne"]},
                        "best_epoch": fm.best_epoch, "epochs_run": fm.epochs_run, "validation_ne": fm.validation_ne},
                 "fm_version": fm.fm_version, "das": das_info}
    test = events.take(data.test_idx)
    if test.has_ground_truth:
        o = summarize(test["click"], test["p_click"])
        out["oracle"] = {"auc": o["auc"], "ne": o["ne"], "calibration": o["calibration"]}
    for name, (overrides, distill) in VARIANTS.items():
        out[name] = _run_variant(data, name, overrides, distill, base, tc, profile, progress)
        chosen = out[name].get("selection")
        picked = (f"  ({chosen['knob']} = {chosen['value']:g} on validation: "
                  + ", ".join(f"{v}→{s:.4f}" for v, s in chosen["validation_ne"].items()) + ")") if chosen else ""
        log(f"[seed {seed}] {name:16s} AUC {out[name]['auc']:.4f} NE {out[name]['ne']:.4f}{picked}")
    if profile.ablations:
        out["ablations"] = run_ablations(data, cache, base, tc, profile, progress, log)
    return out


def vertical_view(data: VMData, placements: tuple[int, ...]) -> VMData:
    """The same features and split restricted to one vertical's rows (a no-op when the log has a single
    placement, as MovieLens does)."""
    placement = data.events["placement"]
    if len(np.unique(placement)) <= 1:
        return replace(data)
    inside = np.isin(placement, np.asarray(placements))
    return replace(data, train_idx=data.train_idx[inside[data.train_idx]], test_idx=data.test_idx[inside[data.test_idx]])


def run_ablations(data: VMData, cache: CodeCache, base: VMConfig, tc: TrainConfig, profile: Profile,
                  progress: bool, log: Callable[[str], None]) -> dict:
    """LoopFM-sum VM (no KD) under one change at a time: history length, code prefix width, codec; then
    KD without history at every value of the strength grid (test NE, for reading only: the variants pick
    theirs on the validation slice) and the single head with the student adapter."""
    results: dict[str, dict] = {}

    def record(label: str, r: TrainResult) -> None:
        results[label] = {"auc": r.metrics["test"]["ctr_auc"], "ne": r.metrics["test"]["ctr_ne"]}
        log(f"  ablation {label:10s} AUC {results[label]['auc']:.4f} NE {results[label]['ne']:.4f}")

    d = cache.codes.shape[1]
    runs: list[tuple[str, int, int, str]] = (
        [(f"L={n}", n, d, "int4") for n in (1, 4, 16, 64)]
        + [(f"width={w}", base.history_len, w, "int4") for w in (4, 8, 16)]
        + [(f"codec={c}", base.history_len, d, c) for c in ("float32", "int8")]
    )
    for label, length, width, codec in runs:
        data.history = cache.history(codec, width=width if width < d else None)
        cfg = replace(base, history_len=length, history_dim=width, history_pooling="sum")
        record(label, fit_vm(data, cfg, tc, progress=progress, desc=f"ablation {label}"))
    data.history = cache.history("int4")
    # ExFM knobs, without history: how much the aux head's gradient scale β and the adapter matter
    kd_runs = ([(f"kd_single λ={v:g}", DistillConfig(mode="single", weight=v)) for v in profile.kd_grid]
               + [(f"kd_aux β={v:g}", DistillConfig(mode="aux", adapter=True, grad_scale=v)) for v in profile.kd_grid]
               + [("kd_single+adapter λ=1", DistillConfig(mode="single", adapter=True))])
    for label, distill in kd_runs:
        record(label, fit_vm(data, replace(base, history_dim=0), tc, distill, progress=progress,
                             desc=f"ablation {label}"))
    return results


CLAIMS: dict[str, str] = {
    "fm_beats_baseline": "NE(vm_baseline) − NE(fm)",
    "loopfm_beats_baseline": "NE(vm_baseline) − NE(vm_loopfm_sum)",
    "kd_loopfm_beats_kd": "NE(vm_kd) − NE(vm_kd_loopfm)",
    "tr_kd_loopfm_ge_1.5x_tr_kd": "TR(vm_kd_loopfm) − 1.5·TR(vm_kd)",
    "aux_kd_beats_single_kd": "NE(vm_kd) − NE(vm_kd_aux)",
}
"""Each LoopFM / ExFM claim as a paired difference per seed (same split, same FM, same DAS log), signed
so that > 0 is the claim's direction; it holds only when the 95% interval of the mean lies above zero."""


def claim_differences(seed: dict) -> dict[str, float]:
    """One seed's paired difference per claim (NaN for the TR claim where TR is undefined on that seed)."""
    ne = {n: seed[n]["ne"] for n in ("fm", *VARIANTS)}
    tr = {n: transfer_ratio(ne["vm_baseline"], ne[n], ne["fm"]) for n in ("vm_kd", "vm_kd_loopfm")}
    return {"fm_beats_baseline": ne["vm_baseline"] - ne["fm"],
            "loopfm_beats_baseline": ne["vm_baseline"] - ne["vm_loopfm_sum"],
            "kd_loopfm_beats_kd": ne["vm_kd"] - ne["vm_kd_loopfm"],
            "tr_kd_loopfm_ge_1.5x_tr_kd": tr["vm_kd_loopfm"] - 1.5 * tr["vm_kd"],
            "aux_kd_beats_single_kd": ne["vm_kd"] - ne["vm_kd_aux"]}


def claim_intervals(per_seed: list[dict]) -> dict[str, dict]:
    """Per claim: the mean paired difference, its 95% paired t interval over seeds, n and the verdict."""
    diffs = [claim_differences(s) for s in per_seed]
    return {k: {"difference": CLAIMS[k], **paired_interval([d[k] for d in diffs]).to_dict()} for k in CLAIMS}


def aggregate(per_seed: list[dict]) -> dict:
    """mean ± std per variant, transfer ratios per seed, and each claim's paired interval and verdict
    (`checks`: claim → True only when its interval excludes zero on the claim's side)."""
    names = ["fm", *VARIANTS]
    summary: dict = {"variants": {}, "transfer_ratio": {}, "checks": {}}
    for n in names:
        auc = np.array([s[n]["auc"] for s in per_seed])
        ne = np.array([s[n]["ne"] for s in per_seed])
        cal = np.array([s[n]["calibration"] for s in per_seed])
        summary["variants"][n] = {"auc_mean": float(auc.mean()), "auc_std": float(auc.std(ddof=0)),
                                  "ne_mean": float(ne.mean()), "ne_std": float(ne.std(ddof=0)),
                                  "calibration": float(cal.mean()), "auc": auc.tolist(), "ne": ne.tolist()}
    if "oracle" in per_seed[0]:
        summary["oracle"] = {k: float(np.mean([s["oracle"][k] for s in per_seed])) for k in ("auc", "ne")}
    for n in VARIANTS:
        if n == "vm_baseline":
            continue
        trs = [transfer_ratio(s["vm_baseline"]["ne"], s[n]["ne"], s["fm"]["ne"]) for s in per_seed]
        # TR is undefined on a seed where the FM does not beat the baseline (ΔNE_FM <= 0)
        defined = [t for t in trs if np.isfinite(t)]
        summary["transfer_ratio"][n] = {"mean": float(np.mean(defined)) if defined else float("nan"),
                                        "per_seed": trs, "defined_seeds": len(defined)}
    summary["kd_selection"] = {
        n: {"knob": per_seed[0][n]["selection"]["knob"], "per_seed": [s[n]["selection"]["value"] for s in per_seed],
            "validation_ne": [s[n]["selection"]["validation_ne"] for s in per_seed]}
        for n in VARIANTS if "selection" in per_seed[0][n]
    }
    summary["claims"] = claim_intervals(per_seed)
    summary["checks"] = {k: c["verdict"] == HOLDS for k, c in summary["claims"].items()}
    if any("ablations" in s for s in per_seed):
        labels = per_seed[0]["ablations"].keys()
        summary["ablations"] = {
            lab: {"auc_mean": float(np.mean([s["ablations"][lab]["auc"] for s in per_seed])),
                  "ne_mean": float(np.mean([s["ablations"][lab]["ne"] for s in per_seed])),
                  "ne_std": float(np.std([s["ablations"][lab]["ne"] for s in per_seed]))}
            for lab in labels
        }
    return summary


def write_results(out_dir: Path, dataset: str, seeds: list[int], profile_name: str, per_seed: list[dict],
                  summary: dict, command: str, seconds: float) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"dataset": dataset, "seeds": seeds, "profile": profile_name, "command": command,
               "seconds": seconds, **summary, "per_seed": per_seed}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2, default=float))
    lines = [f"# Results: {dataset} ({profile_name} profile, seeds {seeds})", "", f"Command: `{command}`  ",
             f"Wall time: {seconds / 60:.1f} min on this machine.", "",
             "| variant | AUC (mean ± std) | NE (mean ± std) | calibration | TR |", "|---|---|---|---|---|"]
    for n, v in summary["variants"].items():
        tr = summary["transfer_ratio"].get(n, {}).get("mean")
        tr_text = "" if tr is None else f"{tr:.3f}" if np.isfinite(tr) else "undefined (FM ≤ baseline)"
        lines.append(f"| {n} | {v['auc_mean']:.4f} ± {v['auc_std']:.4f} | {v['ne_mean']:.4f} ± {v['ne_std']:.4f} | "
                     f"{v['calibration']:.3f} | {tr_text} |")
    if "oracle" in summary:
        lines.append(f"| oracle (true probabilities) | {summary['oracle']['auc']:.4f} | {summary['oracle']['ne']:.4f} | | |")
    if summary.get("kd_selection"):
        lines += ["", "KD strength picked per seed on the validation slice (latest part of the training range; "
                  "test rows unseen):", "", "| variant | knob | chosen per seed |", "|---|---|---|"]
        lines += [f"| {n} | {'λ' if k['knob'] == 'weight' else 'β'} | {', '.join(f'{x:g}' for x in k['per_seed'])} |"
                  for n, k in summary["kd_selection"].items()]
    lines += ["", "Claims as paired differences per seed (> 0 is the claim's direction; mean and 95% paired t "
              "interval over seeds; a claim holds only when the interval lies above zero):", "",
              "| claim | difference | mean | 95% interval | n | verdict |", "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {c['difference']} | {c['mean']:+.4f} | {_interval_text(c)} | {c['n']} | {c['verdict']} |"
              for k, c in summary["claims"].items()]
    if "ablations" in summary:
        lines += ["", "Ablations (L / width / codec: VM + LoopFM sum pooling, no KD; kd_*: KD without history at each "
                  "strength, test NE for reading only):",
                  "", "| setting | AUC | NE (mean ± std) |",
                  "|---|---|---|"]
        lines += [f"| {k} | {a['auc_mean']:.4f} | {a['ne_mean']:.4f} ± {a['ne_std']:.4f} |"
                  for k, a in summary["ablations"].items()]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    plot_results(out_dir, summary, per_seed)


def _interval_text(c: dict) -> str:
    if not (np.isfinite(c["low"]) and np.isfinite(c["high"])):
        return "none (n < 2)"
    return f"[{c['low']:+.4f}, {c['high']:+.4f}]"


def plot_results(out_dir: Path, summary: dict, per_seed: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["variants"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    means = [summary["variants"][n]["ne_mean"] for n in names]
    stds = [summary["variants"][n]["ne_std"] for n in names]
    ax1.bar(range(len(names)), means, yerr=stds, capsize=4, color="#4c72b0")
    ax1.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax1.set_ylabel("test NE (lower is better)")
    lo = min(means) - 3 * max(stds + [1e-3])
    ax1.set_ylim(lo, max(means) + 3 * max(stds + [1e-3]))
    oracle = f"; oracle NE {summary['oracle']['ne']:.3f}" if "oracle" in summary else ""
    ax1.set_title(f"NE by variant (mean ± std over seeds{oracle})")
    for n in ("fm", "vm_baseline", "vm_kd", "vm_loopfm_sum", "vm_kd_loopfm"):
        ax2.plot(per_seed[0][n]["loss_curve"], label=n)
    ax2.set_xlabel("step / 50")
    ax2.set_ylabel("training loss (EMA)")
    ax2.set_title("training curves (first seed)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "results.png", dpi=110)
    plt.close(fig)


DAS_LOGS = ("in-sample", *OUT_OF_SAMPLE)


def default_jobs() -> int:
    """One seed per core: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _seed_job(dataset: str, seed: int, profile: Profile, work_dir: str, threads: int, das_log: str,
              progress: bool) -> dict:
    """One seed in its own process (spawned: a fresh interpreter, no forked torch state); torch runs
    `threads` intra-op threads so N processes on N cores do not oversubscribe them."""
    import torch

    torch.set_num_threads(threads)
    log = partial(print, flush=True)
    return run_seed(dataset, seed, profile, Path(work_dir), progress=progress, log=log, threads=threads,
                    das_log=das_log)


def run_experiment(dataset: str, seeds: int, out_dir: str | Path, *, quick: bool = False, progress: bool = True,
                   command: str = "", jobs: int | None = None, das_log: str = "in-sample") -> dict:
    """Runs `seeds` seeds (0 … seeds-1), `jobs` at a time in spawned processes (default: one per core;
    1 runs them in this process), aggregates them and writes results.json / results.md / results.png."""
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if das_log not in DAS_LOGS:
        raise ValueError(f"--das-log must be one of {DAS_LOGS}, got {das_log!r}")
    jobs = min(jobs or default_jobs(), seeds)
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    profile_name = "quick" if quick else "default"
    profile = PROFILES[profile_name]
    t0 = time.perf_counter()
    seed_list = list(range(seeds))
    threads = max(1, default_jobs() // jobs) if jobs > 1 else TrainConfig().threads
    import tempfile

    with tempfile.TemporaryDirectory(prefix="adrank-exp-") as work:
        if jobs == 1:
            per_seed = [run_seed(dataset, s, profile, Path(work), progress=progress, threads=threads, das_log=das_log)
                        for s in seed_list]
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                futures = [pool.submit(_seed_job, dataset, s, profile, work, threads, das_log, False)
                           for s in seed_list]
                per_seed = [f.result() for f in futures]  # in seed order, whatever order they finish in
    summary = aggregate(per_seed)
    summary["das_log"] = das_log
    summary["jobs"] = jobs
    write_results(Path(out_dir), dataset, seed_list, profile_name, per_seed, summary,
                  command or f"adrank experiment --dataset {dataset} --seeds {seeds}{' --quick' if quick else ''}",
                  time.perf_counter() - t0)
    return {"profile": asdict(profile), **summary}
