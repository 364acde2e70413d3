"""Training and evaluation of the vertical model, and the checkpoint format export reads."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models.data.schema import EventLog
from models.data.splits import per_user_split_mask, time_split_mask
from models.features import FeatureSpec, features_from_events
from models.metrics import summarize
from models.vm import VerticalModel, VMConfig

INPUT_NAMES = ("sparse", "recent", "dense")


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


@dataclass
class TrainResult:
    model: VerticalModel
    spec: FeatureSpec
    vm_config: VMConfig
    train_config: TrainConfig
    metrics: dict[str, dict[str, float]]
    loss_curve: list[float] = field(default_factory=list)
    source: str = ""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _tensors(feats: Mapping[str, np.ndarray], idx: np.ndarray) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(feats[k][idx])) for k in INPUT_NAMES)


def predict(model: VerticalModel, feats: Mapping[str, np.ndarray], batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    n = len(feats["dense"])
    ctr, cvr = np.empty(n, np.float32), np.empty(n, np.float32)
    with torch.no_grad():
        for s in range(0, n, batch_size):
            idx = np.arange(s, min(n, s + batch_size))
            p1, p2 = model(*_tensors(feats, idx))
            ctr[idx], cvr[idx] = p1.numpy(), p2.numpy()
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


def train_vm(events: EventLog, vm_config: VMConfig = VMConfig(), train_config: TrainConfig = TrainConfig(),
             *, progress: bool = True) -> TrainResult:
    """Splits `events` by time, builds features on the whole log (history features only ever look
    strictly backwards), trains with the ESMM loss and evaluates on the test split."""
    seed_everything(train_config.seed)
    torch.set_num_threads(train_config.threads)
    spec = FeatureSpec.from_cardinality(events.cardinality)
    feats = features_from_events(spec, events)
    split = per_user_split_mask if train_config.split == "per_user" else time_split_mask
    is_test = split(events, train_config.test_fraction)
    train_idx, test_idx = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    click = torch.from_numpy(events["click"].astype(np.float32))
    conv = torch.from_numpy(events["conversion"].astype(np.float32))

    model = VerticalModel(spec, vm_config)
    opt = torch.optim.Adam(model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay)
    rng = np.random.default_rng(train_config.seed)
    curve: list[float] = []
    bs = train_config.batch_size
    for epoch in range(train_config.epochs):
        model.train()
        perm = rng.permutation(train_idx)
        bar = tqdm(range(0, len(perm), bs), desc=f"train vm epoch {epoch + 1}/{train_config.epochs}",
                   disable=not progress, leave=False)
        running = 0.0
        for step, s in enumerate(bar):
            idx = perm[s:s + bs]
            ctr_logit, cvr_logit = model.logits(*_tensors(feats, idx))
            p_ctcvr = torch.sigmoid(ctr_logit) * torch.sigmoid(cvr_logit)
            loss = F.binary_cross_entropy_with_logits(ctr_logit, click[idx]) + F.binary_cross_entropy(
                p_ctcvr.clamp(1e-7, 1 - 1e-7), conv[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
            if step % 50 == 0:
                curve.append(running)
                bar.set_postfix(loss=f"{running:.4f}")
    test_feats = {k: v[test_idx] for k, v in feats.items()}
    p_ctr, p_cvr = predict(model, test_feats)
    metrics = {"test": evaluate(events.take(test_idx), p_ctr, p_cvr),
               "sizes": {"train": int(len(train_idx)), "test": int(len(test_idx))}}
    return TrainResult(model, spec, vm_config, train_config, metrics, curve, events.source)


def save_checkpoint(result: TrainResult, path: str | Path, *, fm_version: str = "none") -> Path:
    """Writes weights + everything export needs (spec, config, metrics) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state_dict": result.model.state_dict(),
        "feature_spec": result.spec.to_dict(),
        "vm_config": result.vm_config.to_dict(),
        "train_config": asdict(result.train_config),
        "metrics": result.metrics,
        "loss_curve": result.loss_curve,
        "fm_version": fm_version,
        "source": result.source,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> tuple[VerticalModel, dict]:
    payload = torch.load(Path(path), map_location="cpu", weights_only=False)
    spec = FeatureSpec.from_dict(payload["feature_spec"])
    model = VerticalModel(spec, VMConfig.from_dict(payload["vm_config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload


def metrics_json(result: TrainResult) -> str:
    return json.dumps(result.metrics, indent=2, sort_keys=True)
