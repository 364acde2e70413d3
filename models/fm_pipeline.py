"""Offline FM side of LoopFM / ExFM: train the FM (+ its code autoencoder), log its predictions once
per example (DAS), and compute a code per user event for the embedding cache.

The FM reads each example's *long* event history (the user's last T events strictly before the
example, with their outcome types and ages) — the signal a VM's short window lacks. Its first
hidden layer (Hidden-0) is compressed by an autoencoder trained beside it with stop-gradient into
the FM, tanh codes, Matryoshka loss; codes are stored quantized.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.checkpoint import CheckpointError, load_payload, save_atomic
from models.data.schema import EventLog
from models.features import SPARSE_FIELDS
from models.fm.autoencoder import CodeAutoencoder, matryoshka_loss
from models.fm.model import FMConfig, FoundationModel
from models.history import HistoryIndex
from models.loop import Batch, LoopConfig, StepLoss, run_epochs, start_run
from models.metrics import summarize
from models.progress import progress_bar, progress_write
from models.train import VMData, esmm_loss
from models.world import World

MS_PER_HOUR = 3_600_000.0


# The FM size used by `adrank train fm` and the experiment: small enough to train on 2 cores.
SMALL_FM = {"n_layers": 2, "d_model": 16, "n_heads": 2, "hidden_dim": 64, "window": 8}


@dataclass(frozen=True, kw_only=True)
class FMTrainConfig:
    history_len: int = 32  # T: events of history the FM reads per example
    code_dim: int = 32  # d: LoopFM code width
    matryoshka: tuple[int, ...] = (4, 8, 16, 32)
    epochs: int = 4  # at most; early stopping on the validation slice usually ends sooner
    validation_fraction: float = 0.1  # the latest part of the training range, held out for early stopping
    patience: int = 1  # epochs without a better validation NE before stopping
    batch_size: int = 256
    lr: float = 1e-3
    ae_weight: float = 1.0
    seed: int = 0
    threads: int = 2
    fm: dict = field(default_factory=lambda: dict(SMALL_FM))  # FMConfig overrides


@dataclass
class FMArtifacts:
    model: FoundationModel
    autoencoder: CodeAutoencoder
    fm_version: str
    logits: np.ndarray  # DAS log: FM pCTR logit for every row of the log [N]
    codes: np.ndarray  # float32 [N, d] tanh codes, one per event (computed from that event's inputs)
    metrics: dict
    loss_curve: list[float]
    epochs_run: int = 0
    best_epoch: int = 0  # 1-based epoch whose weights were kept
    validation_ne: list[float] = field(default_factory=list)


class FMBatcher:
    """Builds FM input tensors for any rows of a VMData, reading only events strictly before each row."""

    def __init__(self, data: VMData, history_len: int, *, shared_vocab: bool = True) -> None:
        ev = data.events
        self.data, self.t = data, history_len
        self.index = HistoryIndex(ev["user_id"], ev["ts_ms"])
        if shared_vocab:  # the event's ad / category as indexed in the target's shared sparse table
            sparse = data.feats["sparse"]
            self.item = sparse[:, SPARSE_FIELDS.index("ad_id")]
            self.category = sparse[:, SPARSE_FIELDS.index("category")]
        else:
            self.item = ev["ad_id"].astype(np.int64) + 1  # 0 = padding
            self.category = ev["category"].astype(np.int64) + 1
        self.type = ev["click"].astype(np.int64) + ev["conversion"].astype(np.int64)  # 0 imp, 1 click, 2 conv
        self.ts = ev["ts_ms"]

    def __call__(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        hist, mask = self.index.before(rows, self.t)
        h = np.clip(hist, 0, None)
        age = np.log1p(np.maximum(self.ts[rows][:, None] - self.ts[h], 0) / MS_PER_HOUR).astype(np.float32)
        return {
            "hist_item": torch.from_numpy(np.where(mask, self.item[h], 0)),
            "hist_category": torch.from_numpy(np.where(mask, self.category[h], 0)),
            "hist_type": torch.from_numpy(np.where(mask, self.type[h], 0)),
            "hist_age": torch.from_numpy(np.where(mask, age, 0.0).astype(np.float32)),
            "hist_mask": torch.from_numpy(mask),
            "target_sparse": torch.from_numpy(self.data.feats["sparse"][rows]),
            "target_dense": torch.from_numpy(self.data.feats["dense"][rows]),
        }


def fm_version_of(config: FMTrainConfig, source: str, n_events: int, world_size: int = 1) -> str:
    """A content-derived version: the same config and data give the same fm_version. An FM trained by
    several processes has other weights than one trained alone (other float sums), so its codes must not
    mix with that one's under one version: the world size joins the digest when it is above 1."""
    key = [asdict(config), source, n_events] + ([{"world_size": world_size}] if world_size > 1 else [])
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode())
    return f"fm-{digest.hexdigest()[:10]}"


class _FMObjective(nn.Module):
    """The FM's training forward (task logits + the autoencoder's Matryoshka loss on a stop-gradient copy
    of Hidden-0) as one module, so DistributedDataParallel can wrap FM and autoencoder together."""

    def __init__(self, model: FoundationModel, ae: CodeAutoencoder, prefixes: tuple[int, ...]) -> None:
        super().__init__()
        self.model, self.ae, self.prefixes = model, ae, prefixes

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(**batch)
        recon = matryoshka_loss(out.hidden0.detach(), self.ae, prefixes=self.prefixes)  # stop-gradient into the FM
        return out.ctr_logit, out.cvr_logit, recon


def train_fm(data: VMData, config: FMTrainConfig = FMTrainConfig(), *, progress: bool = True,
             world: World = World()) -> FMArtifacts:
    """Trains the FM and its code autoencoder, keeping the epoch with the best validation NE, then logs
    the FM's prediction (DAS) and code for every row.

    In a `world` of several ranks each trains on its shard of every epoch's batches under DDP; rank 0
    judges early stopping and tells the others, and alone runs the final pass (the other ranks' artefacts
    have empty logits and codes), with `metrics["replicas"]` recording that every rank ended with the same
    weights."""
    start_run(seed=config.seed, threads=config.threads, world=world)
    fm_cfg = FMConfig(**{"n_items": int(data.events.cardinality["ad_id"]) + 1,
                         "n_categories": int(data.events.cardinality["category"]) + 1,
                         "n_sparse": data.spec.vocab_size, "n_sparse_fields": data.spec.n_fields,
                         "dense_dim": data.spec.dense_width, "max_len": config.history_len,
                         "shared_target_vocab": True, "item_field": SPARSE_FIELDS.index("ad_id"),
                         "category_field": SPARSE_FIELDS.index("category"), **config.fm})
    batcher = FMBatcher(data, config.history_len, shared_vocab=fm_cfg.shared_target_vocab)
    dev = world.device
    model = FoundationModel(fm_cfg).to(dev)
    ae = CodeAutoencoder(in_dim=model.hidden_dim, code_dim=config.code_dim).to(dev)
    params = list(model.parameters()) + list(ae.parameters())
    opt = torch.optim.Adam(params, lr=config.lr)
    ev = data.events
    click = torch.from_numpy(ev["click"].astype(np.float32)).to(dev)
    conv = torch.from_numpy(ev["conversion"].astype(np.float32)).to(dev)
    fit_rows, val_rows = validation_split(data, config.validation_fraction)
    objective = world.wrap(_FMObjective(model, ae, config.matryoshka))
    val_ne: list[float] = []
    best: tuple[float, int, dict, dict] | None = None

    def step(batch: Batch) -> StepLoss:
        rows = batch.rows
        ctr_logit, cvr_logit, recon = objective({k: v.to(dev) for k, v in batcher(rows).items()})
        task = esmm_loss(ctr_logit, cvr_logit, click[rows], conv[rows])
        return StepLoss(task + config.ae_weight * recon, tracked=task, shown={"recon": recon})

    def early_stop(epoch: int) -> bool:
        nonlocal best
        if not len(val_rows):
            return False
        ne = float("nan")
        if world.is_main:
            val_logits, _ = infer_fm(model, ae, batcher, val_rows, progress=False)
            ne = fm_metrics(ev, val_rows, val_logits)["ne"]
            if progress:
                progress_write(f"fm epoch {epoch + 1}: validation NE {ne:.4f}")
        val_ne.append(world.broadcast(ne))
        if best is None or val_ne[-1] < best[0]:
            best = (val_ne[-1], epoch + 1, copy.deepcopy(model.state_dict()), copy.deepcopy(ae.state_dict()))
            return False
        return epoch + 1 - best[1] >= config.patience

    loop = run_epochs(fit_rows, step, opt, LoopConfig(epochs=config.epochs, batch_size=config.batch_size,
                                                      seed=config.seed, desc="train fm", progress=progress),
                      modules=[model], on_epoch_end=early_stop, world=world)
    best_epoch = loop.epochs_run
    if best is not None:  # keep the epoch that generalised best, not the last one
        best_epoch = best[1]
        model.load_state_dict(best[2])
        ae.load_state_dict(best[3])
    metrics: dict = {"replicas": world.replica_check([model, ae])} if world.distributed else {}
    model.cpu()
    ae.cpu()
    version = fm_version_of(config, ev.source, len(ev), world.size)
    if not world.is_main:
        return FMArtifacts(model, ae, version, np.empty(0, np.float32), np.empty((0, ae.code_dim), np.float32),
                           metrics, loop.loss_curve, loop.epochs_run, best_epoch, val_ne)
    logits, codes = infer_fm(model, ae, batcher, np.arange(len(ev)), progress=progress)
    test = data.test_idx
    metrics = {"test": {f"ctr_{k}": v for k, v in fm_metrics(ev, test, logits[test]).items()}, **metrics}
    return FMArtifacts(model, ae, version, logits, codes, metrics, loop.loss_curve, loop.epochs_run, best_epoch,
                       val_ne)


def fm_metrics(events: EventLog, rows: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """CTR metrics (AUC, NE, calibration) of FM pCTR logits for `rows` of the log."""
    return summarize(events["click"][rows], 1 / (1 + np.exp(-logits)))


def validation_split(data: VMData, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows): the validation rows are the latest `fraction` of the training rows by
    time, so early stopping judges the FM the way the test split will, on events after the ones it fits."""
    train = data.train_idx
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}")
    n_val = int(len(train) * fraction)
    if n_val == 0:
        return train, train[:0]
    order = np.argsort(data.events["ts_ms"][train], kind="stable")
    return np.sort(train[order[:-n_val]]), np.sort(train[order[-n_val:]])


@torch.no_grad()
def infer_fm(model: FoundationModel, ae: CodeAutoencoder, batcher: FMBatcher, rows: np.ndarray,
             batch_size: int = 2048, *, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One FM pass per example: the DAS log (pCTR logit) and the event's code, both from its inputs."""
    model.eval()
    dev = next(model.parameters()).device  # early stopping evaluates a model still on its training device
    logits = np.empty(len(rows), np.float32)
    codes = np.empty((len(rows), ae.code_dim), np.float32)
    for s in progress_bar(range(0, len(rows), batch_size), desc="fm inference (DAS log + codes)", enabled=progress):
        sl = slice(s, s + batch_size)
        out = model(**{k: v.to(dev) for k, v in batcher(rows[sl]).items()})
        logits[sl] = out.ctr_logit.cpu().numpy()
        codes[sl] = ae.encode(out.hidden0).cpu().numpy()
    return logits, codes


def save_fm(fm: FMArtifacts, data: VMData, config: FMTrainConfig, path: str | Path) -> Path:
    """FM + autoencoder + everything `adrank embed` needs to rebuild inputs, written atomically."""
    payload = {"fm_config": asdict(fm.model.cfg), "state_dict": fm.model.state_dict(),
               "ae_dims": [fm.autoencoder.in_dim, fm.autoencoder.code_dim], "ae_state": fm.autoencoder.state_dict(),
               "train_config": asdict(config), "fm_version": fm.fm_version, "feature_spec": data.spec.to_dict(),
               "metrics": fm.metrics, "source": data.events.source,
               "early_stopping": {"best_epoch": fm.best_epoch, "epochs_run": fm.epochs_run,
                                  "validation_ne": fm.validation_ne}}
    return save_atomic(payload, path)


def fm_payload(path: str | Path) -> dict:
    """An FM checkpoint's metadata and weights (weights_only load), after checking it is an FM checkpoint."""
    payload = load_payload(path)
    missing = [k for k in ("fm_version", "fm_config", "feature_spec", "ae_dims") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: not an FM checkpoint (no {', '.join(missing)}); `adrank train fm` writes one")
    return payload


def load_fm(path: str | Path) -> tuple[FoundationModel, CodeAutoencoder, dict]:
    payload = fm_payload(path)
    cfg = payload["fm_config"]
    model = FoundationModel(FMConfig(**{**cfg, "type_windows": tuple(cfg["type_windows"]),
                                        "type_widths": tuple(cfg["type_widths"])}))
    model.load_state_dict(payload["state_dict"])
    ae = CodeAutoencoder(*payload["ae_dims"])
    ae.load_state_dict(payload["ae_state"])
    model.eval()
    ae.eval()
    return model, ae, payload


class SchemaMismatch(ValueError):
    """The data's feature schema differs from the one an FM (or VM) checkpoint was trained on."""


def check_feature_schema(checkpoint: str | Path, payload: dict, data: VMData) -> None:
    """Refuses data whose feature schema differs from the checkpoint's, naming both."""
    trained, given = payload["feature_spec"], data.spec.to_dict()
    if trained != given:
        diff = {k: (trained.get(k), given.get(k)) for k in sorted(set(trained) | set(given))
                if trained.get(k) != given.get(k)}
        raise SchemaMismatch(
            f"feature schema mismatch: checkpoint {checkpoint} was trained on {payload.get('source', '?')!r} data "
            f"with {', '.join(f'{k}={v[0]}' for k, v in diff.items())}; the given {data.events.source!r} data has "
            f"{', '.join(f'{k}={v[1]}' for k, v in diff.items())} (use the dataset and --events it was trained on)")


def embed_split(fm_path: str | Path, data: VMData, rows: np.ndarray, cache, *, codec: str = "int4",
                since: int | str | None = None, progress: bool = True, world: World = World(),
                parts_dir: str | Path | None = None):
    """Codes for `rows` of `data` with the FM at `fm_path`, published to `cache` (a `models.embed.CacheLocation`
    or an embedded store directory) as one new snapshot of that FM's version.

    `since`: None embeds every given row; an int (ms) only rows at or after it; "auto" resumes after the
    high-water mark of the snapshot already published (the nearline path). Returns a `PublishResult`
    (None when there is nothing to embed, and on every rank but 0).

    In a `world` of several ranks, each computes the codes of its users' events (`models.embed.user_shard`:
    the FM reads only the event's own user's history, so a split by user changes no code) and writes them
    to `parts_dir`; after a barrier rank 0 publishes all parts as one snapshot, through the same
    `publish_codes` call one process makes, so the snapshot is the one-process snapshot byte for byte.
    """
    from embedding_cache import open_writer
    from models.embed import CacheLocation, publish_codes, rows_since, user_shard

    model, ae, payload = load_fm(fm_path)
    check_feature_schema(fm_path, payload, data)
    cache = cache if isinstance(cache, CacheLocation) else CacheLocation("embedded", str(cache))
    if since == "auto":  # every rank reads the mark before rank 0 publishes (the barrier below)
        writer = open_writer(cache.backend, cache.location, payload["fm_version"], dim=ae.code_dim, codec=codec)
        since = writer.current_coverage().get("high_water_ms")
    if since is not None:
        rows = np.intersect1d(rows, rows_since(data.events, int(since)))
    mine = rows
    if world.distributed:
        if parts_dir is None:
            raise ValueError("a sharded embed needs parts_dir, a directory every rank can write")
        mine = rows[user_shard(data.events["user_id"][rows], world.size) == world.rank]
    batcher = FMBatcher(data, payload["train_config"]["history_len"], shared_vocab=model.cfg.shared_target_vocab)
    codes = infer_fm(model, ae, batcher, mine, progress=progress and world.is_main)[1] if len(mine) else \
        np.empty((0, ae.code_dim), np.float32)
    if world.distributed:
        _write_part(Path(parts_dir), world.rank, mine, codes)
        world.barrier()
        if not world.is_main:
            return None
        mine, codes = _read_parts(Path(parts_dir), world.size, rows, ae.code_dim)
    if len(rows) == 0:
        return None  # nothing at or after the high-water mark: no new snapshot
    full = np.zeros((len(data.events), codes.shape[1]), np.float32)
    full[mine] = codes
    return publish_codes(cache, payload["fm_version"], data.events, rows, full, codec=codec)


def _write_part(parts_dir: Path, rank: int, rows: np.ndarray, codes: np.ndarray) -> None:
    """One rank's rows and float codes, renamed into place so rank 0 never reads half a part."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    tmp = parts_dir / f"part-{rank:05d}.tmp.npz"
    np.savez(tmp, rows=rows.astype(np.int64), codes=codes)
    tmp.replace(parts_dir / f"part-{rank:05d}.npz")


def _read_parts(parts_dir: Path, size: int, rows: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's part, checked to cover `rows` exactly once (a lost or doubled part must not publish)."""
    parts = []
    for rank in range(size):
        with np.load(parts_dir / f"part-{rank:05d}.npz", allow_pickle=False) as z:
            parts.append((z["rows"], z["codes"]))
    got = np.concatenate([p[0] for p in parts])
    if len(got) != len(rows) or not np.array_equal(np.sort(got), np.sort(rows)):
        raise RuntimeError(f"embed parts in {parts_dir} cover {len(got):,} rows, expected {len(rows):,}")
    return got, np.concatenate([p[1] for p in parts]).reshape(-1, dim)


def log_predictions(fm_path: str | Path, data: VMData, path: str | Path, *, progress: bool = True) -> Path:
    """`adrank das`: one FM pass over every example of `data`, written as the DAS log at `path`."""
    from models.das import write_das

    model, ae, payload = load_fm(fm_path)
    check_feature_schema(fm_path, payload, data)
    batcher = FMBatcher(data, payload["train_config"]["history_len"], shared_vocab=model.cfg.shared_target_vocab)
    logits, _ = infer_fm(model, ae, batcher, np.arange(len(data.events)), progress=progress)
    return write_das(path, payload["fm_version"], data.events["event_id"], logits, source=data.events.source)


def log_out_of_sample(fm_path: str | Path, data: VMData, path: str | Path, method: str, *, folds: int = 3,
                      windows: int = 4, progress: bool = True):
    """`adrank das --out-of-sample kfold|progressive`: the FM at `fm_path` logs the test rows; the training
    rows are logged by fold / window FMs trained with the same training config on rows other than theirs
    (models.das_oos). Returns (path, OutOfSampleLog); the log keeps the FM's version, so `train vm --kd`
    reads it in place of the in-sample one, and its header and `producer` array say how it was made."""
    from models.das import write_das
    from models.das_oos import assert_out_of_sample, out_of_sample_log

    model, ae, payload = load_fm(fm_path)
    check_feature_schema(fm_path, payload, data)
    tc = payload["train_config"]
    config = FMTrainConfig(**{**tc, "matryoshka": tuple(tc["matryoshka"])})
    batcher = FMBatcher(data, config.history_len, shared_vocab=model.cfg.shared_target_vocab)
    main = np.full(len(data.events), np.nan, np.float32)
    main[data.test_idx], _ = infer_fm(model, ae, batcher, data.test_idx, progress=progress)
    oos = out_of_sample_log(data, config, method, main_logits=main, folds=folds, windows=windows)
    assert_out_of_sample(oos)
    logged = oos.logged
    out = write_das(path, payload["fm_version"], data.events["event_id"][logged], oos.logits[logged],
                    source=data.events.source, log=method, producer=oos.producer[logged])
    return out, oos
