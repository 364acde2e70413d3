"""`adrank demo` end to end on a small size: train → export → serve (child process) → score → stop."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, "-m", "serving.cli", "demo", "--out", str(tmp_path / "run"), "--events",
                          "20000", "--requests", "10"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "200 ads ranked by vm v1" in out.stdout
    assert "test CTR AUC / NE" in out.stdout and "oracle CTR AUC" in out.stdout
    assert "server drained and exited with 0" in out.stdout
    assert (tmp_path / "run" / "model_repository" / "vm" / "1" / "model.onnx").exists()
