"""GDPA: the personalized-FFN identity it generalizes, masking, and the residual block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.fm.gdpa import GDPA, GDPABlock, gdpa

ACT = {"silu": F.silu, "gelu": F.gelu}


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_gdpa_equals_personalized_ffn(activation: str) -> None:
    """Act(x Wq Kᵀ/τ) V == Act(x W1) W2 with per-user W1 = Wq Kᵀ/τ, W2 = V built from non-sequence tokens."""
    torch.manual_seed(0)
    b, t, n, d, tau = 3, 7, 5, 8, 1.7
    x = torch.randn(b, t, d, dtype=torch.float64)  # sequence
    ns = torch.randn(b, n, d, dtype=torch.float64)  # the user's non-sequence feature tokens
    wq, wk, wv = (torch.randn(d, d, dtype=torch.float64) for _ in range(3))
    k, v = ns @ wk, ns @ wv  # [B, N, d]
    out = gdpa(x @ wq, k, v, tau, activation)

    w1 = wq @ k.transpose(1, 2) / tau  # [B, d, N]: first-layer weights generated from the user's features
    w2 = v  # [B, N, d]: second-layer weights
    ffn = torch.bmm(ACT[activation](torch.bmm(x, w1)), w2)
    torch.testing.assert_close(out, ffn)

    # different users get different FFN weights (it is personalized, not a shared FFN)
    assert not torch.allclose(w1[0], w1[1])


def test_gdpa_module_single_head_is_the_ffn_with_value_scaled_by_n() -> None:
    torch.manual_seed(1)
    b, t, n, d = 2, 6, 4, 8
    m = GDPA(d, n_heads=1, activation="gelu", tau=2.0, out_proj=False).double()
    x, ns = torch.randn(b, t, d, dtype=torch.float64), torch.randn(b, n, d, dtype=torch.float64)
    w1 = m.q.weight.T @ (m.k(ns)).transpose(1, 2) / 2.0
    w2 = m.v(ns) / n  # the module normalises by N in place of softmax's normalisation
    torch.testing.assert_close(m(x, ns), torch.bmm(F.gelu(torch.bmm(x, w1)), w2))


def test_masked_context_token_has_no_effect() -> None:
    torch.manual_seed(2)
    m = GDPA(16, n_heads=2)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 4, 16)
    mask = torch.tensor([[True, True, True, False]] * 2)
    changed = ctx.clone()
    changed[:, 3] = 100.0
    torch.testing.assert_close(m(x, ctx, mask), m(x, changed, mask))


def test_block_is_residual_stackable_and_keeps_padding() -> None:
    torch.manual_seed(3)
    blocks = [GDPABlock(16, n_heads=2, activation=a) for a in ("silu", "gelu", "silu")]
    x, ctx = torch.randn(2, 9, 16), torch.randn(2, 3, 16)
    x_mask = torch.ones(2, 9, dtype=torch.bool)
    x_mask[1, 5:] = False
    y = x
    for blk in blocks:
        y = blk(y, ctx, x_mask)
    assert y.shape == x.shape
    torch.testing.assert_close(y[1, 5:], x[1, 5:])  # padded events untouched
    assert not torch.allclose(y[0], x[0])
    y.sum().backward()
    assert all(p.grad is not None for blk in blocks for p in blk.attn.parameters())
