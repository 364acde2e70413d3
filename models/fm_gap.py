"""`adrank fm-gap`: what the FM fails to learn from the synthetic world, and which FM change helps.

The world's true click logit is a sum of named terms (models/data/synthetic.py): the user's long-term
interest × the ad's vector (a user × ad cross feature only the history reveals), its drift over the
range, the session intent (ad category = intent category, a short-window signal), the ad's quality and
the placement / hour effects. The FM's test NE sits well above the oracle's; to find which term is
missing, each switchable term is removed from the world one at a time (same seed, same size, same
FM) and the FM's gap to *that* world's oracle is measured again:

* a term the FM learns well moves the FM's NE and the oracle's together: the gap stays;
* a term the FM fails to learn is part of the gap: removing it shrinks the gap.

`history_len` probes the long-history term from the model side (the same world read through a
shorter history).

Then the candidate FM changes are trained on the full world and compared on the **validation slice**
(the latest 10% of the training range, the early-stopping slice): the change with the lowest
validation NE is the one chosen; test NE is reported for every candidate but plays no part in the
choice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from models.data.synthetic import SyntheticConfig, generate_synthetic
from models.fm.flops import count_flops
from models.fm_pipeline import SMALL_FM, FMTrainConfig, train_fm
from models.history_bound import bound_table, history_bound
from models.metrics import summarize
from models.train import TrainConfig, prepare_vm_data

WORLD_ABLATIONS: dict[str, dict[str, float]] = {
    "full world": {},
    "no interest (user × ad affinity)": {"interest_weight": 0.0},
    "no drift of interests": {"drift": 0.0},
    "no session intent": {"intent_weight": 0.0},
}
"""Terms of the click logit that a SyntheticConfig field switches off (ad quality and the placement /
hour effects have no switch; the conversion propensity does not enter CTR)."""


@dataclass(frozen=True, kw_only=True)
class GapProfile:
    n_events: int
    epochs: int
    history_len: int
    short_history: int
    fm_size: tuple[tuple[str, int | bool], ...] = tuple(SMALL_FM.items())
    candidates: tuple[tuple[str, str, tuple[tuple[str, object], ...]], ...] = (
        ("experiment", "experiment FM (CompSkip + window, d=16, T=32)", ()),
        ("all-global", "all-global layers (no CompSkip)", (("compskip", False),)),
        ("wider", "wider: d=32, hidden 128", (("d_model", 32), ("hidden_dim", 128))),
        ("longer", "longer history: T=64", (("history_len", 64),)),
        ("interaction", "interaction scalars (d=16)", (("interaction", True),)),
        ("category-preference", "category preference scalars (d=16)", (("interaction_category", True),)),
        ("interaction-category", "interaction scalars + category preference (d=16)",
         (("interaction", True), ("interaction_category", True))),
        ("wider-interaction", "wider + interaction scalars (d=32, hidden 128)",
         (("d_model", 32), ("hidden_dim", 128), ("interaction", True))),
    )
    """(key, name, overrides) of FM changes compared on validation; `history_len` overrides the FM's T. The
    first (no overrides) is the FM every other candidate is paired with; `--candidates` picks a subset by
    key. That first FM is `SMALL_FM` without the interaction switches, the experiment's FM when these
    candidates were chosen; the experiment's default profile has since adopted `interaction_category`
    on this study's validation figures (docs/results.md), and the name is kept so earlier runs resume."""

    def candidate_subset(self, keys: tuple[str, ...] | None) -> tuple[tuple[str, str, tuple], ...]:
        """The candidates named by `keys` (None: all), in profile order, always with the experiment FM first."""
        if keys is None:
            return self.candidates
        known = [c[0] for c in self.candidates]
        unknown = [k for k in keys if k not in known]
        if unknown:
            raise ValueError(f"--candidates: unknown {', '.join(unknown)}; this profile has {', '.join(known)}")
        wanted = {known[0], *keys}
        return tuple(c for c in self.candidates if c[0] in wanted)


PROFILES = {
    "quick": GapProfile(n_events=10_000, epochs=1, history_len=8, short_history=2,
                        fm_size=tuple({**SMALL_FM, "d_model": 8, "n_layers": 1, "hidden_dim": 16,
                                       "window": 4}.items()),
                        candidates=(("experiment", "experiment FM", ()),
                                    ("all-global", "all-global layers", (("compskip", False),)),
                                    ("interaction", "interaction scalars", (("interaction", True),)))),
    "default": GapProfile(n_events=50_000, epochs=2, history_len=32, short_history=4),
}


def _fm(data, profile: GapProfile, seed: int, overrides: dict | None = None) -> dict:
    overrides = dict(overrides or {})
    t = int(overrides.pop("history_len", profile.history_len))
    cfg = FMTrainConfig(history_len=t, epochs=profile.epochs, seed=seed, fm={**dict(profile.fm_size), **overrides})
    t0, c0 = time.perf_counter(), time.process_time()
    fm = train_fm(data, cfg, progress=False)
    return {"test_ne": fm.metrics["test"]["ctr_ne"], "test_auc": fm.metrics["test"]["ctr_auc"],
            "validation_ne": min(fm.validation_ne) if fm.validation_ne else float("nan"),
            "best_epoch": fm.best_epoch, "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0, "history_len": t,
            "flops_per_example": 2 * count_flops(fm.model.cfg, t)["total"]}


def run_fm_gap(out_dir: str | Path, *, quick: bool = False, seed: int = 0, command: str = "",
               log: Callable[[str], None] = print, candidates: tuple[str, ...] | None = None,
               ablations: bool = True) -> dict:
    """One seed of the study. `candidates`: keys of the FM changes to train (None: all; the experiment FM
    always runs, it is what the others are paired with). `ablations=False` trains only the full world
    (its FM, the history bound and the candidates), for a paired candidate comparison that skips the
    world-term ablations and the short-history probe."""
    profile_name = "quick" if quick else "default"
    profile = PROFILES[profile_name]
    chosen_candidates = profile.candidate_subset(candidates)
    t0 = time.perf_counter()
    worlds: dict[str, dict] = {}
    full_data = bound = None
    for name, change in WORLD_ABLATIONS.items():
        if change and not ablations:
            continue
        world_config = replace(SyntheticConfig(n_events=profile.n_events, seed=seed), **change)
        events = generate_synthetic(world_config)
        data = prepare_vm_data(events, TrainConfig.for_dataset("synthetic", seed=seed))
        test = events.take(data.test_idx)
        oracle = summarize(test["click"], test["p_click"])["ne"]
        r = _fm(data, profile, seed)
        r.update(oracle_ne=oracle, gap=r["test_ne"] - oracle, ratio=r["test_ne"] / oracle, change=change)
        worlds[name] = r
        log(f"{name:34s} FM NE {r['test_ne']:.4f}  oracle {oracle:.4f}  gap {r['gap']:.4f}  ({r['seconds']:.0f} s)")
        if not change:
            full_data = data
            bound = history_bound(events, data.test_idx, world_config)
            bound.update(oracle_ne=oracle, fm_ne=r["test_ne"],
                         information_share=(bound["ne"] - oracle) / r["gap"] if r["gap"] > 0 else float("nan"))
            log(f"  history bound NE {bound['ne']:.4f} (category vectors only {bound['ne_category_only']:.4f}, "
                f"prior only {bound['ne_prior_only']:.4f}): it leaves {bound['information_share']:.0%} of the "
                "FM's gap open")
            if not ablations:
                continue
            short = _fm(data, profile, seed, {"history_len": profile.short_history})
            short.update(oracle_ne=oracle, gap=short["test_ne"] - oracle, ratio=short["test_ne"] / oracle,
                         change={"fm history_len": profile.short_history})
            worlds[f"full world, FM reads T={profile.short_history}"] = short
            log(f"  FM with T={profile.short_history}: NE {short['test_ne']:.4f} gap {short['gap']:.4f}")
    full_gap = worlds["full world"]["gap"]
    for r in worlds.values():
        r["gap_share_removed"] = (full_gap - r["gap"]) / full_gap if full_gap > 0 else float("nan")
    candidates: dict[str, dict] = {}
    for _, name, overrides in chosen_candidates:
        c = worlds["full world"] if not overrides else _fm(full_data, profile, seed, dict(overrides))
        candidates[name] = {k: c.get(k, float("nan")) for k in ("validation_ne", "test_ne", "test_auc", "best_epoch",
                                                                  "seconds", "cpu_seconds", "flops_per_example")}
        log(f"candidate {name:44s} validation NE {c['validation_ne']:.4f}  test NE {c['test_ne']:.4f}")
    chosen = min(candidates, key=lambda n: (candidates[n]["validation_ne"], n))
    payload = {"seed": seed, "profile_name": profile_name, "profile": asdict(profile),
               "seconds": time.perf_counter() - t0, "worlds": worlds, "history_bound": bound, "candidates": candidates,
               "chosen_on_validation": chosen, "ablations": ablations,
               "command": command or f"adrank fm-gap{' --quick' if quick else ''} --out {out_dir}"}
    write_results(Path(out_dir), payload)
    return payload


def write_results(out_dir: Path, payload: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(out_dir / "results.json")
    p = payload["profile"]
    lines = [f"# FM gap analysis (synthetic, {payload['profile_name']} profile, seed {payload['seed']})", "",
             f"Command: `{payload['command']}`  ",
             f"Wall time: {payload['seconds'] / 60:.1f} min on this machine. {p['n_events']:,} events, FM T = "
             f"{p['history_len']}, up to {p['epochs']} epochs with early stopping.", "",
             "| world (one term removed) | FM test NE | oracle NE | gap (FM − oracle) | FM / oracle | share of the "
             "full world's gap removed |", "|---|---|---|---|---|---|"]
    for name, r in payload["worlds"].items():
        lines.append(f"| {name} | {r['test_ne']:.4f} | {r['oracle_ne']:.4f} | {r['gap']:.4f} | {r['ratio']:.3f} | "
                     f"{r['gap_share_removed']:+.0%} |")
    b = payload.get("history_bound")
    if b:
        lines += ["", "History bound on the full world (`models/history_bound.py`: knows every world parameter but the "
                  "user's interest and drift, infers those from the user's labelled events before t):", "",
                  *bound_table(b), "",
                  f"Share of the FM's gap to the oracle that even the history bound leaves open (information the "
                  f"user's history does not hold): {b['information_share']:.0%}."]
    lines += ["", "FM changes on the full world, chosen by validation NE (the early-stopping slice; test NE is "
              "shown, not used):", "", "| candidate | validation NE | test NE | test AUC | FLOPs / example | "
              "train s (CPU s) |", "|---|---|---|---|---|---|"]
    for name, c in payload["candidates"].items():
        mark = " **(chosen)**" if name == payload["chosen_on_validation"] else ""
        flops = c.get("flops_per_example", float("nan"))
        lines.append(f"| {name}{mark} | {c['validation_ne']:.4f} | {c['test_ne']:.4f} | {c['test_auc']:.4f} | "
                     f"{flops / 1e6:.3f} M | {c['seconds']:.0f} ({c.get('cpu_seconds', float('nan')):.0f}) |")
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
