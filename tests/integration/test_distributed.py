"""`--nproc 2` through the CLI and torchrun (gloo, 2 CPU processes) against one process in this one.

Training: DDP over a global batch that holds the one-process batch's rows (and its history-dropout draws),
so the FM and the VM variants reach the one-process test NE within NE_TOLERANCE, and every rank ends
with the same weights (all_gather of the flattened parameters, compared with torch.equal, recorded
by rank 0). Embedding: users split by hash, one publish of the combined parts, byte for byte the
one-process snapshot, also when resuming with --since auto.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedding_cache.embedded import open_snapshot
from models.data import load_dataset
from models.fm_pipeline import fm_payload
from models.pipeline import EmbedJob, FMJob, TrainJob, run_embed_job, run_fm_job, run_train_job

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 10_000
# Measured 1-vs-2-process gaps are ~1e-9 (the order of float additions alone; docs/distributed.md);
# 1e-5 leaves room for other CPUs' kernels and still fails on a wrong batch split or dropout draw.
NE_TOLERANCE = 1e-5
SNAPSHOT_ARRAYS = ("user_ids", "offsets", "ts", "event_ids", "codes", "scales", "prior")

pytestmark = pytest.mark.slow


def adrank(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "adrank", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, f"adrank {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def fm_one(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FM trained by one process (in this one), as `adrank train fm` would."""
    out = tmp_path_factory.mktemp("fm_one")
    run_fm_job(FMJob(n_events=EVENTS, epochs=1, out_dir=str(out)), progress=False)
    return out


def test_two_process_fm_reaches_the_one_process_ne_with_identical_replicas(fm_one, tmp_path):
    out = adrank("train", "fm", "--events", str(EVENTS), "--epochs", "1", "--out", str(tmp_path), "--nproc", "2")
    one, two = fm_payload(fm_one / "fm.pt"), fm_payload(tmp_path / "fm.pt")
    assert two["metrics"]["replicas"]["world_size"] == 2 and two["metrics"]["replicas"]["identical"], out
    assert "2 processes, replica weights identical" in out
    assert abs(two["metrics"]["test"]["ctr_ne"] - one["metrics"]["test"]["ctr_ne"]) <= NE_TOLERANCE
    assert two["early_stopping"]["best_epoch"] == one["early_stopping"]["best_epoch"]
    assert two["fm_version"] != one["fm_version"]  # other weights: its codes never mix with the one-process FM's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["das.npz", "fm.pt"]  # rank 0 alone wrote, atomically


def test_two_process_vm_reaches_the_one_process_ne_with_identical_replicas(tmp_path):
    run_train_job(TrainJob(n_events=EVENTS, epochs=1, out_dir=str(tmp_path / "one")), progress=False)
    out = adrank("train", "vm", "--events", str(EVENTS), "--epochs", "1", "--out", str(tmp_path / "two"),
                 "--nproc", "2")
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["replicas"] == {**two["replicas"], "world_size": 2, "identical": True}, out
    assert abs(two["test"]["ctr_ne"] - one["test"]["ctr_ne"]) <= NE_TOLERANCE
    assert two["sizes"] == one["sizes"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["catalog.npz", "metrics.json", "vm.pt"]


def test_two_process_loopfm_vm_with_aux_kd_and_adapter_matches_one_process(fm_one, tmp_path):
    """History from the cache with history dropout (each rank takes one process's draws for its rows), the
    aux KD head and the student adapter (a second DDP module with its own optimizer): the one-process NE,
    and every trained parameter identical across ranks."""
    fm, cache = str(fm_one / "fm.pt"), str(tmp_path / "cache")
    run_embed_job(EmbedJob(n_events=EVENTS, fm_checkpoint=fm, cache_dir=cache), progress=False)
    flags = {"fm_checkpoint": fm, "cache_dir": cache, "history": "sum", "history_len": 8, "kd": "aux",
             "adapter": True}
    run_train_job(TrainJob(n_events=EVENTS, epochs=1, out_dir=str(tmp_path / "one"), **flags), progress=False)
    adrank("train", "vm", "--events", str(EVENTS), "--epochs", "1", "--out", str(tmp_path / "two"), "--nproc", "2",
           "--fm-checkpoint", fm, "--cache-dir", cache, "--history", "sum", "--history-len", "8", "--kd", "aux",
           "--adapter")
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["replicas"]["identical"] and two["replicas"]["world_size"] == 2
    assert abs(two["test"]["ctr_ne"] - one["test"]["ctr_ne"]) <= NE_TOLERANCE


def _same_snapshot(root_a: Path, root_b: Path, fm_version: str) -> None:
    a, b = open_snapshot(root_a, fm_version, verify="full"), open_snapshot(root_b, fm_version, verify="full")
    assert (a.snapshot_id, a.created_ms, a.coverage) == (b.snapshot_id, b.created_ms, b.coverage)
    for name in SNAPSHOT_ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name


def test_sharded_embed_equals_the_one_process_snapshot_byte_for_byte_also_with_since_auto(fm_one, tmp_path):
    events = load_dataset("synthetic", n_events=EVENTS, seed=0)
    cut = int(np.quantile(events["ts_ms"], 0.8))
    events.take(np.flatnonzero(events["ts_ms"] < cut)).save(tmp_path / "old.npz")  # yesterday's log
    events.save(tmp_path / "all.npz")
    fm = str(fm_one / "fm.pt")
    fm_version = fm_payload(fm)["fm_version"]
    one, two = tmp_path / "one", tmp_path / "two"

    run_embed_job(EmbedJob(events_file=str(tmp_path / "old.npz"), fm_checkpoint=fm, cache_dir=str(one)),
                  progress=False)
    out = adrank("embed", "--fm-checkpoint", fm, "--events-file", str(tmp_path / "old.npz"), "--cache-dir", str(two),
                 "--nproc", "2")
    assert "from 2 processes published as snapshot s000001" in out
    _same_snapshot(one, two, fm_version)

    run_embed_job(EmbedJob(events_file=str(tmp_path / "all.npz"), fm_checkpoint=fm, cache_dir=str(one), since="auto"),
                  progress=False)
    out = adrank("embed", "--fm-checkpoint", fm, "--events-file", str(tmp_path / "all.npz"), "--cache-dir", str(two),
                 "--nproc", "2", "--since", "auto")
    assert "published as snapshot s000002" in out
    _same_snapshot(one, two, fm_version)
    assert open_snapshot(two, fm_version).coverage["high_water_ms"] == int(events["ts_ms"].max())


def test_a_worker_refusal_ends_with_the_one_process_message_and_status(fm_one, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "adrank", "embed", "--fm-checkpoint", str(fm_one / "fm.pt"),
                           "--dataset", "movielens", "--cache-dir", str(tmp_path / "c"), "--nproc", "2"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: feature schema mismatch: checkpoint")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("CURRENT"))
