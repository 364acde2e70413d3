"""`adrank experiment --quick`: every variant trains over shared FM artefacts and the results files
hold per-variant figures, transfer ratios and each claim's paired interval and verdict (the science is
reported, not asserted: see docs/results.md)."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_experiment_writes_results(tmp_path):
    out = tmp_path / "exp"
    proc = subprocess.run([sys.executable, "-m", "adrank", "experiment", "--dataset", "synthetic", "--seeds", "2",
                           "--jobs", "2", "--quick", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    variants = results["variants"]
    expected = {"fm", "vm_baseline", "vm_kd", "vm_kd_aux", "vm_loopfm_sum", "vm_loopfm_attn", "vm_kd_loopfm"}
    assert set(variants) == expected
    for name, v in variants.items():
        assert 0.5 < v["auc_mean"] < 1.0, name
        assert math.isfinite(v["ne_mean"]) and len(v["ne"]) == 2
    assert set(results["transfer_ratio"]) == expected - {"fm", "vm_baseline"}
    assert results["oracle"]["auc"] > variants["vm_baseline"]["auc_mean"]  # the truth bounds every model
    claims = {"fm_beats_baseline", "loopfm_beats_baseline", "kd_loopfm_beats_kd", "tr_kd_loopfm_ge_1.5x_tr_kd",
              "aux_kd_beats_single_kd"}
    assert set(results["checks"]) == set(results["claims"]) == claims
    per_seed_ne = {n: [s[n]["ne"] for s in results["per_seed"]] for n in ("vm_baseline", "fm")}
    fm_claim = results["claims"]["fm_beats_baseline"]
    # the paired difference is recomputed from the per-seed figures, and its interval brackets the mean
    assert fm_claim["per_seed"] == [b - f for b, f in zip(per_seed_ne["vm_baseline"], per_seed_ne["fm"], strict=True)]
    for name, c in results["claims"].items():
        assert c["n"] <= 2 and c["method"] == "paired t, 95%", name
        if c["n"] == 2:
            assert c["low"] <= c["mean"] <= c["high"], name
        assert c["verdict"] in ("holds", "reversed", "inconclusive"), name
        assert results["checks"][name] == (c["verdict"] == "holds"), name
    assert results["jobs"] == 2 and results["das_log"] == "in-sample"
    assert [s["das"]["logged_share_of_vm_train"] for s in results["per_seed"]] == [1.0, 1.0]
    assert results["per_seed"][0]["fm_version"].startswith("fm-")
    assert results["per_seed"][0]["fm_version"] != results["per_seed"][1]["fm_version"]  # each seed its own FM
    # every KD variant picked its strength on the validation slice from the profile's grid
    assert set(results["kd_selection"]) == {"vm_kd", "vm_kd_aux", "vm_kd_loopfm"}
    assert results["kd_selection"]["vm_kd_aux"]["knob"] == "grad_scale"
    for name, sel in results["kd_selection"].items():
        for chosen, scores in zip(sel["per_seed"], sel["validation_ne"], strict=True):
            assert set(scores) == {"1.0", "2.0"} and chosen == float(min(scores, key=scores.get)), name
    assert (out / "results.png").stat().st_size > 10_000
    md = (out / "results.md").read_text()
    assert "| vm_kd_loopfm |" in md and "| aux_kd_beats_single_kd | NE(vm_kd) − NE(vm_kd_aux) |" in md
