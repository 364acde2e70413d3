"""Offline job steps the CLI and the demo call: load data → train a VM → write checkpoint + catalog.

`run_train_job` trains every VM variant the experiment knows from flags alone: the baseline, LoopFM (FM
history read from the embedding cache, sum or target-attention pooling), KD from the FM's DAS log (single
head or ExFM's auxiliary head, with or without the student adapter), and their combinations. A LoopFM or
KD job names the FM checkpoint it builds on; the VM checkpoint then records that FM's version and the
history spec serving needs. `run_fm_job` (`adrank train fm`) and `run_embed_job` (`adrank embed`) are
the FM's two jobs.

Every job is a frozen dataclass of plain fields, so `models.distributed` can hand it to torchrun workers
as JSON; each job takes the `World` it runs in, and only rank 0 writes files and prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from models.catalog import build_catalog, save_catalog
from models.data import load_dataset
from models.data.schema import EventLog
from models.distill import DistillConfig
from models.train import TrainConfig, TrainResult, fit_vm, prepare_vm_data, save_checkpoint
from models.vm import VMConfig
from models.world import World

CHECKPOINT = "vm.pt"
CATALOG = "catalog.npz"
METRICS = "metrics.json"
HISTORY_CHOICES = ("none", "sum", "attention")
KD_CHOICES = ("none", "single", "aux")


class JobError(ValueError):
    """A training job's flags do not fit together (the message names the flag)."""


@dataclass(frozen=True, kw_only=True)
class EventSource:
    """Where a job's events come from: a dataset (synthetic of `n_events`, movielens, taobao at `data_path`)
    generated or read with `seed`, or an .npz written by `adrank data` / `adrank logs join`."""

    dataset: str = "synthetic"
    n_events: int = 300_000
    seed: int = 0
    data_path: str | None = None
    events_file: str | None = None  # overrides dataset / n_events

    def load(self) -> EventLog:
        if self.events_file:
            return EventLog.load(self.events_file)
        return load_dataset(self.dataset, n_events=self.n_events, seed=self.seed, path=self.data_path)


@dataclass(frozen=True, kw_only=True)
class TrainJob(EventSource):
    """One `adrank train vm` run. Defaults train the baseline VM on synthetic events."""

    epochs: int = 2
    out_dir: str = "runs/demo"
    fm_checkpoint: str | None = None  # fm.pt: the FM whose codes (history) or predictions (KD) the VM uses
    cache_dir: str | None = None
    cache_url: str | None = None
    history: str = "none"  # none | sum | attention
    history_len: int = 32  # L
    history_width: int | None = None  # code prefix width (Matryoshka); default: the cache's full width
    kd: str = "none"  # none | single | aux
    kd_strength: float = 1.0  # λ for the single head, β (gradient share into the trunk) for the aux head
    adapter: bool = False
    das: str | None = None  # DAS log; default: das.npz beside the FM checkpoint

    def __post_init__(self) -> None:
        if self.history not in HISTORY_CHOICES:
            raise JobError(f"--history must be one of {HISTORY_CHOICES}, got {self.history!r}")
        if self.kd not in KD_CHOICES:
            raise JobError(f"--kd must be one of {KD_CHOICES}, got {self.kd!r}")
        if not 1 <= self.history_len <= 1024:
            raise JobError(f"--history-len must be in [1, 1024], got {self.history_len}")
        if not 0.0 < self.kd_strength <= 100.0:
            raise JobError(f"--kd-strength must be in (0, 100], got {self.kd_strength}")
        if self.adapter and self.kd == "none":
            raise JobError("--adapter needs --kd single or --kd aux")
        if (self.history != "none" or self.kd != "none") and not self.fm_checkpoint:
            raise JobError("--history and --kd need --fm-checkpoint (the FM the VM learns from)")
        if self.history == "none" and (self.cache_dir or self.cache_url):
            raise JobError("--cache-dir / --cache-url are read only with --history sum|attention")

    @property
    def distill(self) -> DistillConfig:
        if self.kd == "single":
            return DistillConfig(mode="single", weight=self.kd_strength, adapter=self.adapter)
        if self.kd == "aux":
            return DistillConfig(mode="aux", grad_scale=self.kd_strength, adapter=self.adapter)
        return DistillConfig()


@dataclass(frozen=True, kw_only=True)
class FMJob(EventSource):
    """One `adrank train fm` run: the FM + its code autoencoder, then fm.pt and the DAS log in `out_dir`."""

    epochs: int = 2
    out_dir: str = "runs/demo"


EMBED_SPLITS = ("train", "test", "all")


@dataclass(frozen=True, kw_only=True)
class EmbedJob(EventSource):
    """One `adrank embed` run: codes of a split's events published as one snapshot of the FM's version."""

    fm_checkpoint: str = "runs/demo/fm.pt"
    split: str = "all"
    cache_dir: str | None = None
    cache_url: str | None = None
    codec: str = "int4"
    since: str | None = None  # None: every row; "auto": after the published high-water mark; or a time in ms

    def __post_init__(self) -> None:
        if self.split not in EMBED_SPLITS:
            raise JobError(f"--split must be one of {EMBED_SPLITS}, got {self.split!r}")
        if self.since not in (None, "auto") and not str(self.since).lstrip("-").isdigit():
            raise JobError(f"--since must be 'auto' or a time in ms, got {self.since!r}")

    @property
    def since_value(self) -> int | str | None:
        return self.since if self.since in (None, "auto") else int(self.since)


def run_train_job(job: TrainJob, *, progress: bool = True, world: World = World()) -> tuple[TrainResult, Path | None]:
    """Trains the job's VM variant; rank 0 writes vm.pt, the catalog and metrics.json (other ranks
    return no path)."""
    events = job.load()
    tc = TrainConfig.for_dataset(events.source, epochs=job.epochs, seed=job.seed)
    data = prepare_vm_data(events, tc)
    vm_config, history, distill_record = VMConfig(), None, None
    if job.fm_checkpoint:
        from models.fm_pipeline import check_feature_schema, fm_payload

        payload = fm_payload(job.fm_checkpoint)
        check_feature_schema(job.fm_checkpoint, payload, data)
        data.fm_version = str(payload["fm_version"])
    if job.history != "none":
        vm_config, history = _attach_history(job, data, vm_config)
    if job.kd != "none":
        distill_record = _attach_das(job, data)
    result = fit_vm(data, vm_config, tc, job.distill, progress=progress, world=world)
    if not world.is_main:
        return result, None
    out = Path(job.out_dir)
    ckpt = save_checkpoint(result, out / CHECKPOINT, history=history, distill=distill_record)
    save_catalog(build_catalog(events, result.spec.recent_k), out / CATALOG)
    (out / METRICS).write_text(json.dumps(result.metrics, indent=2, sort_keys=True))
    return result, ckpt


def vm_summary(job: TrainJob, result: TrainResult, ckpt: Path) -> str:
    """The line `adrank train vm` ends with."""
    t = result.metrics["test"]
    variant = f"history={job.history} kd={job.kd}" + (f" ({job.kd_strength:g})" if job.kd != "none" else "")
    line = (f"VM ({variant}, fm_version {result.fm_version}) → {ckpt}: test CTR AUC {t['ctr_auc']:.4f} "
            f"NE {t['ctr_ne']:.4f}; CVR AUC {t.get('cvr_auc', float('nan')):.4f}")
    return line + _replicas_note(result.metrics)


def run_fm_job(job: FMJob, *, progress: bool = True, world: World = World()) -> str | None:
    """Trains the FM; rank 0 writes fm.pt and the DAS log of every example and returns the summary line."""
    from models.das import DAS_FILE, write_das
    from models.fm_pipeline import FMTrainConfig, save_fm, train_fm

    events = job.load()
    data = prepare_vm_data(events, TrainConfig.for_dataset(events.source))
    config = FMTrainConfig(epochs=job.epochs, seed=job.seed)
    fm = train_fm(data, config, progress=progress, world=world)
    if not world.is_main:
        return None
    path = save_fm(fm, data, config, Path(job.out_dir) / "fm.pt")
    das = write_das(Path(job.out_dir) / DAS_FILE, fm.fm_version, events["event_id"], fm.logits, source=events.source)
    t = fm.metrics["test"]
    return (f"FM {fm.fm_version} → {path}: test CTR AUC {t['ctr_auc']:.4f} NE {t['ctr_ne']:.4f}; "
            f"DAS log of {len(events):,} examples → {das}") + _replicas_note(fm.metrics)


def run_embed_job(job: EmbedJob, *, progress: bool = True, world: World = World(),
                  parts_dir: str | Path | None = None) -> str:
    """Codes for the job's split, published as one snapshot. Across ranks, each computes its users' codes
    into `parts_dir` and rank 0 publishes them together (`models.fm_pipeline.embed_split`); returns the
    summary line (empty on the other ranks)."""
    import numpy as np

    from models.embed import CacheLocation
    from models.fm_pipeline import embed_split

    try:
        cache = CacheLocation.from_flags(job.cache_dir, job.cache_url)
    except ValueError as exc:
        raise JobError(str(exc)) from exc
    events = job.load()
    data = prepare_vm_data(events, TrainConfig.for_dataset(events.source))
    rows = {"train": data.train_idx, "test": data.test_idx, "all": np.arange(len(events))}[job.split]
    res = embed_split(job.fm_checkpoint, data, rows, cache, codec=job.codec, since=job.since_value,
                      progress=progress, world=world, parts_dir=parts_dir)
    if not world.is_main:
        return ""
    if res is None:
        return f"nothing to embed: no {job.split}-split event at or after the published high-water mark ({cache})"
    ranks = f" from {world.size} processes" if world.distributed else ""
    return (f"{res.rows_offered:,} codes of {res.fm_version} ({job.split} split, {res.codec}){ranks} published as "
            f"snapshot {res.snapshot_id} in {cache}: {res.rows_before:,} → {res.rows_after:,} rows "
            f"(+{res.rows_added:,}), high-water mark {res.high_water_ms}")


def _replicas_note(metrics: dict) -> str:
    rep = metrics.get("replicas")
    if not rep:
        return ""
    return f"; {rep['world_size']} processes, replica weights {'identical' if rep['identical'] else 'DIFFER'}"


def _attach_history(job: TrainJob, data, vm_config: VMConfig) -> tuple[VMConfig, dict]:
    """The cache's codes of the FM's version become the VM's history input (read strictly before t)."""
    from dataclasses import replace

    from models.embed import CacheLocation, cache_history
    from models.history import HistorySpec

    try:
        cache = CacheLocation.from_flags(job.cache_dir, job.cache_url)
    except ValueError as exc:
        raise JobError(str(exc)) from exc
    reader = cache.reader(data.fm_version)  # FmVersionMismatchError names what the cache holds
    width = job.history_width or reader.dim
    if width > reader.dim:
        raise JobError(f"--history-width {width} exceeds the cache's code width {reader.dim}")
    data.history = cache_history(reader, data.events, data.fm_version, width=width)
    spec = HistorySpec(fm_version=data.fm_version, length=job.history_len, width=width, codec=reader.codec_name,
                       pooling=job.history)
    return replace(vm_config, history_dim=width, history_len=job.history_len, history_pooling=job.history), \
        spec.to_dict()


def _attach_das(job: TrainJob, data) -> dict:
    """KD reads the FM's logged predictions (the DAS log on disk), never a live FM."""
    from models.das import DAS_FILE, read_das, require_logged

    das = job.das or str(Path(job.fm_checkpoint).with_name(DAS_FILE))
    data.fm_logits = read_das(das, data.events, data.fm_version)
    require_logged(data.fm_logits, data.train_idx, das)
    knob = "lambda" if job.kd == "single" else "beta"
    return {"mode": job.kd, knob: job.kd_strength, "adapter": job.adapter, "das": das}
