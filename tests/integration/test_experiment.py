"""`adrank experiment --quick`: every variant trains over shared FM artefacts and the results files
hold per-variant figures, transfer ratios and the acceptance checks (the science is reported, not
asserted: see docs/results.md)."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_experiment_writes_results(tmp_path):
    out = tmp_path / "exp"
    proc = subprocess.run([sys.executable, "-m", "adrank", "experiment", "--dataset", "synthetic", "--seeds", "1",
                           "--quick", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    variants = results["variants"]
    expected = {"fm", "vm_baseline", "vm_kd", "vm_kd_aux", "vm_loopfm_sum", "vm_loopfm_attn", "vm_kd_loopfm"}
    assert set(variants) == expected
    for name, v in variants.items():
        assert 0.5 < v["auc_mean"] < 1.0, name
        assert math.isfinite(v["ne_mean"]) and v["ne_std"] == 0.0  # one seed
    assert set(results["transfer_ratio"]) == expected - {"fm", "vm_baseline"}
    assert results["oracle"]["auc"] > variants["vm_baseline"]["auc_mean"]  # the truth bounds every model
    assert set(results["checks"]) == {"fm_beats_baseline", "loopfm_beats_baseline", "kd_loopfm_beats_kd_every_seed",
                                      "tr_kd_loopfm_ge_1.5x_tr_kd", "aux_kd_ge_single_kd"}
    assert results["per_seed"][0]["fm_version"].startswith("fm-")
    # every KD variant picked its strength on the validation slice from the profile's grid
    assert set(results["kd_selection"]) == {"vm_kd", "vm_kd_aux", "vm_kd_loopfm"}
    assert results["kd_selection"]["vm_kd_aux"]["knob"] == "grad_scale"
    for name, sel in results["kd_selection"].items():
        assert sel["per_seed"][0] in (1.0, 2.0), name
        scores = sel["validation_ne"][0]
        assert set(scores) == {"1.0", "2.0"} and sel["per_seed"][0] == float(min(scores, key=scores.get)), name
    assert (out / "results.png").stat().st_size > 10_000
    assert "| vm_kd_loopfm |" in (out / "results.md").read_text()
