"""LoopFM on the VM side: pooling a user's historical FM codes into features.

The user's codes arrive once per user, not once per candidate: `fm_history` is [U, L, d] with a
mask [U, L], and `user_index` [B] says which user each candidate row belongs to. A ranking request
has U = 1 and B = candidates, so the history crosses the wire (and Triton) once per request.

Two poolers (LoopFM reports that sum pooling captures most of the gain; target attention is the
DIN-style alternative):

* `SumPooling`: masked mean of the codes (a sum normalized by length, so users with long and short
  histories share one scale) plus log1p(length) and a has-history bit;
* `TargetAttention`: per candidate, softmax over the user's codes of (code · W q(candidate)).

Both return zeros plus has_history = 0 for a user without history, which is what FM-history dropout
trains the VM to handle.
"""

from __future__ import annotations

import torch
from torch import nn


def _mask_stats(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    count = mask.sum(1, keepdim=True)
    return count, (count > 0).to(mask.dtype)


class SumPooling(nn.Module):
    def __init__(self, code_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(code_dim + 2, out_dim)

    def forward(self, history: torch.Tensor, mask: torch.Tensor, user_index: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        count, has = _mask_stats(mask)
        pooled = (history * mask.unsqueeze(-1)).sum(1) / count.clamp(min=1.0)
        user = torch.cat([pooled, torch.log1p(count), has], dim=1)  # [U, d + 2]
        return self.proj(user)[user_index]


class TargetAttention(nn.Module):
    def __init__(self, code_dim: int, target_dim: int, out_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(target_dim, code_dim)
        self.proj = nn.Linear(code_dim + 2, out_dim)
        self.scale = code_dim ** -0.5

    def forward(self, history: torch.Tensor, mask: torch.Tensor, user_index: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        h = history[user_index]  # [B, L, d]
        m = mask[user_index]  # [B, L]
        scores = torch.einsum("bld,bd->bl", h, self.query(target)) * self.scale
        scores = scores.masked_fill(m <= 0, -1e4)
        weights = torch.softmax(scores, dim=1) * m  # rows without history → all zeros
        pooled = torch.einsum("bl,bld->bd", weights, h)
        count, has = _mask_stats(m)
        return self.proj(torch.cat([pooled, torch.log1p(count), has], dim=1))


def make_pooling(kind: str, code_dim: int, target_dim: int, out_dim: int) -> nn.Module:
    if kind == "sum":
        return SumPooling(code_dim, out_dim)
    if kind == "attention":
        return TargetAttention(code_dim, target_dim, out_dim)
    raise ValueError(f"history pooling must be 'sum' or 'attention', got {kind!r}")


def drop_history(mask: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """FM-history dropout: hides a user's whole history with probability `rate` during training, so
    the VM learns to score users the cache has nothing for (cold start, cache miss)."""
    if rate <= 0:
        return mask
    keep = (torch.rand(mask.shape[0], 1, generator=generator) >= rate).to(mask.dtype)
    return mask * keep
