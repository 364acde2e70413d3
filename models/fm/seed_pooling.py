"""Hierarchical seed pooling (HSP): a fixed-size summary of a variable-length history.

Step 1 — S learnable seed queries attend (softmax, masked) over the event sequence: O(T·S), so
the summary costs linear time, and every seed can specialise (recent clicks, a category, ...).
Step 2 — `SumKronLinear` compresses the S seed tokens of width d into S' tokens of width d':

    y = Σ_k (A_k ⊗ B_k) vec(X),   computed as   Y = Σ_k A_k X B_kᵀ,

a structured [S'·d', S·d] linear map with K·(S'·S + d'·d) parameters instead of S'·d'·S·d, that
mixes across seeds (A_k) and across features (B_k) without ever forming the Kronecker product.
(vec is row-major: vec(A X Bᵀ) = (A ⊗ B) vec(X) for X flattened row by row.)

Example:
    >>> hsp = HierarchicalSeedPooling(d_model=32, n_heads=2, n_seeds=8, n_out=4)
    >>> hsp(torch.randn(2, 100, 32), torch.ones(2, 100, dtype=torch.bool)).shape
    torch.Size([2, 4, 32])
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SumKronLinear(nn.Module):
    """Y = Σ_k A_k X B_kᵀ + bias, X [..., S, d] -> Y [..., S', d'] (= Σ_k (A_k ⊗ B_k) vec(X))."""

    def __init__(self, n_in: int, d_in: int, n_out: int, d_out: int, rank: int = 2) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(rank, n_out, n_in) / math.sqrt(n_in * rank))
        self.b = nn.Parameter(torch.randn(rank, d_out, d_in) / math.sqrt(d_in))
        self.bias = nn.Parameter(torch.zeros(n_out, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Σ_k A_k (X B_kᵀ): first mix features per seed, then seeds, both as small batched matmuls.
        xb = torch.einsum("...sd,ked->...kse", x, self.b)  # [..., K, S, d']
        return torch.einsum("kos,...kse->...oe", self.a, xb) + self.bias

    def explicit_matrix(self) -> torch.Tensor:
        """The [S'·d', S·d] matrix Σ_k A_k ⊗ B_k (tests and FLOP accounting only; never used in forward)."""
        return sum(torch.kron(self.a[k], self.b[k]) for k in range(self.a.shape[0]))


class SeedAttention(nn.Module):
    """S learnable seeds attend over the sequence with masked softmax; an empty history gives the bare seeds."""

    def __init__(self, d_model: int, n_heads: int, n_seeds: int) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.seeds = nn.Parameter(torch.randn(n_seeds, d_model) * 0.02)
        self.norm = nn.LayerNorm(d_model)
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, d], mask [B, T] -> seed tokens [B, S, d]."""
        b = x.shape[0]
        q = self.q(self.seeds).unflatten(-1, (self.n_heads, self.d_head)).transpose(0, 1)  # [H, S, dh]
        k, v = (z.unflatten(-1, (self.n_heads, self.d_head)).transpose(1, 2)
                for z in self.kv(self.norm(x)).chunk(2, dim=-1))  # [B, H, T, dh]
        scores = torch.matmul(q / math.sqrt(self.d_head), k.transpose(-1, -2))  # [B, H, S, T]
        m = mask[:, None, None, :]
        scores = scores.masked_fill(~m, torch.finfo(scores.dtype).min)
        # Zero padded weights after the softmax: identical for real rows, and an all-padding row becomes
        # all-zero (no NaN, no attention to padding) — no data-dependent branch needed.
        probs = torch.softmax(scores, dim=-1) * m.to(scores.dtype)
        pooled = torch.matmul(probs, v).transpose(1, 2).flatten(2)  # [B, S, d]
        return self.seeds.expand(b, -1, -1) + self.out(pooled)


class HierarchicalSeedPooling(nn.Module):
    """Seeds attend over the sequence, then SumKronLinear compresses S seed tokens into S' summary tokens."""

    def __init__(self, d_model: int, n_heads: int = 1, n_seeds: int = 8, n_out: int = 4, rank: int = 2) -> None:
        super().__init__()
        self.seed_attention = SeedAttention(d_model, n_heads, n_seeds)
        self.compress = SumKronLinear(n_seeds, d_model, n_out, d_model, rank)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, d], mask [B, T] -> summary tokens [B, S', d]."""
        return self.norm(self.compress(self.seed_attention(x, mask)))
