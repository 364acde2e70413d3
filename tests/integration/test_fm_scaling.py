"""`adrank fm-scaling --quick`: the FM trains at four compute sizes under both architectures on one split,
and the report holds FLOPs per example, test NE, the power-law fits and the plot."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_fm_scaling_reports_ne_against_flops_with_a_fit(tmp_path):
    out = tmp_path / "scaling"
    proc = subprocess.run([sys.executable, "-m", "adrank", "fm-scaling", "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    archs = res["architectures"]
    assert set(archs) == {"CompSkip + window", "all-global, full attention"}
    assert 0.3 < res["oracle_ne"] < 1.0
    for name, r in archs.items():
        pts = r["points"]
        assert len(pts) >= 4, name
        flops = [p["flops_per_example"] for p in pts]
        assert flops == sorted(flops) and len(set(flops)) == len(flops), name  # the sizes grow compute
        assert all(math.isfinite(p["ne"]) and p["ne"] > res["oracle_ne"] for p in pts), name
        fit = r["fit"]["ne"]
        assert fit["n"] == len(pts) and 0.0 <= fit["r2"] <= 1.0 and math.isfinite(fit["b"]), name
        assert set(r["fit"]) == {"ne", "excess_over_oracle"}, name
    # at equal sizes the all-global, full-attention FM costs more FLOPs than CompSkip + window
    cheap, dear = archs["CompSkip + window"]["points"], archs["all-global, full attention"]["points"]
    assert all(c["flops_per_example"] <= d["flops_per_example"] for c, d in zip(cheap, dear, strict=True))
    assert any(c["flops_per_example"] < d["flops_per_example"] for c, d in zip(cheap, dear, strict=True))
    assert (out / "scaling.png").stat().st_size > 10_000
    assert "NE ≈ a·C^(−b)" in (out / "results.md").read_text()
