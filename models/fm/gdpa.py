"""GDPA: generalized dot-product attention, Act(Q Kᵀ / τ) V with an element-wise activation.

Why not softmax: queries come from the (long) event sequence and keys / values from a handful of
non-sequence tokens (the candidate's features, HSP summary tokens). Softmax over ~5-10 keys forces
each event to split one unit of attention among them; an element-wise GELU/SiLU lets an event
respond to several context tokens at once, or to none. With keys and values built from the user's
and candidate's features, the block *is* a personalized FFN:

    Act(x Wq Kᵀ / τ) V  ==  Act(x W1) W2   with   W1 = Wq Kᵀ / τ,  W2 = V,

a 2-layer FFN whose weights are generated per example from its non-sequence features (tested in
`test_fm_gdpa.py`). Multi-head GDPA runs H such FFNs of width N side by side.

Example:
    >>> block = GDPABlock(d_model=32, n_heads=2)
    >>> y = block(torch.randn(4, 50, 32), ctx=torch.randn(4, 6, 32))   # [4, 50, 32]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu}


def gdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tau: float, activation: str = "silu",
         ctx_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Act(q kᵀ / τ) v over the last two dims; q [..., T, dh], k / v [..., N, dh], ctx_mask [..., N] (True = real).

    Masked context tokens contribute nothing (their activated score is zeroed, not -inf'd: there is
    no normalisation to protect).
    """
    scores = _ACTIVATIONS[activation](torch.matmul(q, k.transpose(-1, -2)) / tau)
    if ctx_mask is not None:
        scores = scores * ctx_mask.unsqueeze(-2).to(scores.dtype)
    return torch.matmul(scores, v)


class GDPA(nn.Module):
    """Multi-head GDPA: sequence queries [B, T, d] against context tokens [B, N, d].

    τ defaults to sqrt(d_head), as in dot-product attention; the output is also divided by the number
    of context tokens N, so its scale does not grow with N (softmax used to do that normalisation).
    """

    def __init__(self, d_model: int, n_heads: int = 1, activation: str = "silu", tau: float | None = None,
                 out_proj: bool = True) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} not divisible by n_heads={n_heads}")
        self.n_heads, self.d_head, self.activation = n_heads, d_model // n_heads, activation
        self.tau = tau if tau is not None else math.sqrt(self.d_head)
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model) if out_proj else nn.Identity()

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, d] -> [B, H, L, dh]
        return x.unflatten(-1, (self.n_heads, self.d_head)).transpose(1, 2)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(ctx)), self._split(self.v(ctx))
        m = None if ctx_mask is None else ctx_mask[:, None, :]
        y = gdpa(q, k, v, self.tau, self.activation, m) / ctx.shape[1]
        return self.out(y.transpose(1, 2).flatten(2))


class GDPABlock(nn.Module):
    """Pre-LN residual GDPA: x + GDPA(LN(x), LN(ctx)), padded events left unchanged. Stack freely."""

    def __init__(self, d_model: int, n_heads: int = 1, activation: str = "silu", dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_x = nn.LayerNorm(d_model)
        self.norm_ctx = nn.LayerNorm(d_model)
        self.attn = GDPA(d_model, n_heads, activation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, x_mask: torch.Tensor | None = None,
                ctx_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.drop(self.attn(self.norm_x(x), self.norm_ctx(ctx), ctx_mask))
        if x_mask is not None:
            y = y * x_mask.unsqueeze(-1).to(y.dtype)
        return x + y
