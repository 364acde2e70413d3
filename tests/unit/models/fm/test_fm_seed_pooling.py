"""HSP: SumKronLinear equals the explicit Kronecker form; pooling is masked, order-free and NaN-free."""

from __future__ import annotations

import pytest
import torch

from models.fm.seed_pooling import HierarchicalSeedPooling, SumKronLinear


@pytest.mark.parametrize(("s", "d", "so", "do", "rank"), [(3, 4, 2, 5, 1), (4, 3, 4, 3, 3), (5, 2, 1, 6, 2)])
def test_sum_kron_linear_equals_explicit_kronecker(s: int, d: int, so: int, do: int, rank: int) -> None:
    torch.manual_seed(0)
    layer = SumKronLinear(s, d, so, do, rank).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(7, s, d, dtype=torch.float64)
    explicit = sum(torch.kron(layer.a[k], layer.b[k]) for k in range(rank))  # [S'·d', S·d]
    want = x.flatten(1) @ explicit.T + layer.bias.flatten()  # (Σ_k A_k ⊗ B_k) vec(X), row-major vec
    torch.testing.assert_close(layer(x).flatten(1), want)
    torch.testing.assert_close(layer.explicit_matrix(), explicit)


def test_hsp_ignores_padding_and_event_order() -> None:
    torch.manual_seed(1)
    hsp = HierarchicalSeedPooling(16, n_heads=2, n_seeds=6, n_out=3).eval()
    x = torch.randn(2, 10, 16)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 7:] = False
    out = hsp(x, mask)
    assert out.shape == (2, 3, 16)
    x2 = x.clone()
    x2[0, 7:] = 50.0
    torch.testing.assert_close(hsp(x2, mask), out)
    perm = torch.randperm(10)
    torch.testing.assert_close(hsp(x[:, perm], mask[:, perm]), out, atol=1e-5, rtol=1e-5)


def test_hsp_empty_history_is_finite_and_input_independent() -> None:
    torch.manual_seed(2)
    hsp = HierarchicalSeedPooling(8, n_heads=1, n_seeds=4, n_out=2)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    a, b = hsp(torch.randn(2, 5, 8), mask), hsp(torch.randn(2, 5, 8), mask)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b)


def test_hsp_is_trainable() -> None:
    torch.manual_seed(3)
    hsp = HierarchicalSeedPooling(8, n_heads=2, n_seeds=4, n_out=2)
    hsp(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)).pow(2).sum().backward()
    assert hsp.seed_attention.seeds.grad is not None and hsp.compress.a.grad is not None
