"""Training and evaluation of vertical models, and the checkpoint format export reads.

`prepare_vm_data` builds what every VM variant reads (features, split, and optionally the DAS log of
FM predictions and a source of FM code histories) once; `fit_vm` trains one variant on it. The
experiment runs many variants over one `VMData`, so the FM runs once per example (DAS).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import load_payload, save_atomic
from models.data.schema import EventLog
from models.data.splits import per_user_split_mask, time_split_mask
from models.distill import DistillConfig, StudentAdapter, scale_grad, soft_bce
from models.features import FeatureSpec, features_from_events
from models.history import FM_HISTORY, FM_HISTORY_MASK, USER_INDEX
from models.loop import Batch, LoopConfig, StepLoss, run_epochs, start_run
from models.loopfm import drop_history
from models.metrics import summarize
from models.vm import BASE_INPUTS, VerticalModel, VMConfig
from models.world import World

# (rows, L) -> the HISTORY_INPUTS tensors (models.history.history_tensors) of the FM codes strictly before
# each row's time, one user per row
HistorySource = Callable[[np.ndarray, int], dict[str, np.ndarray]]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    epochs: int = 2
    batch_size: int = 1024
    lr: float = 3e-3
    weight_decay: float = 1e-6
    test_fraction: float = 0.2
    split: str = "time"  # "time" (global cut) or "per_user" (chronological per user)
    seed: int = 0
    threads: int = 2

    @classmethod
    def for_dataset(cls, dataset: str, **overrides: object) -> TrainConfig:
        """The split each dataset is evaluated on: MovieLens users are rated over years, so each user's
        latest 10% is their test; the synthetic world (and logs like it) cut once in time, last 20%."""
        split = {"split": "per_user", "test_fraction": 0.1} if dataset == "movielens" else {"split": "time",
                                                                                             "test_fraction": 0.2}
        return cls(**{**split, **overrides})


@dataclass
class VMData:
    events: EventLog
    spec: FeatureSpec
    feats: dict[str, np.ndarray]
    train_idx: np.ndarray
    test_idx: np.ndarray
    fm_logits: np.ndarray | None = None  # DAS log: FM pCTR logit per row, computed once
    history: HistorySource | None = None
    fm_version: str = "none"


@dataclass
class TrainResult:
    model: VerticalModel
    spec: FeatureSpec
    vm_config: VMConfig
    train_config: TrainConfig
    metrics: dict[str, dict[str, float]]
    loss_curve: list[float] = field(default_factory=list)
    source: str = ""
    fm_version: str = "none"
    test_predictions: np.ndarray | None = None


def esmm_loss(ctr_logit: torch.Tensor, cvr_logit: torch.Tensor, click: torch.Tensor,
              conversion: torch.Tensor) -> torch.Tensor:
    """pCTR on every impression + pCTCVR = pCTR × pCVR on every impression (ESMM): pCVR learns from the
    whole impression space, not only clicked rows. Shared by the VM and the FM."""
    p_ctcvr = torch.sigmoid(ctr_logit) * torch.sigmoid(cvr_logit)
    return F.binary_cross_entropy_with_logits(ctr_logit, click) + F.binary_cross_entropy(
        p_ctcvr.clamp(1e-7, 1 - 1e-7), conversion)


def prepare_vm_data(events: EventLog, train_config: TrainConfig = TrainConfig()) -> VMData:
    """Features on the whole log (history features only look strictly backwards), then the split."""
    spec = FeatureSpec.from_cardinality(events.cardinality)
    feats = features_from_events(spec, events)
    split = per_user_split_mask if train_config.split == "per_user" else time_split_mask
    is_test = split(events, train_config.test_fraction)
    return VMData(events, spec, feats, np.flatnonzero(~is_test), np.flatnonzero(is_test))


def batch_inputs(data: VMData, config: VMConfig, rows: np.ndarray, *, train: bool = False,
                 generator: torch.Generator | None = None, batch: Batch | None = None,
                 mask_history: bool = False) -> tuple[torch.Tensor, ...]:
    """The VM's input tensors for `rows`. Training hides whole histories at random (history dropout); with
    `batch` (a data-parallel step) the draws are the ones one process makes for its whole batch, taken at
    these rows' positions in it. `mask_history` hides every row's history (the no-history path that
    dropout trains, and serving's transfer sample runs)."""
    tensors = [torch.from_numpy(np.ascontiguousarray(data.feats[k][rows])) for k in BASE_INPUTS]
    if config.history_dim:
        if data.history is None:
            raise ValueError("a LoopFM VM needs VMData.history (FM codes from the embedding cache)")
        hist = data.history(rows, config.history_len)
        codes = hist[FM_HISTORY]
        if codes.shape[-1] != config.history_dim:
            raise ValueError(f"history codes have width {codes.shape[-1]}, the VM expects {config.history_dim}")
        m = torch.from_numpy(hist[FM_HISTORY_MASK])
        if mask_history:
            m = torch.zeros_like(m)
        elif train and batch is None:
            m = drop_history(m, config.history_dropout, generator)
        elif train:
            keep = drop_history(torch.ones((batch.size, 1), dtype=m.dtype), config.history_dropout, generator)
            m = m * keep[torch.from_numpy(batch.positions)]
        tensors += [torch.from_numpy(codes), m, torch.from_numpy(hist[USER_INDEX])]
    return tuple(tensors)


def predict(model: VerticalModel, data: VMData, rows: np.ndarray,
            batch_size: int = 8192, *, mask_history: bool = False) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    ctr, cvr = np.empty(len(rows), np.float32), np.empty(len(rows), np.float32)
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            sl = slice(s, s + batch_size)
            p1, p2 = model(*batch_inputs(data, model.config, rows[sl], mask_history=mask_history))
            ctr[sl], cvr[sl] = p1.numpy(), p2.numpy()
    return ctr, cvr


def evaluate(events: EventLog, p_ctr: np.ndarray, p_cvr: np.ndarray) -> dict[str, float]:
    """CTR metrics on all rows, CVR metrics on clicked rows; oracle figures where the truth is known."""
    out = {f"ctr_{k}": v for k, v in summarize(events["click"], p_ctr).items()}
    clicked = events["click"].astype(bool)
    if clicked.any():
        out.update({f"cvr_{k}": v for k, v in summarize(events["conversion"][clicked], p_cvr[clicked]).items()})
    if events.has_ground_truth:
        out.update({f"oracle_ctr_{k}": v for k, v in summarize(events["click"], events["p_click"]).items() if k != "n"})
    return out


class _VMObjective(nn.Module):
    """The VM's training forward (trunk, heads, and the KD head in aux mode) as one module, so
    DistributedDataParallel can wrap it: DDP averages gradients only for a forward run through it."""

    def __init__(self, model: VerticalModel, distill: DistillConfig) -> None:
        super().__init__()
        self.model, self.aux, self.grad_scale = model, distill.mode == "aux", distill.grad_scale

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.model.trunk(*inputs)
        logits = (self.model.ctr_head(h).squeeze(-1), self.model.cvr_head(h).squeeze(-1))
        if self.aux:
            logits += (self.model.kd_head(scale_grad(h, self.grad_scale)).squeeze(-1),)
        return logits


def fit_vm(data: VMData, vm_config: VMConfig = VMConfig(), train_config: TrainConfig = TrainConfig(),
           distill: DistillConfig = DistillConfig(), *, progress: bool = True, desc: str = "train vm",
           world: World = World()) -> TrainResult:
    """Trains one VM variant with the ESMM loss (+ KD per `distill`) and evaluates on the test rows.

    In a `world` of several ranks each trains on its shard of every epoch's batches under DDP; rank 0
    alone evaluates (the other ranks' results carry no test metrics), and `metrics["replicas"]` records
    that every rank ended with the same weights."""
    start_run(seed=train_config.seed, threads=train_config.threads, world=world)
    if distill.mode != "none" and data.fm_logits is None:
        raise ValueError("distillation needs VMData.fm_logits (the DAS log of FM predictions)")
    if distill.mode == "aux" and not vm_config.aux_head:
        vm_config = replace(vm_config, aux_head=True)
    events, dev = data.events, world.device
    click = torch.from_numpy(events["click"].astype(np.float32)).to(dev)
    conv = torch.from_numpy(events["conversion"].astype(np.float32)).to(dev)
    fm_logits = torch.from_numpy(data.fm_logits.astype(np.float32)).to(dev) if data.fm_logits is not None else None
    # an out-of-sample DAS log may leave rows unlogged (the progressive log's first window): KD skips them
    has_gaps = fm_logits is not None and not bool(torch.isfinite(fm_logits[torch.from_numpy(data.train_idx)]).all())
    model = VerticalModel(data.spec, vm_config).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay)
    adapter = StudentAdapter().to(dev) if distill.adapter else None
    adapter_opt = torch.optim.Adam(adapter.parameters(), lr=1e-2) if adapter is not None else None
    gen = torch.Generator().manual_seed(train_config.seed)  # history dropout: the same stream on every rank
    objective = world.wrap(_VMObjective(model, distill))
    adapter_step = world.wrap(adapter) if adapter is not None else None

    def step(batch: Batch) -> StepLoss:
        rows = batch.rows
        inputs = tuple(t.to(dev) for t in batch_inputs(data, vm_config, rows, train=True, generator=gen,
                                                       batch=batch if world.distributed else None))
        ctr_logit, cvr_logit, *kd = objective(*inputs)
        loss = esmm_loss(ctr_logit, cvr_logit, click[rows], conv[rows])
        if distill.mode != "none":
            fm = fm_logits[rows]
            student = ctr_logit if distill.mode == "single" else kd[0]
            labels = click[rows]
            if has_gaps:  # distil only the logged rows; the soft loss stays a mean over the batch
                logged = torch.isfinite(fm)
                keep = logged.to(fm.dtype)
                fm, student, labels = torch.where(logged, fm, 0.0), student[logged], labels[logged]
            if adapter is not None:  # fit the adapter to fresh labels first, then distil from it
                a_in = fm[logged] if has_gaps else fm
                if len(a_in):
                    a_loss = F.binary_cross_entropy_with_logits(adapter_step(a_in), labels)
                    adapter_opt.zero_grad(set_to_none=True)
                    a_loss.backward()
                    adapter_opt.step()
                with torch.no_grad():
                    fm = adapter(fm)
            target = distill.label_scale * torch.sigmoid(fm)
            if has_gaps:
                soft = soft_bce(student, target[logged]) * keep.mean() if len(student) else student.sum()
            else:
                soft = soft_bce(student, target)
            loss = loss + distill.weight * soft
        return StepLoss(loss)

    loop = run_epochs(data.train_idx, step, opt,
                      LoopConfig(epochs=train_config.epochs, batch_size=train_config.batch_size,
                                 seed=train_config.seed, desc=desc, progress=progress),
                      modules=[model], world=world)
    metrics: dict = {}
    if world.distributed:
        metrics["replicas"] = world.replica_check([model] + ([adapter] if adapter is not None else []))
    model.cpu()
    p_ctr = None
    if world.is_main:
        p_ctr, p_cvr = predict(model, data, data.test_idx)
        metrics = {"test": evaluate(events.take(data.test_idx), p_ctr, p_cvr),
                   "sizes": {"train": int(len(data.train_idx)), "test": int(len(data.test_idx))}, **metrics}
        if vm_config.history_dim:  # the offline half of the transfer ratio: the same rows, FM history masked
            masked = predict(model, data, data.test_idx, mask_history=True)
            metrics["test_no_history"] = evaluate(events.take(data.test_idx), *masked)
    return TrainResult(model, data.spec, vm_config, train_config, metrics, loop.loss_curve, events.source,
                       data.fm_version, p_ctr)


def train_vm(events: EventLog, vm_config: VMConfig = VMConfig(), train_config: TrainConfig = TrainConfig(),
             *, progress: bool = True) -> TrainResult:
    """The baseline VM on an event log (no FM inputs)."""
    return fit_vm(prepare_vm_data(events, train_config), vm_config, train_config, progress=progress)


def save_checkpoint(result: TrainResult, path: str | Path, *, fm_version: str | None = None,
                    history: dict | None = None, distill: dict | None = None) -> Path:
    """Writes weights + everything export needs (spec, config, metrics) atomically. A LoopFM VM's
    `history` (a `models.history.HistorySpec` dict: fm_version, L, width, codec, pooling) tells serving
    which codes to read; `distill` records how it was distilled (mode, strength, adapter, DAS log)."""
    if result.vm_config.history_dim and not history:
        raise ValueError("a LoopFM VM checkpoint needs its history spec (fm_version, length, width, codec, pooling)")
    payload = {
        "state_dict": result.model.state_dict(),
        "feature_spec": result.spec.to_dict(),
        "vm_config": result.vm_config.to_dict(),
        "train_config": asdict(result.train_config),
        "metrics": result.metrics,
        "loss_curve": result.loss_curve,
        "fm_version": fm_version or result.fm_version,
        "source": result.source,
        "history": history or {},
        "distill": distill or {"mode": "none"},
    }
    return save_atomic(payload, path)


def load_checkpoint(path: str | Path) -> tuple[VerticalModel, dict]:
    payload = load_payload(path)
    spec = FeatureSpec.from_dict(payload["feature_spec"])
    model = VerticalModel(spec, VMConfig.from_dict(payload["vm_config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload
