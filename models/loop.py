"""The one training loop the FM and every VM variant run.

Why one: seeding, the thread count, the per-epoch permutation, the running loss and its curve, the
optimizer step and the split of rows across data-parallel ranks are the parts where two copies drift
apart unnoticed (a curve sampled differently, a rank that sees other rows). What differs between
models is how a batch becomes a loss, so that is the only thing a caller passes in.

Usage::

    start_run(seed=0, threads=2)                         # before the model is built: its init draws from the seed
    model = ...; opt = torch.optim.Adam(model.parameters())
    def step(batch: Batch) -> StepLoss:
        return StepLoss(loss_of(model, batch.rows))
    result = run_epochs(train_rows, step, opt, LoopConfig(epochs=2, batch_size=1024, seed=0, desc="train"),
                        modules=[model])
    result.loss_curve, result.epochs_run

Distributed (a `models.world.World` of several ranks): every rank draws the same permutation per epoch
(the same seed and the same number of draws, which is what `DistributedSampler.set_epoch` achieves),
pads it to a multiple of the world size, takes every `world.size`-th row starting at its rank, and steps with batches of
`batch_size // world.size`. Rank r's k-th batch is then rows r, r + W, r + 2W, … of the one-process
k-th batch, so the global batch (what DDP averages the gradient over) holds the same rows as one process
(but for the last one, which repeats the few head rows the padding added). `Batch.positions` says where
each row sits in the one-process batch, so a random draw per row (history dropout) can be the draw one
process makes, and N processes train the model one process trains, up to the order of float additions.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from models.progress import progress_bar
from models.world import World

CURVE_EVERY = 50  # steps between points of the recorded loss curve


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    epochs: int
    batch_size: int  # the global batch: split over ranks when distributed
    seed: int
    desc: str = "train"
    progress: bool = True


@dataclass
class StepLoss:
    """What one step returns: `loss` is what backward runs on; `tracked` feeds the running loss and its
    curve (the FM tracks its task loss, not the autoencoder's); `shown` adds figures to the progress bar."""

    loss: torch.Tensor
    tracked: torch.Tensor | None = None
    shown: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Batch:
    """One step's rows on this rank, and where they sit in the batch one process takes at this step."""

    rows: np.ndarray
    positions: np.ndarray  # index of each row in the one-process batch (padding rows wrap around)
    size: int  # rows in the one-process batch


@dataclass
class LoopResult:
    loss_curve: list[float]
    epochs_run: int


Step = Callable[[Batch], StepLoss]
EpochHook = Callable[[int], bool]  # called with the 0-based epoch after it; True stops training


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_run(*, seed: int, threads: int, world: World = World()) -> None:
    """Seeds every generator and sets the intra-op threads, split between the ranks of this machine so
    two processes on two cores do not run four threads. Call it before building the model.

    Rank r seeds with `seed + r`, so dropout layers (which draw from the global generator) draw other
    masks on each rank rather than the same ones for other rows; rank 0 (and one process) with `seed`
    itself. The initial weights still agree: wrapping in DDP (`World.wrap`) broadcasts rank 0's
    parameters to every rank."""
    seed_everything(seed + world.rank)
    torch.set_num_threads(max(1, threads // world.size))


def run_epochs(rows: np.ndarray, step: Step, optimizer: torch.optim.Optimizer, config: LoopConfig, *,
               modules: Iterable[nn.Module], on_epoch_end: EpochHook | None = None,
               world: World = World()) -> LoopResult:
    """Trains over `rows` for `config.epochs` epochs (fewer if `on_epoch_end` says stop).

    `step(batch)` builds the loss of `batch.rows`; the loop zeroes the gradients, runs backward and steps the
    optimizer. `modules` are put in training mode at the start of every epoch (a hook may have
    evaluated them in between). Only the main rank shows a progress bar; every rank records the curve of
    its own batches.
    """
    modules = list(modules)
    rng = np.random.default_rng(config.seed)
    bs = world.local_batch(config.batch_size)
    curve: list[float] = []
    epochs_run = 0
    for epoch in range(config.epochs):
        for m in modules:
            m.train()
        full = rng.permutation(rows)
        perm = world.shard(full)
        bar = progress_bar(range(0, len(perm), bs), desc=f"{config.desc} epoch {epoch + 1}/{config.epochs}",
                           enabled=config.progress and world.is_main)
        running = 0.0
        for i, s in enumerate(bar):
            local = perm[s:s + bs]
            size = min(config.batch_size, len(full) - i * config.batch_size)  # the one-process batch
            out = step(Batch(local, (np.arange(len(local)) * world.size + world.rank) % size, size))
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            tracked = (out.loss if out.tracked is None else out.tracked).item()
            running = 0.98 * running + 0.02 * tracked if i else tracked
            if i % CURVE_EVERY == 0:
                curve.append(running)
                bar.set_postfix(loss=f"{running:.4f}", **{k: f"{v.item():.4f}" for k, v in out.shown.items()},
                                refresh=False)
        epochs_run = epoch + 1
        if on_epoch_end is not None and on_epoch_end(epoch):
            break
    return LoopResult(curve, epochs_run)
