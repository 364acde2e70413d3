"""`adrank fm-scaling`: FM quality against compute, and the power law Kunlun claims it follows.

Kunlun's headline is that NE falls predictably, as a power of compute, when the FM grows. Here the
FM is trained at several compute sizes (width d, depth, history length T grown together) on the same
events, split and seed, under two architectures: Kunlun's (CompSkip + sliding window) and the
all-global, full-attention FM. For each size the report has the analytic FLOPs of one forward pass per
example (`models.fm.flops`, held exact against torch's counter by a test) and the test NE, and it fits

* NE ≈ a · C^(−b) (least squares on log NE against log C), and
* NE − NE_oracle ≈ a · C^(−b): the same fit of the excess over the world's irreducible NE (the
  oracle's, known on synthetic data), the usual "power law plus floor" with the floor measured, not fitted.

Both report the exponent b and R² (of the log-space fit). A good fit with four or five points is a
description of those points, not evidence of a law: the report says how many points each fit has.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.data import load_dataset
from models.fm.flops import count_flops
from models.fm_pipeline import SMALL_FM, FMTrainConfig, train_fm
from models.metrics import summarize
from models.train import TrainConfig, prepare_vm_data

ARCHITECTURES: dict[str, dict[str, bool]] = {
    "CompSkip + window": {"compskip": True, "windowed": True},
    "all-global, full attention": {"compskip": False, "windowed": False},
}


@dataclass(frozen=True, kw_only=True)
class ScalingProfile:
    n_events: int
    epochs: int
    sizes: tuple[tuple[int, int, int], ...]
    """(d_model, n_layers, history_len T) per compute size, smallest first; the window stays T / 4."""
    batch_size: int = 256


PROFILES = {
    "quick": ScalingProfile(n_events=10_000, epochs=1, batch_size=512,
                            sizes=((4, 1, 4), (8, 1, 8), (8, 2, 8), (16, 2, 8))),
    # five sizes spanning ~40× in FLOPs; 50k events and 2 epochs so the ten FMs fit ~30 min on 2 cores
    "default": ScalingProfile(n_events=50_000, epochs=2,
                              sizes=((4, 1, 8), (8, 1, 16), (16, 2, 16), (16, 2, 32), (32, 2, 32))),
}


@dataclass(frozen=True)
class PowerLaw:
    """y ≈ a · x^(−b), fitted by least squares on log y = log a − b log x; r2 is that fit's R²."""

    a: float
    b: float
    r2: float
    n: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.a * np.power(x, -self.b)


def fit_power_law(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> PowerLaw:
    """The power law through (x, y) in log-log space; needs ≥ 2 points with x, y > 0."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x {x.shape} and y {y.shape} must be equal-length 1-D arrays")
    if len(x) < 2 or (x <= 0).any() or (y <= 0).any():
        raise ValueError("a power-law fit needs at least 2 points with x > 0 and y > 0")
    lx, ly = np.log(x), np.log(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (intercept + slope * lx)
    total = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / total if total > 0 else (1.0 if not resid.any() else 0.0)
    return PowerLaw(float(math.exp(intercept)), float(-slope), r2, int(len(x)))


def fm_size(d_model: int, n_layers: int, history_len: int) -> dict:
    """FMConfig overrides of one compute size: the experiment's FM shape, scaled."""
    return {**SMALL_FM, "d_model": d_model, "n_layers": n_layers, "n_heads": 2 if d_model >= 8 else 1,
            "hidden_dim": 4 * d_model, "window": max(2, history_len // 4)}


def run_size(data, profile: ScalingProfile, size: tuple[int, int, int], switches: dict[str, bool], seed: int) -> dict:
    d_model, n_layers, t = size
    cfg = FMTrainConfig(history_len=t, epochs=profile.epochs, seed=seed, batch_size=profile.batch_size,
                        fm={**fm_size(d_model, n_layers, t), **switches})
    t0 = time.perf_counter()
    fm = train_fm(data, cfg, progress=False)
    flops = 2 * count_flops(fm.model.cfg, t)["total"]  # FLOPs = 2 × multiply-adds, one forward, one example
    params = sum(p.numel() for p in fm.model.parameters())
    return {"d_model": d_model, "n_layers": n_layers, "history_len": t, "flops_per_example": flops,
            "params": params, "ne": fm.metrics["test"]["ctr_ne"], "auc": fm.metrics["test"]["ctr_auc"],
            "validation_ne": fm.validation_ne, "epochs_run": fm.epochs_run, "seconds": time.perf_counter() - t0}


def fits(points: list[dict], oracle_ne: float | None) -> dict:
    c = [p["flops_per_example"] for p in points]
    out = {"ne": asdict(fit_power_law(c, [p["ne"] for p in points]))}
    if oracle_ne is not None:
        excess = [p["ne"] - oracle_ne for p in points]
        out["excess_over_oracle"] = (asdict(fit_power_law(c, excess)) if min(excess) > 0
                                     else {"error": "an FM reached the oracle's NE: no excess to fit"})
    return out


def run_fm_scaling(dataset: str, out_dir: str | Path, *, quick: bool = False, seed: int = 0, command: str = "",
                   log: Callable[[str], None] = print) -> dict:
    profile_name = "quick" if quick else "default"
    profile = PROFILES[profile_name]
    t0 = time.perf_counter()
    events = load_dataset(dataset, n_events=profile.n_events, seed=seed)
    data = prepare_vm_data(events, TrainConfig.for_dataset(dataset, seed=seed))
    test = events.take(data.test_idx)
    oracle = summarize(test["click"], test["p_click"])["ne"] if test.has_ground_truth else None
    results: dict[str, dict] = {}
    for arch, switches in ARCHITECTURES.items():
        points = []
        for size in profile.sizes:
            p = run_size(data, profile, size, switches, seed)
            points.append(p)
            log(f"{arch:28s} d={p['d_model']:<3d} layers={p['n_layers']} T={p['history_len']:<3d} "
                f"{p['flops_per_example'] / 1e6:8.3f} MFLOPs  NE {p['ne']:.4f}  ({p['seconds']:.0f} s)")
        results[arch] = {"points": points, "fit": fits(points, oracle)}
        f = results[arch]["fit"]["ne"]
        log(f"{arch}: NE ≈ {f['a']:.4f} · C^(−{f['b']:.4f}), R² {f['r2']:.3f} over {f['n']} sizes")
    payload = {"dataset": dataset, "seed": seed, "profile_name": profile_name, "profile": asdict(profile),
               "oracle_ne": oracle, "seconds": time.perf_counter() - t0,
               "command": command or f"adrank fm-scaling --dataset {dataset}{' --quick' if quick else ''} "
                                     f"--out {out_dir}",
               "architectures": results}
    write_results(Path(out_dir), payload)
    return payload


def write_results(out_dir: Path, payload: dict) -> None:
    """results.json (atomic), results.md and scaling.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out_dir / "results.json")
    oracle = payload["oracle_ne"]
    lines = [f"# FM scaling ({payload['dataset']}, {payload['profile_name']} profile, seed {payload['seed']})", "",
             f"Command: `{payload['command']}`  ", f"Wall time: {payload['seconds'] / 60:.1f} min on this machine."
             + (f" Oracle test NE {oracle:.4f}." if oracle is not None else ""), "",
             "| architecture | d | layers | T | FLOPs/example | params | test NE | test AUC |",
             "|---|---|---|---|---|---|---|---|"]
    for arch, r in payload["architectures"].items():
        lines += [f"| {arch} | {p['d_model']} | {p['n_layers']} | {p['history_len']} | "
                  f"{p['flops_per_example'] / 1e6:.3f} M | {p['params']:,} | {p['ne']:.4f} | {p['auc']:.4f} |"
                  for p in r["points"]]
    lines += ["", "| architecture | fit | a | exponent b | R² (log space) | sizes |", "|---|---|---|---|---|---|"]
    for arch, r in payload["architectures"].items():
        for name, f in r["fit"].items():
            label = "NE ≈ a·C^(−b)" if name == "ne" else "NE − NE_oracle ≈ a·C^(−b)"
            lines.append(f"| {arch} | {label} | " + (f"{f['a']:.4g} | {f['b']:.4f} | {f['r2']:.3f} | {f['n']} |"
                                                     if "error" not in f else f"{f['error']} | | | |"))
    lines += ["", "C = FLOPs of one forward pass per example (2 × multiply-adds, `models/fm/flops.py`)."]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    plot_scaling(out_dir / "scaling.png", payload)


def plot_scaling(path: Path, payload: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (arch, r), colour in zip(payload["architectures"].items(), ("#4c72b0", "#dd8452"), strict=False):
        c = np.array([p["flops_per_example"] for p in r["points"]], np.float64)
        ne = np.array([p["ne"] for p in r["points"]])
        f = r["fit"]["ne"]
        ax.scatter(c, ne, color=colour, zorder=3)
        grid = np.geomspace(c.min(), c.max(), 50)
        ax.plot(grid, f["a"] * grid ** (-f["b"]), color=colour,
                label=f"{arch}: b = {f['b']:.3f}, R² = {f['r2']:.2f}")
    if payload["oracle_ne"] is not None:
        ax.axhline(payload["oracle_ne"], color="grey", linestyle="--", label="oracle NE")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FLOPs per example (one forward pass)")
    ax.set_ylabel("test NE (lower is better)")
    ax.set_title(f"FM scaling: NE ≈ a·C^(−b) ({payload['dataset']}, {payload['profile_name']} profile)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
