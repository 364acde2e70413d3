"""Analytic FLOPs: exact against torch's FLOP counter, and the CompSkip / windowing ablation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.fm.flops import ablation_table, count_flops
from models.fm.model import FMConfig, FoundationModel

SMALL = FMConfig(n_items=50, n_categories=6, n_sparse=30, n_sparse_fields=3, dense_dim=2, d_model=16, n_heads=2,
                 window=8, n_seeds=4, n_summary=2, hidden_dim=32, tower_dim=16, type_widths=(2, 4, 8))


@pytest.mark.parametrize("overrides", [{}, {"windowed": False}, {"compskip": False},
                                       {"compskip": False, "windowed": False}, {"type_windows": (2, 4, 12)}])
def test_count_matches_torch_flop_counter_at_batch_1(overrides: dict) -> None:
    torch.manual_seed(0)
    cfg = replace(SMALL, **overrides)
    t = 40
    mask = torch.rand(1, t) < 0.8
    batch = {"hist_item": torch.randint(1, 50, (1, t)) * mask, "hist_category": torch.randint(1, 6, (1, t)) * mask,
             "hist_type": torch.randint(0, 3, (1, t)) * mask, "hist_age": torch.rand(1, t), "hist_mask": mask,
             "target_sparse": torch.randint(0, 30, (1, 3)), "target_dense": torch.randn(1, 2)}
    with FlopCounterMode(display=False) as counter:
        FoundationModel(cfg)(**batch)
    assert counter.get_total_flops() == 2 * count_flops(cfg, t)["total"]


def test_compskip_and_windowing_cut_flops_at_t256() -> None:
    torch.manual_seed(1)
    table = ablation_table(FMConfig(), 256)
    base = table["compskip=False,windowed=False"]["total"]
    both = table["compskip=True,windowed=True"]["total"]
    ratio = both / base
    print(f"CompSkip+window / all-global full attention at T=256: {ratio:.3f}")
    assert ratio < 0.6
    assert table["compskip=True,windowed=True"]["hsp"] < table["compskip=False,windowed=True"]["hsp"]
    assert table["compskip=True,windowed=True"]["gdpa"] * 2 == table["compskip=False,windowed=True"]["gdpa"]
    assert table["compskip=True,windowed=True"]["total"] < table["compskip=False,windowed=True"]["total"]


def test_linear_in_t_with_window_quadratic_without() -> None:
    torch.manual_seed(2)
    windowed, full = FMConfig(), FMConfig(windowed=False)
    for t in (256, 1024):
        r_win = count_flops(windowed, 2 * t)["total"] / count_flops(windowed, t)["total"]
        assert 1.95 < r_win <= 2.0  # linear (the constant head cost keeps it a hair under 2)
        r_att = count_flops(full, 2 * t)["attention"] / count_flops(full, t)["attention"]
        assert r_att > 3.5  # the attention term is quadratic
    assert count_flops(full, 4096)["total"] / count_flops(full, 2048)["total"] > 3.5
