"""Banded sliding-window attention against dense and loop references, masks, memory tokens, cost."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from models.fm.window_attention import WindowAttention, banded_attention, dense_causal_attention


def _inputs(b: int, h: int, t: int, dh: int, seed: int, p_pad: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, dh, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(b, t, generator=g) > p_pad
    mask[:, 0] = True
    return q, k, v, mask


def _loop_reference(q, k, v, mask, window, query_window=None, mem_k=None, mem_v=None):
    """Per-query Python loop: softmax over {memory} ∪ {j : t-w < j ≤ t, mask[j]}."""
    b, h, t, dh = q.shape
    out = torch.zeros_like(q)
    for bi in range(b):
        for ti in range(t):
            w = window if query_window is None else int(query_window[bi, ti])
            keys = [j for j in range(max(0, ti - w + 1), ti + 1) if mask[bi, j]]
            kk, vv = k[bi, :, keys], v[bi, :, keys]
            if mem_k is not None:
                kk, vv = torch.cat([mem_k[bi], kk], 1), torch.cat([mem_v[bi], vv], 1)
            if kk.shape[1] == 0:
                continue
            p = torch.softmax(torch.einsum("hd,hkd->hk", q[bi, :, ti], kk), -1)
            out[bi, :, ti] = torch.einsum("hk,hkd->hd", p, vv)
    return out


@settings(max_examples=20, deadline=None)
@given(t=st.integers(1, 24), window=st.integers(1, 30), heads=st.integers(1, 3), seed=st.integers(0, 10_000),
       with_memory=st.booleans())
def test_banded_matches_dense_masked_softmax(t: int, window: int, heads: int, seed: int, with_memory: bool) -> None:
    torch.manual_seed(seed)
    q, k, v, mask = _inputs(2, heads, t, 4, seed)
    mem_k = mem_v = None
    if with_memory:
        mem_k, mem_v = (torch.randn(2, heads, 3, 4, dtype=torch.float64) for _ in range(2))
    got = banded_attention(q, k, v, mask, window, None, mem_k, mem_v)
    want = dense_causal_attention(q, k, v, mask, window, None, mem_k, mem_v)
    real = mask[:, None, :, None].expand_as(got)  # padded queries are zeroed by the caller
    torch.testing.assert_close(got[real], want[real])


def test_banded_matches_loop_reference_with_type_windows_and_memory() -> None:
    torch.manual_seed(0)
    q, k, v, mask = _inputs(2, 2, 13, 4, seed=3)
    qw = torch.randint(1, 6, (2, 13))
    mem_k, mem_v = torch.randn(2, 2, 2, 4, dtype=torch.float64), torch.randn(2, 2, 2, 4, dtype=torch.float64)
    got = banded_attention(q, k, v, mask, 5, qw, mem_k, mem_v)
    want = _loop_reference(q, k, v, mask, 5, qw, mem_k, mem_v)
    real = mask[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[real], want[real])
    torch.testing.assert_close(dense_causal_attention(q, k, v, mask, 5, qw, mem_k, mem_v)[real], want[real])


def test_module_zeroes_padding_and_never_nans() -> None:
    torch.manual_seed(1)
    attn = WindowAttention(16, 2, window=4)
    x = torch.randn(3, 10, 16)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2] = False  # an empty history
    y = attn(x, mask)
    assert torch.isfinite(y).all()
    assert (y[1, 6:] == 0).all() and (y[2] == 0).all()
    x2 = x.clone()
    x2[1, 6:] = 1e3  # padded content must not leak into real events
    torch.testing.assert_close(attn(x2, mask)[1, :6], y[1, :6])


def test_window_is_local_and_causal() -> None:
    torch.manual_seed(2)
    attn = WindowAttention(8, 1, window=3)
    x = torch.randn(1, 12, 8)
    mask = torch.ones(1, 12, dtype=torch.bool)
    x2 = x.clone()
    x2[0, 5] += 1.0
    diff = (attn(x2, mask) - attn(x, mask)).abs().sum(-1)[0]
    assert (diff[[5, 6, 7]] > 0).all()  # event 5 is seen by queries 5..5+w-1
    assert (diff[:5] == 0).all() and (diff[8:] == 0).all()


def test_banded_cost_is_linear_in_t_dense_is_quadratic() -> None:
    torch.manual_seed(3)

    def flops(t: int, window: int | None) -> int:
        attn = WindowAttention(8, 2, window=window)
        with FlopCounterMode(display=False) as fc:
            attn(torch.randn(1, t, 8), torch.ones(1, t, dtype=torch.bool))
        return fc.get_total_flops()

    assert math.isclose(flops(512, 8) / flops(256, 8), 2.0, rel_tol=1e-9)
    assert flops(512, None) / flops(256, None) > 3.0
