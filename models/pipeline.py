"""Offline job steps the CLI and the demo call: load data → train a VM → write checkpoint + catalog."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from models.catalog import build_catalog, save_catalog
from models.data import load_dataset
from models.train import TrainConfig, TrainResult, save_checkpoint, train_vm
from models.vm import VMConfig

CHECKPOINT = "vm.pt"
CATALOG = "catalog.npz"
METRICS = "metrics.json"


@dataclass(frozen=True, kw_only=True)
class TrainJob:
    dataset: str = "synthetic"
    n_events: int = 300_000
    seed: int = 0
    epochs: int = 2
    data_path: str | None = None
    out_dir: str = "runs/demo"


def run_train_job(job: TrainJob, *, progress: bool = True) -> tuple[TrainResult, Path]:
    events = load_dataset(job.dataset, n_events=job.n_events, seed=job.seed, path=job.data_path)
    result = train_vm(events, VMConfig(), TrainConfig.for_dataset(job.dataset, epochs=job.epochs, seed=job.seed),
                      progress=progress)
    out = Path(job.out_dir)
    ckpt = save_checkpoint(result, out / CHECKPOINT)
    save_catalog(build_catalog(events, result.spec.recent_k), out / CATALOG)
    (out / METRICS).write_text(json.dumps(result.metrics, indent=2, sort_keys=True))
    return result, ckpt
