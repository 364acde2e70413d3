"""The one training loop (models.loop) and the row split across ranks (models.world)."""

import numpy as np
import pytest
import torch
from torch import nn

from models.loop import CURVE_EVERY, Batch, LoopConfig, StepLoss, run_epochs, start_run
from models.world import World


def _problem(n: int = 700):
    g = np.random.default_rng(1)
    x = torch.from_numpy(g.normal(size=(n, 4)).astype(np.float32))
    y = (x.sum(1) > 0).float()
    return x, y


def _reference(x, y, *, epochs: int, bs: int, seed: int) -> tuple[list[float], torch.Tensor]:
    """The loop as `fit_vm` and `train_fm` each wrote it before they shared one."""
    start_run(seed=seed, threads=1)
    model = nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(seed)
    curve: list[float] = []
    for _ in range(epochs):
        model.train()
        perm = rng.permutation(np.arange(len(x)))
        running = 0.0
        for step, s in enumerate(range(0, len(perm), bs)):
            rows = perm[s:s + bs]
            loss = nn.functional.binary_cross_entropy_with_logits(model(x[rows]).squeeze(-1), y[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
            if step % CURVE_EVERY == 0:
                curve.append(running)
    return curve, torch.cat([p.detach().flatten() for p in model.parameters()])


def _with_loop(x, y, *, epochs: int, bs: int, seed: int, hook=None):
    start_run(seed=seed, threads=1)
    model = nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def step(batch: Batch) -> StepLoss:
        rows = batch.rows
        return StepLoss(nn.functional.binary_cross_entropy_with_logits(model(x[rows]).squeeze(-1), y[rows]))

    res = run_epochs(np.arange(len(x)), step, opt, LoopConfig(epochs=epochs, batch_size=bs, seed=seed, progress=False),
                     modules=[model], on_epoch_end=hook)
    return res, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_one_process_loop_is_bit_identical_to_the_loop_it_replaced():
    x, y = _problem()
    curve, weights = _reference(x, y, epochs=3, bs=8, seed=5)
    res, loop_weights = _with_loop(x, y, epochs=3, bs=8, seed=5)
    assert res.loss_curve == curve and len(curve) > 3
    assert torch.equal(weights, loop_weights)
    assert res.epochs_run == 3


def test_epoch_hook_stops_training():
    x, y = _problem()
    seen: list[int] = []
    res, _ = _with_loop(x, y, epochs=5, bs=64, seed=0, hook=lambda e: seen.append(e) or e == 1)
    assert seen == [0, 1] and res.epochs_run == 2


@pytest.mark.parametrize("n,size", [(10, 2), (11, 2), (11, 3), (1, 4)])
def test_shards_cover_the_permutation_like_distributed_sampler(n, size):
    perm = np.random.default_rng(0).permutation(n)
    shards = [World(rank=r, size=size).shard(perm) for r in range(size)]
    assert len({len(s) for s in shards}) == 1  # every rank takes as many steps
    assert set(np.concatenate(shards)) == set(perm)
    total = -(-n // size) * size  # ceil to a multiple of the world size
    padded = np.concatenate([perm] * size)[:total]  # the head repeated, as DistributedSampler pads
    for r, s in enumerate(shards):
        np.testing.assert_array_equal(s, padded[r::size])


def test_the_global_batch_holds_the_one_process_batch_rows():
    perm, size, bs = np.random.default_rng(2).permutation(1000), 2, 64
    local = World(rank=0, size=size).local_batch(bs)
    shards = [World(rank=r, size=size).shard(perm) for r in range(size)]
    for k in range(len(perm) // bs):
        global_rows = np.concatenate([s[k * local:(k + 1) * local] for s in shards])
        assert set(global_rows) == set(perm[k * bs:(k + 1) * bs])


def test_world_refuses_what_cannot_split():
    with pytest.raises(ValueError, match="does not split evenly"):
        World(rank=0, size=3).local_batch(256)
    with pytest.raises(ValueError, match="outside a world"):
        World(rank=2, size=2)
    single = World()
    assert single.shard(np.arange(5)).tolist() == list(range(5)) and single.broadcast(0.5) == 0.5
    assert single.replica_check([nn.Linear(2, 1)])["identical"]


def _batches(world: World, n: int, bs: int, epochs: int = 2) -> list[Batch]:
    """The batches the loop hands a step on `world` (no DDP needed: the step only records)."""
    w = nn.Parameter(torch.zeros(1))
    seen: list[Batch] = []

    def step(batch: Batch) -> StepLoss:
        seen.append(batch)
        return StepLoss((w * 0).sum())

    run_epochs(np.arange(100, 100 + n), step, torch.optim.SGD([w], lr=0.1),
               LoopConfig(epochs=epochs, batch_size=bs, seed=3, progress=False), modules=[], world=world)
    return seen


@pytest.mark.parametrize("n", [1000, 1001, 1023])
def test_batch_positions_point_each_rank_row_at_its_place_in_the_one_process_batch(n):
    one = _batches(World(), n, 64)
    ranks = [_batches(World(rank=r, size=2), n, 64) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(one)  # as many steps as one process, epochs included
    for k, b in enumerate(one):
        np.testing.assert_array_equal(b.positions, np.arange(b.size))
        covered = np.zeros(b.size, bool)
        for r in range(2):
            mine = ranks[r][k]
            assert mine.size == b.size
            real = np.arange(len(mine.rows)) * 2 + r < b.size  # the rest are padding rows
            np.testing.assert_array_equal(b.rows[mine.positions[real]], mine.rows[real])
            covered[mine.positions[real]] = True
        assert covered.all()
