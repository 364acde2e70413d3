"""`--seeds N` for fm-gap and fm-scaling: every seed runs the single-seed study, and the summary pairs each
candidate with the experiment FM on the same seed and puts a t interval on each seed-level figure."""

from __future__ import annotations

import json

import pytest

import models.seed_sweep as sweep


def _gap_payload(seed: int, wide_val: float, wide_test: float) -> dict:
    base_val, base_test, oracle = 0.94 + 0.01 * seed, 0.95 + 0.01 * seed, 0.63
    worlds = {"full world": {"test_ne": base_test, "oracle_ne": oracle, "gap": base_test - oracle,
                             "ratio": base_test / oracle, "gap_share_removed": 0.0},
              "no interest": {"test_ne": 0.99, "oracle_ne": 0.96, "gap": 0.03, "ratio": 0.99 / 0.96,
                              "gap_share_removed": 0.85 + 0.02 * seed}}
    cands = {"experiment FM": {"validation_ne": base_val, "test_ne": base_test},
             "wider": {"validation_ne": base_val - wide_val, "test_ne": base_test - wide_test}}
    chosen = min(cands, key=lambda n: cands[n]["validation_ne"])
    bound = {"oracle_ne": oracle, "ne": 0.76, "ne_category_only": 0.78, "ne_prior_only": 0.96, "fm_ne": base_test,
             "information_share": (0.76 - oracle) / (base_test - oracle)}
    return {"seed": seed, "worlds": worlds, "history_bound": bound, "candidates": cands,
            "chosen_on_validation": chosen}


def test_fm_gap_gains_are_paired_on_the_seed_and_the_verdict_reads_the_interval():
    # seed levels differ by 0.01 (shared by both candidates); the paired gains are steady
    per_seed = [_gap_payload(s, wide_val=0.04 + 0.001 * s, wide_test=0.05 - 0.001 * s) for s in range(5)]
    out = sweep.summarize_fm_gap(per_seed)
    wide = out["candidates"]["wider"]
    assert out["baseline_candidate"] == "experiment FM"
    assert "validation_gain" not in out["candidates"]["experiment FM"]
    assert wide["validation_gain"]["mean"] == pytest.approx(0.042)
    assert wide["test_gain"]["mean"] == pytest.approx(0.048)
    assert wide["test_gain"]["verdict"] == "holds" and wide["test_gain"]["n"] == 5
    assert wide["chosen_on_validation"] == 5
    assert out["history_bound"]["fm_minus_bound"]["mean"] == pytest.approx(0.97 - 0.76)
    assert out["history_bound"]["information_share"]["n"] == 5
    share = out["worlds"]["no interest"]["gap_share_removed"]
    assert share["mean"] == pytest.approx(0.89) and share["low"] < 0.89 < share["high"]


def test_a_gain_that_changes_sign_over_seeds_is_inconclusive():
    per_seed = [_gap_payload(s, wide_val=(-1) ** s * 0.02, wide_test=(-1) ** s * 0.02) for s in range(4)]
    out = sweep.summarize_fm_gap(per_seed)
    assert out["candidates"]["wider"]["test_gain"]["verdict"] == "inconclusive"
    assert out["candidates"]["wider"]["chosen_on_validation"] == 2


def _scaling_payload(seed: int, b_first: float) -> dict:
    flops = [1e4, 1e5, 1e6]

    def arch(b: float, shift: float) -> dict:
        pts = [{"d_model": d, "n_layers": 1, "history_len": 8, "flops_per_example": c, "ne": c ** -b + shift}
               for d, c in zip((4, 8, 16), flops, strict=True)]
        return {"points": pts, "fit": {"ne": {"a": 1.0, "b": b, "r2": 0.9, "n": 3},
                                       "excess_over_oracle": {"a": 1.0, "b": 3 * b, "r2": 0.8, "n": 3}}}

    return {"seed": seed, "architectures": {"CompSkip + window": arch(b_first, 0.01),
                                            "all-global, full attention": arch(0.02, 0.0)}}


def test_fm_scaling_puts_an_interval_on_the_exponent_and_pairs_the_architectures_per_size():
    per_seed = [_scaling_payload(s, 0.018 + 0.001 * s) for s in range(3)]
    out = sweep.summarize_fm_scaling(per_seed)
    first = out["architectures"]["CompSkip + window"]
    assert first["b"]["mean"] == pytest.approx(0.019) and first["b"]["n"] == 3
    assert first["excess_b"]["mean"] == pytest.approx(0.057)
    assert len(first["sizes"]) == 3 and len(first["sizes"][0]["ne"]) == 3
    assert len(out["arch_difference"]["per_size"]) == 3
    assert all(d["mean"] > 0 for d in out["arch_difference"]["per_size"])  # the +0.01 shift, minus a smaller b


def test_run_sweep_runs_every_seed_into_its_own_folder_and_writes_the_summary(tmp_path, monkeypatch):
    seen = []

    def job(study, dataset, seed, out_dir, quick, threads):
        seen.append((study, seed, out_dir, quick))
        return _gap_payload(seed, 0.01, 0.01)

    monkeypatch.setattr(sweep, "_seed_job", job)
    out = sweep.run_sweep("fm-gap", 3, tmp_path, quick=True, jobs=1)
    assert [s[1] for s in seen] == [0, 1, 2]
    assert [s[2] for s in seen] == [str(tmp_path / f"seed-{s}") for s in range(3)]
    assert out["n_seeds"] == 3
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["candidates"]["wider"]["chosen_on_validation"] == 3
    md = (tmp_path / "results.md").read_text()
    assert "adrank fm-gap --seeds 3 --jobs 1 --quick" in md and "3 of 3" in md and "history bound" in md
    assert not list(tmp_path.glob("*.tmp"))


def test_fm_gap_options_reach_every_seed_and_the_command(tmp_path, monkeypatch):
    seen = []

    def job(study, dataset, seed, out_dir, quick, threads, **options):
        seen.append(options)
        return _gap_payload(seed, 0.01, 0.01)

    monkeypatch.setattr(sweep, "_seed_job", job)
    out = sweep.run_sweep("fm-gap", 2, tmp_path, quick=True, jobs=1, candidates=("interaction",), ablations=False)
    assert seen == [{"candidates": ("interaction",), "ablations": False}] * 2
    assert out["command"] == (f"adrank fm-gap --seeds 2 --jobs 1 --quick --candidates interaction --no-ablations "
                              f"--out {tmp_path}")
    assert sweep.gap_flags() == ""


def test_resume_reads_the_seeds_already_run_with_the_same_options_and_runs_the_rest(tmp_path, monkeypatch):
    def payload(seed: int, ablations: bool = False) -> dict:
        p = _gap_payload(seed, 0.01, 0.01)
        p["candidates"] = {"experiment FM": p["candidates"]["experiment FM"],
                           "interaction scalars": p["candidates"]["wider"]}
        return {**p, "profile_name": "quick", "ablations": ablations, "seconds": 60.0}

    for seed, ablations in ((0, False), (1, True)):  # seed 1 was run with the ablations: another study
        (tmp_path / f"seed-{seed}").mkdir()
        (tmp_path / f"seed-{seed}" / "results.json").write_text(json.dumps(payload(seed, ablations)))
    ran = []

    def job(study, dataset, seed, out_dir, quick, threads, **options):
        ran.append(seed)
        return payload(seed)

    monkeypatch.setattr(sweep, "_seed_job", job)
    out = sweep.run_sweep("fm-gap", 3, tmp_path, quick=True, jobs=1, resume=True, candidates=("interaction",),
                          ablations=False)
    assert ran == [1, 2] and out["reused_seeds"] == [0]
    assert out["candidates"]["interaction scalars"]["validation_gain"]["n"] == 3
    assert "seeds 0 read from an earlier run" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="--resume"):
        sweep.run_sweep("fm-scaling", 2, tmp_path, resume=True)


@pytest.mark.parametrize(("study", "seeds", "field"), [("fm-gap", 1, "--seeds"), ("nope", 3, "study")])
def test_bad_arguments_name_the_field(tmp_path, study, seeds, field):
    with pytest.raises(ValueError, match=field):
        sweep.run_sweep(study, seeds, tmp_path)
