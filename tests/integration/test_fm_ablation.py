"""`adrank fm-ablation --quick`: the four CompSkip × window FMs train on one split and the report
holds their FLOPs (analytic), time per epoch and NE against the all-global full-attention baseline."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_fm_ablation_reports_flops_time_and_ne(tmp_path):
    out = tmp_path / "abl"
    proc = subprocess.run([sys.executable, "-m", "adrank", "fm-ablation", "--seeds", "1", "--quick",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    v = res["variants"]
    assert set(v) == {"CompSkip + window", "CompSkip, full attention", "all-global + window",
                      "all-global, full attention"}
    base = v["all-global, full attention"]
    assert base["delta_ne_vs_baseline"] == 0.0 and base["time_ratio_vs_baseline"] == 1.0
    assert v["CompSkip + window"]["layers"] == ["global", "local"] and base["layers"] == ["global", "global"]
    both = v["CompSkip + window"]["flops_ratio_vs_baseline"]
    # each switch saves compute, and windowing saves more the longer the history
    assert both["16"] < v["all-global + window"]["flops_ratio_vs_baseline"]["16"] < 1.0
    assert both["16"] < v["CompSkip, full attention"]["flops_ratio_vs_baseline"]["16"] < 1.0
    assert both["1024"] < both["256"] < both["16"]
    for name, x in v.items():
        assert 0.5 < x["auc_mean"] < 1.0 and math.isfinite(x["ne_mean"]) and x["seconds_per_epoch"] > 0, name
    assert "| CompSkip + window | G/L |" in (out / "results.md").read_text()
