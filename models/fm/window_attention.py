"""Sliding-window causal self-attention in O(T·w) time and memory, plus the dense O(T²) form.

Why banded: a user's history runs to hundreds or thousands of events, and most of what an event
means depends on its neighbours (the session around it). A full T×T mask still computes and stores
T² scores; here each query gathers only its w keys (positions t-w+1 .. t) into a [T, w] band
with a fixed index tensor, so the exported graph is a Gather + two batched matmuls — no
data-dependent control flow, ONNX-friendly.

Optional extras, both cheap:
* `memory` tokens [B, M, d] (e.g. the HSP summary of the whole history) that every query may also
  attend to, so local layers still see a compressed global view;
* `query_window` [B, T] per-query window sizes ≤ w (event-type-specific windows).

`dense_causal_attention` is the full-attention version with identical semantics: the CompSkip
ablation's `windowed=False` path and the reference the banded version is tested against.

Example:
    >>> attn = WindowAttention(d_model=32, n_heads=2, window=8)
    >>> x, mask = torch.randn(2, 100, 32), torch.ones(2, 100, dtype=torch.bool)
    >>> attn(x, mask).shape
    torch.Size([2, 100, 32])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _positions(key_mask: torch.Tensor) -> torch.Tensor:
    """arange(T) derived from a tensor, so the legacy ONNX tracer keeps T dynamic (arange(int) is baked in)."""
    return torch.cumsum(torch.ones_like(key_mask[0], dtype=torch.long), dim=0) - 1


def _neg_inf(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).min  # finite, so a row with no valid key gives a uniform (then zeroed) row, not NaN


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor, window: int,
                     query_window: torch.Tensor | None = None, mem_k: torch.Tensor | None = None,
                     mem_v: torch.Tensor | None = None) -> torch.Tensor:
    """Causal sliding-window softmax attention.

    Args:
        q, k, v: [B, H, T, dh] (q already scaled).
        key_mask: [B, T] bool, True = real event.
        window: w; query t sees keys t-w+1 .. t.
        query_window: optional [B, T] int window per query (≤ w).
        mem_k, mem_v: optional [B, H, M, dh] always-visible memory keys / values.

    Returns: [B, H, T, dh]; rows of padded queries are whatever the masks give — callers zero them.
    """
    pos = _positions(key_mask)
    offs = torch.arange(window, device=q.device)
    idx = pos[:, None] + offs[None, :]  # index into the left-padded sequence: key position idx - (w-1)
    back = (window - 1) - offs  # how many steps before the query each band slot is (0 = itself)
    k_band = F.pad(k, (0, 0, window - 1, 0))[:, :, idx]  # [B, H, T, w, dh]
    v_band = F.pad(v, (0, 0, window - 1, 0))[:, :, idx]
    valid = F.pad(key_mask, (window - 1, 0), value=False)[:, idx]  # [B, T, w]; left padding is invalid
    if query_window is not None:
        valid = valid & (back[None, None, :] < query_window[:, :, None])
    scores = torch.einsum("bhtd,bhtwd->bhtw", q, k_band)
    scores = scores.masked_fill(~valid[:, None], _neg_inf(scores.dtype))
    if mem_k is None:
        return torch.einsum("bhtw,bhtwd->bhtd", torch.softmax(scores, dim=-1), v_band)
    m = mem_k.shape[2]
    probs = torch.softmax(torch.cat([torch.matmul(q, mem_k.transpose(-1, -2)), scores], dim=-1), dim=-1)
    return torch.matmul(probs[..., :m], mem_v) + torch.einsum("bhtw,bhtwd->bhtd", probs[..., m:], v_band)


def dense_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
                           window: int | None = None, query_window: torch.Tensor | None = None,
                           mem_k: torch.Tensor | None = None, mem_v: torch.Tensor | None = None) -> torch.Tensor:
    """Same contract as `banded_attention` over a full [T, T] score matrix; `window=None` = unlimited."""
    pos = _positions(key_mask)
    back = pos[:, None] - pos[None, :]  # query i, key j: steps back
    valid = (back >= 0)[None] & key_mask[:, None, :]  # [B, T, T]
    if window is not None:
        valid = valid & (back < window)[None]
    if query_window is not None:
        valid = valid & (back[None] < query_window[:, :, None])
    scores = torch.matmul(q, k.transpose(-1, -2)).masked_fill(~valid[:, None], _neg_inf(q.dtype))
    if mem_k is None:
        return torch.matmul(torch.softmax(scores, dim=-1), v)
    scores = torch.cat([torch.matmul(q, mem_k.transpose(-1, -2)), scores], dim=-1)
    return torch.matmul(torch.softmax(scores, dim=-1), torch.cat([mem_v, v], dim=2))


class WindowAttention(nn.Module):
    """Multi-head causal self-attention over a sliding window (`window=int`) or the full past (`None`)."""

    def __init__(self, d_model: int, n_heads: int, window: int | None, dropout: float = 0.0,
                 with_memory: bool = False) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} not divisible by n_heads={n_heads}")
        self.n_heads, self.d_head, self.window = n_heads, d_model // n_heads, window
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.mem_kv = nn.Linear(d_model, 2 * d_model, bias=False) if with_memory else None
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, d] -> [B, H, L, dh]
        return x.unflatten(-1, (self.n_heads, self.d_head)).transpose(1, 2)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, memory: torch.Tensor | None = None,
                query_window: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, d], key_mask [B, T] (True = real), memory [B, M, d] or None, query_window [B, T] or None."""
        q, k, v = (self._split(z) for z in self.qkv(x).chunk(3, dim=-1))
        q = q / math.sqrt(self.d_head)
        mem_k = mem_v = None
        if memory is not None:
            if self.mem_kv is None:
                raise ValueError("memory tokens passed to a WindowAttention built with with_memory=False")
            mem_k, mem_v = (self._split(z) for z in self.mem_kv(memory).chunk(2, dim=-1))
        if self.window is None:
            y = dense_causal_attention(q, k, v, key_mask, None, query_window, mem_k, mem_v)
        else:
            y = banded_attention(q, k, v, key_mask, self.window, query_window, mem_k, mem_v)
        y = self.out(y.transpose(1, 2).flatten(2)) * key_mask.unsqueeze(-1).to(x.dtype)
        return self.drop(y)
