"""`adrank demo` end to end on a small size: FM → embed → baseline and LoopFM VMs → export → serve with the
cache (child process) → score a user with history and a cold user → stop."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_the_loopfm_loop_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, "-m", "adrank", "demo", "--out", str(tmp_path / "run"), "--events",
                          "20000", "--requests", "10", "--fm-epochs", "1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "COLUMNS": "200"})
    text = out.stdout
    assert out.returncode == 0, text[-3000:] + out.stderr[-3000:]
    assert "200 ads ranked by vm_loopfm v1" in text
    for row in ("FM (offline only, never served)", "VM baseline (vm v1)", "VM + LoopFM (vm_loopfm v1)", "oracle"):
        assert row in text
    assert "served by" in text and "fm_version fm-" in text
    assert "FLAG_USER_HISTORY_MISSING" in text.split("cold user")[1]
    assert "cache lookup per request" in text and "server drained and exited with 0" in text
    for name in ("vm", "vm_loopfm"):
        assert (tmp_path / "run" / "model_repository" / name / "1" / "model.onnx").exists()
