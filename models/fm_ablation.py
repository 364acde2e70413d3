"""`adrank fm-ablation`: what CompSkip and sliding-window attention save, and what NE they cost.

Kunlun's efficiency claims are about compute at equal quality, so the ablation trains the four
CompSkip × windowing variants of one FM on the same data, split and seeds, and reports for each:

* FLOPs per example, counted analytically (`models.fm.flops`, held exact against torch's counter by a
  test) at the trained history length and at longer ones, where the O(T²) term starts to dominate;
* training time per epoch, measured in the same run (a ratio against the all-global, full-attention
  baseline, never an absolute figure from another machine);
* test AUC / NE, mean ± std over seeds, and ΔNE against the baseline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.data import load_dataset
from models.fm.flops import count_flops
from models.fm_pipeline import SMALL_FM, FMTrainConfig, train_fm
from models.train import TrainConfig, VMData, prepare_vm_data

BASELINE = "all-global, full attention"
VARIANTS: dict[str, dict[str, bool]] = {
    "CompSkip + window": {"compskip": True, "windowed": True},
    "CompSkip, full attention": {"compskip": True, "windowed": False},
    "all-global + window": {"compskip": False, "windowed": True},
    BASELINE: {"compskip": False, "windowed": False},
}
LONG_HISTORIES = (256, 1024)  # analytic FLOPs only: where the sequence term dominates


@dataclass(frozen=True, kw_only=True)
class AblationProfile:
    n_events: int
    history_len: int  # T the FM reads
    epochs: int
    fm_size: tuple[tuple[str, int], ...]
    batch_size: int = 256


PROFILES = {
    "quick": AblationProfile(n_events=20_000, history_len=16, epochs=1,
                             fm_size=tuple({**SMALL_FM, "n_layers": 2, "window": 4}.items())),
    # four layers so CompSkip alternates global / local twice; T = 64 with an 8-event window
    "default": AblationProfile(n_events=100_000, history_len=64, epochs=3,
                               fm_size=tuple({**SMALL_FM, "n_layers": 4, "window": 8}.items())),
}


def run_variant(data: VMData, profile: AblationProfile, switches: dict[str, bool], seed: int) -> dict:
    cfg = FMTrainConfig(history_len=profile.history_len, epochs=profile.epochs, seed=seed,
                        batch_size=profile.batch_size, fm={**dict(profile.fm_size), **switches})
    t0 = time.perf_counter()
    fm = train_fm(data, cfg, progress=False)
    seconds = time.perf_counter() - t0
    test = fm.metrics["test"]
    flops = {str(t): 2 * count_flops(fm.model.cfg, t)["total"] for t in (profile.history_len, *LONG_HISTORIES)}
    return {"auc": test["ctr_auc"], "ne": test["ctr_ne"], "seconds": seconds, "epochs_run": fm.epochs_run,
            "seconds_per_epoch": seconds / fm.epochs_run, "best_epoch": fm.best_epoch, "flops": flops,
            "layers": list(fm.model.cfg.layer_kinds())}


def aggregate(per_seed: list[dict[str, dict]]) -> dict:
    out: dict = {}
    base_ne = np.array([s[BASELINE]["ne"] for s in per_seed])
    base_sec = np.mean([s[BASELINE]["seconds_per_epoch"] for s in per_seed])
    base_flops = per_seed[0][BASELINE]["flops"]  # analytic: the same on every seed
    for name in VARIANTS:
        ne = np.array([s[name]["ne"] for s in per_seed])
        auc = np.array([s[name]["auc"] for s in per_seed])
        sec = float(np.mean([s[name]["seconds_per_epoch"] for s in per_seed]))
        flops = per_seed[0][name]["flops"]
        out[name] = {"auc_mean": float(auc.mean()), "auc_std": float(auc.std()), "ne_mean": float(ne.mean()),
                     "ne_std": float(ne.std()), "delta_ne_vs_baseline": float((ne - base_ne).mean()),
                     "delta_ne_std": float((ne - base_ne).std()), "seconds_per_epoch": sec,
                     "time_ratio_vs_baseline": sec / base_sec, "flops": flops,
                     "flops_ratio_vs_baseline": {t: flops[t] / base_flops[t] for t in flops},
                     "layers": per_seed[0][name]["layers"]}
    return out


def write_results(out_dir: Path, payload: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out_dir / "results.json")
    t = str(payload["profile"]["history_len"])
    lines = [f"# FM ablation: CompSkip × sliding window ({payload['dataset']}, {payload['profile_name']} profile, "
             f"seeds {payload['seeds']})", "", f"Command: `{payload['command']}`  ",
             f"Wall time: {payload['seconds'] / 60:.1f} min on this machine. T = {t} events of history.", "",
             f"| variant | layers | FLOPs/example at T={t} | × baseline | "
             + " | ".join(f"× baseline at T={x}" for x in LONG_HISTORIES)
             + " | train s/epoch (× baseline) | test AUC | test NE (mean ± std) | ΔNE vs baseline |",
             "|---|---|---|---|" + "---|" * len(LONG_HISTORIES) + "---|---|---|---|"]
    for name, v in payload["variants"].items():
        r = v["flops_ratio_vs_baseline"]
        lines.append(f"| {name} | {'/'.join(k[0].upper() for k in v['layers'])} | {v['flops'][t] / 1e6:.2f} M | "
                     f"{r[t]:.3f} | " + " | ".join(f"{r[str(x)]:.3f}" for x in LONG_HISTORIES)
                     + f" | {v['seconds_per_epoch']:.1f} ({v['time_ratio_vs_baseline']:.2f}) | {v['auc_mean']:.4f} | "
                     f"{v['ne_mean']:.4f} ± {v['ne_std']:.4f} | {v['delta_ne_vs_baseline']:+.4f} ± "
                     f"{v['delta_ne_std']:.4f} |")
    lines += ["", "Layers: G = global (GDPA + fresh seed pooling), L = local (window attention over the reused "
              "summary). FLOPs = 2 × multiply-adds of one forward pass; ΔNE > 0 means worse than the baseline."]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")


def run_fm_ablation(dataset: str, seeds: int, out_dir: str | Path, *, quick: bool = False, command: str = "",
                    log: Callable[[str], None] = print) -> dict:
    profile_name = "quick" if quick else "default"
    profile = PROFILES[profile_name]
    t0 = time.perf_counter()
    per_seed: list[dict[str, dict]] = []
    for seed in range(seeds):
        events = load_dataset(dataset, n_events=profile.n_events, seed=seed)
        data = prepare_vm_data(events, TrainConfig.for_dataset(dataset, seed=seed))
        row: dict[str, dict] = {}
        for name, switches in VARIANTS.items():
            row[name] = run_variant(data, profile, switches, seed)
            r = row[name]
            log(f"[seed {seed}] {name:26s} NE {r['ne']:.4f} AUC {r['auc']:.4f} "
                f"{r['flops'][str(profile.history_len)] / 1e6:.2f} MFLOPs {r['seconds_per_epoch']:.1f} s/epoch")
        per_seed.append(row)
    payload = {"dataset": dataset, "seeds": list(range(seeds)), "profile_name": profile_name,
               "profile": asdict(profile), "seconds": time.perf_counter() - t0,
               "command": command or f"adrank fm-ablation --dataset {dataset} --seeds {seeds}"
                                     f"{' --quick' if quick else ''} --out {out_dir}",
               "variants": aggregate(per_seed), "per_seed": per_seed}
    write_results(Path(out_dir), payload)
    return payload
