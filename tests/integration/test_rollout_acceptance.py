"""The acceptance run, small: `adrank bench rollout` (real server, locust in its own process, the admin
API) stages v2 (loaded, no traffic), then takes it through shadow → canary 10 % → 50 % → promote, then
rolls back, with no failed call, and reports every switch next to an A/A baseline of windows with no
switch. The p99-per-switch figures it prints are benchmark figures (docs/rollouts.md), not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_rollout_under_locust_load_fails_no_request(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "rollout.json"
    cmd = [sys.executable, "-m", "adrank", "bench", "rollout", "--run", str(tiny_run), "--rate", "60",
           "--phase-s", "3", "--interval-s", "1.5", "--window-s", "2", "--cycles", "1", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert out.exists(), proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["operator_errors"] == [] and result["operator"] == ["stage", "shadow", "promoted", "rollback"], \
        result
    assert [s["switch"] for s in result["switches"]] == ["stage (load)", "shadow", "canary 10%", "canary 50%",
                                                         "promote", "rollback"]
    assert all(len(s["at_s"]) == 1 and s["calls_after"] > 0 for s in result["switches"]), result["switches"]
    stage, shadow = result["switches"][0]["at_s"][0], result["switches"][1]["at_s"][0]
    assert 2.5 <= shadow - stage <= 10, (stage, shadow)  # loaded a phase (3 s) before the shadow route moved
    assert all(len(s["timeline"]["server_p99_ms"]) == 8 for s in result["switches"])  # 0.5 s bins over ±2 s
    aa = result["aa_baseline"]  # no switch in it, before the first one
    assert aa["calls_before"] > 0 and aa["calls_after"] > 0 and aa["failed_after"] == 0, aa
    assert result["aa_from_s"] >= 0 and abs(aa["calls_before"] - aa["calls_after"]) <= 0.2 * aa["calls_before"], aa
    assert result["failed"] == 0 and result["calls"] > 500, result
    assert {"1", "2"} <= set(map(str, result["served_by_version"])), result  # both versions took traffic
    assert "rollout under load" in proc.stdout
