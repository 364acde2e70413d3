"""LoopFM code autoencoder: tanh bounds, stop-gradient, Matryoshka prefixes (codecs: test_cache_codecs.py)."""

from __future__ import annotations

import pytest
import torch

from models.fm.autoencoder import CodeAutoencoder, matryoshka_loss, prefix_errors
from models.fm.model import FMConfig, FoundationModel


def test_codes_are_tanh_bounded_and_prefixes_decode() -> None:
    torch.manual_seed(0)
    ae = CodeAutoencoder(in_dim=24, code_dim=16)
    z = ae.encode(torch.randn(32, 24) * 100)
    assert z.shape == (32, 16) and (z.abs() <= 1).all()
    assert ae.decode(z[:, :4]).shape == (32, 24)
    torch.testing.assert_close(ae.decode(z[:, :4]), ae.decode(torch.cat([z[:, :4], torch.zeros(32, 12)], 1)))
    with pytest.raises(ValueError):
        matryoshka_loss(torch.randn(2, 24), ae, prefixes=(4, 32))


def test_ae_loss_sends_no_gradient_into_the_fm() -> None:
    torch.manual_seed(1)
    cfg = FMConfig(n_items=20, n_categories=5, n_sparse=10, n_sparse_fields=2, dense_dim=2, d_model=8, n_heads=2,
                   n_layers=2, n_seeds=2, n_summary=2, hidden_dim=16, tower_dim=8, type_widths=(2, 2, 2))
    fm = FoundationModel(cfg)
    ae = CodeAutoencoder(in_dim=fm.hidden_dim, code_dim=8)
    mask = torch.ones(4, 6, dtype=torch.bool)
    out = fm(torch.randint(1, 20, (4, 6)), torch.randint(1, 5, (4, 6)), torch.randint(0, 3, (4, 6)),
             torch.rand(4, 6), mask, torch.randint(0, 10, (4, 2)), torch.randn(4, 2))
    matryoshka_loss(out.hidden0, ae, prefixes=(2, 4, 8)).backward()  # no .detach() here: the loss does it
    assert all(p.grad is None for p in fm.parameters())
    assert all(p.grad is not None for p in ae.parameters())


def test_every_prefix_error_decreases_with_training() -> None:
    torch.manual_seed(2)
    e = torch.randn(256, 32) @ torch.randn(32, 32) * 0.3  # correlated, like real activations
    ae = CodeAutoencoder(in_dim=32, code_dim=32)
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    prefixes = (4, 8, 16, 32)
    before = {p: v.item() for p, v in prefix_errors(e, ae, prefixes).items()}
    for _ in range(60):
        loss = matryoshka_loss(e, ae, prefixes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = {p: v.item() for p, v in prefix_errors(e, ae, prefixes).items()}
    assert all(after[p] < 0.9 * before[p] for p in prefixes), (before, after)
    assert after[4] > after[8] > after[16] > after[32]  # longer prefixes reconstruct better
