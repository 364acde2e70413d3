"""`adrank fm-gap --seeds N` and `adrank fm-scaling --seeds N`: the single-seed FM studies over seeds 0 … N-1,
each figure reported as a mean with a 95% t interval (`models.stats`).

One seed of either study is a description of that seed's world, split and initialisation: the wider FM's
gain in `fm-gap` or the exponent of `fm-scaling`'s power law could be the seed's. Here each seed runs the
unchanged single-seed study in its own spawned process (one torch thread each, `jobs` at a time, as
`adrank experiment` runs its seeds) and writes its own `seed-S/` folder; the summary then reads, per seed,

* fm-gap: each world's share of the full world's gap removed, and each FM candidate's **paired**
  difference against the experiment FM on the same seed's data, on validation NE (the slice a choice is
  made on) and on test NE (shown, never used to choose), with how many seeds chose it on validation;
* fm-scaling: each architecture's fitted exponent b and R², the test NE at every size, and the per-size
  paired difference NE(CompSkip + window) − NE(all-global, full attention).

The summary is written atomically next to the seed folders (`results.json`, `results.md`).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from models.history_bound import bound_table
from models.stats import paired_interval

STUDIES = ("fm-gap", "fm-scaling")


def _seed_job(study: str, dataset: str, seed: int, out_dir: str, quick: bool, threads: int, **options) -> dict:
    """One seed of `study` in a fresh spawned interpreter with `threads` torch threads; `options` go to the
    study (fm-gap: `candidates`, `ablations`)."""
    import torch

    torch.set_num_threads(threads)
    log = partial(print, f"[seed {seed}]", flush=True)
    quick_flag = " --quick" if quick else ""
    if study == "fm-gap":
        from models.fm_gap import run_fm_gap

        return run_fm_gap(out_dir, quick=quick, seed=seed, log=log, **options,
                          command=f"adrank fm-gap --seed {seed}{quick_flag}{gap_flags(**options)} --out {out_dir}")
    if options:
        raise ValueError(f"fm-scaling takes no study options, got {sorted(options)}")
    from models.fm_scaling import run_fm_scaling

    return run_fm_scaling(dataset, out_dir, quick=quick, seed=seed, log=log,
                          command=f"adrank fm-scaling --dataset {dataset} --seed {seed}{quick_flag} --out {out_dir}")


def gap_flags(candidates: tuple[str, ...] | None = None, ablations: bool = True) -> str:
    """The fm-gap command-line flags that reproduce these study options ("" for the defaults)."""
    return ((f" --candidates {','.join(candidates)}" if candidates is not None else "")
            + ("" if ablations else " --no-ablations"))


def run_sweep(study: str, seeds: int, out_dir: str | Path, *, dataset: str = "synthetic", quick: bool = False,
              jobs: int | None = None, command: str = "", resume: bool = False, **options) -> dict:
    """Runs `study` for seeds 0 … seeds-1 (`jobs` at a time; default one per core) and writes the summary.
    `options` are passed to every seed's study (fm-gap: `candidates`, `ablations`).

    `resume` (fm-gap only): a seed whose `seed-S/results.json` already holds that seed's study with the same
    profile, candidates and ablations (an earlier sweep's, or `adrank fm-gap --seed S` run into that folder)
    is read, not trained again; seeds are deterministic, so the summary is the one a full run writes."""
    from models.experiment import default_jobs

    if study not in STUDIES:
        raise ValueError(f"study must be one of {STUDIES}, got {study!r}")
    if seeds < 2:
        raise ValueError(f"--seeds must be >= 2 for an interval, got {seeds}")
    jobs = min(jobs or default_jobs(), seeds)
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    threads = max(1, default_jobs() // jobs)
    out = Path(out_dir)
    t0 = time.perf_counter()
    if resume and study != "fm-gap":
        raise ValueError("--resume is supported for fm-gap only")
    done = {s: p for s in range(seeds) if resume and (p := _finished_gap_seed(out / f"seed-{s}", s, quick, **options))}
    args = [(study, dataset, s, str(out / f"seed-{s}"), quick, threads) for s in range(seeds) if s not in done]
    job = partial(_seed_job, **options) if options else _seed_job  # a partial of a module function pickles
    if not args:
        ran = []
    elif min(jobs, len(args)) == 1:
        ran = [job(*a) for a in args]
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            ran = list(pool.map(job, *zip(*args, strict=True)))
    by_seed = {**done, **{a[2]: p for a, p in zip(args, ran, strict=True)}}
    per_seed = [by_seed[s] for s in range(seeds)]
    summary = summarize_fm_gap(per_seed) if study == "fm-gap" else summarize_fm_scaling(per_seed)
    summary.update(study=study, seeds=list(range(seeds)), jobs=jobs, seconds=time.perf_counter() - t0,
                   reused_seeds=sorted(done),
                   seed_seconds=[float(p.get("seconds", float("nan"))) for p in per_seed],
                   command=command or f"adrank {study} --seeds {seeds} --jobs {jobs}"
                                      f"{' --quick' if quick else ''}{gap_flags(**options)} --out {out_dir}")
    write_summary(out, summary)
    return summary


def _finished_gap_seed(folder: Path, seed: int, quick: bool, candidates: tuple[str, ...] | None = None,
                       ablations: bool = True) -> dict | None:
    """The fm-gap payload in `folder` if it is seed `seed` of the study these options ask for, else None."""
    from models.fm_gap import PROFILES

    path = folder / "results.json"
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    profile = "quick" if quick else "default"
    names = [name for _, name, _ in PROFILES[profile].candidate_subset(candidates)]
    same = (payload.get("seed") == seed and payload.get("profile_name") == profile
            and payload.get("ablations", True) == ablations and list(payload.get("candidates", {})) == names)
    return payload if same else None


def _interval(values: list[float]) -> dict:
    return paired_interval(np.asarray(values, np.float64)).to_dict()


def summarize_fm_gap(per_seed: list[dict]) -> dict:
    """Per world: mean FM / oracle NE, and the share of the full world's gap removed with its interval.
    Per candidate: paired differences against the first candidate (the experiment FM) on the same seed."""
    worlds = {}
    for name in per_seed[0]["worlds"]:
        rows = [p["worlds"][name] for p in per_seed]
        worlds[name] = {"fm_ne": float(np.mean([r["test_ne"] for r in rows])),
                        "oracle_ne": float(np.mean([r["oracle_ne"] for r in rows])),
                        "gap": float(np.mean([r["gap"] for r in rows])),
                        "ratio": float(np.mean([r["ratio"] for r in rows])),
                        "gap_share_removed": _interval([r["gap_share_removed"] for r in rows])}
    names = list(per_seed[0]["candidates"])
    base = names[0]
    oracle = [p["worlds"]["full world"]["oracle_ne"] for p in per_seed]
    candidates = {}
    for name in names:
        rows = [p["candidates"][name] for p in per_seed]
        c = {"validation_ne": float(np.mean([r["validation_ne"] for r in rows])),
             "test_ne": float(np.mean([r["test_ne"] for r in rows])),
             "flops_per_example": float(np.mean([r.get("flops_per_example", np.nan) for r in rows])),
             "cpu_seconds": float(np.mean([r.get("cpu_seconds", np.nan) for r in rows])),
             "ratio": float(np.mean([r["test_ne"] / o for r, o in zip(rows, oracle, strict=True)])),
             "chosen_on_validation": sum(p["chosen_on_validation"] == name for p in per_seed)}
        if name != base:  # > 0: the candidate's NE is lower than the experiment FM's on the same seed
            c["validation_gain"] = _interval([p["candidates"][base]["validation_ne"] - r["validation_ne"]
                                              for p, r in zip(per_seed, rows, strict=True)])
            c["test_gain"] = _interval([p["candidates"][base]["test_ne"] - r["test_ne"]
                                        for p, r in zip(per_seed, rows, strict=True)])
        candidates[name] = c
    out = {"n_seeds": len(per_seed), "baseline_candidate": base, "worlds": worlds, "candidates": candidates}
    bounds = [p.get("history_bound") for p in per_seed]
    if all(bounds):
        out["history_bound"] = {
            **{k: float(np.mean([b[k] for b in bounds])) for k in ("oracle_ne", "ne", "ne_category_only",
                                                                  "ne_prior_only", "fm_ne")},
            "information_share": _interval([b["information_share"] for b in bounds]),
            "fm_minus_bound": _interval([b["fm_ne"] - b["ne"] for b in bounds]),
            "fm_minus_category_bound": _interval([b["fm_ne"] - b["ne_category_only"] for b in bounds])}
    return out


def summarize_fm_scaling(per_seed: list[dict]) -> dict:
    """Per architecture: the exponent b and R² of each seed's fit (b with its interval) and the test NE
    per size; per size: the paired NE difference between the two architectures."""
    archs = list(per_seed[0]["architectures"])
    out: dict = {"n_seeds": len(per_seed), "architectures": {}}
    for arch in archs:
        runs = [p["architectures"][arch] for p in per_seed]
        sizes = [{"d_model": q["d_model"], "n_layers": q["n_layers"], "history_len": q["history_len"],
                  "flops_per_example": q["flops_per_example"],
                  "ne": [r["points"][i]["ne"] for r in runs]} for i, q in enumerate(runs[0]["points"])]
        a = {"sizes": sizes, "b": _interval([r["fit"]["ne"]["b"] for r in runs]),
             "r2": [r["fit"]["ne"]["r2"] for r in runs]}
        excess = [r["fit"].get("excess_over_oracle", {}) for r in runs]
        if all("b" in e for e in excess):
            a["excess_b"] = _interval([e["b"] for e in excess])
            a["excess_r2"] = [e["r2"] for e in excess]
        out["architectures"][arch] = a
    if len(archs) == 2:  # > 0: the second architecture has the lower NE at that size
        first, second = (out["architectures"][k]["sizes"] for k in archs)
        out["arch_difference"] = {"of": f"NE({archs[0]}) − NE({archs[1]})",
                                  "per_size": [_interval(list(np.subtract(x["ne"], y["ne"])))
                                               for x, y in zip(first, second, strict=True)]}
    return out


def _fmt(i: dict, digits: int = 4) -> str:
    return f"{i['mean']:+.{digits}f} [{i['low']:+.{digits}f}, {i['high']:+.{digits}f}]"


def summary_markdown(summary: dict) -> str:
    n = summary["n_seeds"]
    lines = [f"# {summary['study']} over {n} seeds (mean, 95% t interval)", "",
             f"Command: `{summary['command']}`  ",
             f"Wall time: {summary['seconds'] / 60:.1f} min ({summary['jobs']} seeds at a time"
             + (f"; seeds {', '.join(map(str, summary['reused_seeds']))} read from an earlier run of the same study"
                if summary.get("reused_seeds") else "") + "); per seed: "
             + ", ".join(f"{s / 60:.1f}" for s in summary.get("seed_seconds", [])) + " min. "
             "Per-seed results: `seed-S/` beside this file.", ""]
    if summary["study"] == "fm-gap":
        lines += ["| world (one term removed) | FM test NE | oracle NE | gap | FM / oracle | share of the full "
                  "world's gap removed |", "|---|---|---|---|---|---|"]
        for name, w in summary["worlds"].items():
            s = w["gap_share_removed"]
            share = "0% (reference)" if name == "full world" else \
                f"{s['mean']:+.0%} [{s['low']:+.0%}, {s['high']:+.0%}]"
            lines.append(f"| {name} | {w['fm_ne']:.4f} | {w['oracle_ne']:.4f} | {w['gap']:.4f} | "
                         f"{w['ratio']:.3f} | {share} |")
        b = summary.get("history_bound")
        if b:
            lines += ["", "History bound on the full world (`models/history_bound.py`; means over seeds):", "",
                      *bound_table(b), "",
                      f"* FM − history bound: {_fmt(b['fm_minus_bound'])} (the part of the gap a history model "
                      "could close);",
                      f"* FM − category-only bound: {_fmt(b['fm_minus_category_bound'])};",
                      f"* share of the FM's gap the bound leaves open: {_fmt(b['information_share'], 3)}."]
        lines += ["", f"FM candidates on the full world; gains are paired differences against "
                      f"*{summary['baseline_candidate']}* on the same seed (> 0: lower NE). The choice is made on "
                      "validation; test is shown, not used:", "",
                  "| candidate | FLOPs / example | validation NE | test NE | FM / oracle | validation gain | "
                  "test gain | chosen on validation | train CPU s |", "|---|---|---|---|---|---|---|---|---|"]
        for name, c in summary["candidates"].items():
            gains = (f"{_fmt(c['validation_gain'])} {c['validation_gain']['verdict']} | "
                     f"{_fmt(c['test_gain'])} {c['test_gain']['verdict']}") if "test_gain" in c else "— | —"
            lines.append(f"| {name} | {c.get('flops_per_example', float('nan')) / 1e6:.3f} M | "
                         f"{c['validation_ne']:.4f} | {c['test_ne']:.4f} | {c['ratio']:.3f} | {gains} | "
                         f"{c['chosen_on_validation']} of {n} | {c.get('cpu_seconds', float('nan')):.0f} |")
    else:
        lines += ["| architecture | NE ≈ a·C^(−b): b | R² per seed | NE − NE_oracle: b | R² per seed |",
                  "|---|---|---|---|---|"]
        for arch, a in summary["architectures"].items():
            ex = (f"{_fmt(a['excess_b'])} | {', '.join(f'{r:.2f}' for r in a['excess_r2'])}"
                  if "excess_b" in a else "— | —")
            lines.append(f"| {arch} | {_fmt(a['b'])} | {', '.join(f'{r:.2f}' for r in a['r2'])} | {ex} |")
        archs = list(summary["architectures"])
        head = " | ".join(f"{k}: test NE (mean ± sd)" for k in archs)
        lines += ["", f"| d | layers | T | FLOPs/example ({archs[0]}) | {head} | "
                      f"{summary.get('arch_difference', {}).get('of', '')} |",
                  "|---|---|---|---|" + "---|" * (len(archs) + 1)]
        for i, q in enumerate(summary["architectures"][archs[0]]["sizes"]):
            nes = " | ".join(f"{np.mean(summary['architectures'][k]['sizes'][i]['ne']):.4f} ± "
                             f"{np.std(summary['architectures'][k]['sizes'][i]['ne'], ddof=1):.4f}" for k in archs)
            diff = summary.get("arch_difference", {}).get("per_size", [])
            lines.append(f"| {q['d_model']} | {q['n_layers']} | {q['history_len']} | "
                         f"{q['flops_per_example'] / 1e6:.3f} M | {nes} | "
                         + (f"{_fmt(diff[i])} {diff[i]['verdict']} |" if diff else " |"))
    return "\n".join(lines) + "\n"


def write_summary(out_dir: Path, summary: dict) -> None:
    """results.json and results.md, each written to a temporary name and renamed into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("results.json", json.dumps(summary, indent=2, default=str)),
                       ("results.md", summary_markdown(summary))):
        tmp = out_dir / f"{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out_dir / name)
