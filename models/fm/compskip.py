"""CompSkip encoder: a stack alternating *global* and *local* layers over the event sequence.

    global layer:  x += SeqAttn(x)                        (window w, or full causal if not windowed)
                   s  = HSP(x)                            fresh summary, [B, S', d]
                   x += GDPA(x, [non-seq tokens ; s])     every event meets the candidate + whole history
                   x += FFN(x)
    local layer:   x += SeqAttn(x, memory = s)            window over neighbours + the *previous* summary
                   x += FFN(x)

Why: the global parts (HSP over all T events, GDPA against the context) are what lets an event see
the candidate and the rest of a long history; recomputing them every layer is the expensive,
redundant part. Skipping them on alternate layers and reusing the last summary as extra keys of
the cheap window attention keeps that view at a fraction of the cost (Kunlun reports −43% FLOPs,
NE flat). With `windowed=True` every term is O(T·w) or O(T·S), so cost is linear in T.

Ablation switches (FMConfig): `compskip=False` makes every layer global; `windowed=False` replaces
the window by full causal attention. Layer kinds are fixed at construction, so forward has no
data-dependent control flow.

Example:
    >>> enc = CompSkipEncoder(FMConfig())
    >>> states, summary = enc(x, mask, ns_tokens, event_type)  # [B, T, d], [B, S', d]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.fm.config import FMConfig
from models.fm.gdpa import GDPABlock
from models.fm.personalization import type_query_window
from models.fm.seed_pooling import HierarchicalSeedPooling
from models.fm.window_attention import WindowAttention


class FeedForward(nn.Module):
    """Pre-LN residual position-wise FFN; padded events stay unchanged."""

    def __init__(self, d_model: int, mult: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.up = nn.Linear(d_model, mult * d_model)
        self.down = nn.Linear(mult * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.down(F.gelu(self.up(self.norm(x)))))
        return x + y * mask.unsqueeze(-1).to(y.dtype)


class CompSkipLayer(nn.Module):
    """One encoder layer; `kind` ('global' | 'local') decides which sub-blocks exist."""

    def __init__(self, cfg: FMConfig, kind: str) -> None:
        super().__init__()
        if kind not in ("global", "local"):
            raise ValueError(f"kind must be global|local, got {kind!r}")
        self.kind = kind
        self.attn_norm = nn.LayerNorm(cfg.d_model)
        self.attn = WindowAttention(cfg.d_model, cfg.n_heads, cfg.max_window if cfg.windowed else None, cfg.dropout,
                                    with_memory=kind == "local")
        if kind == "global":
            self.hsp = HierarchicalSeedPooling(cfg.d_model, cfg.n_heads, cfg.n_seeds, cfg.n_summary, cfg.kron_rank)
            self.gdpa = GDPABlock(cfg.d_model, cfg.n_heads, cfg.gdpa_activation, cfg.dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_mult, cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, ns_tokens: torch.Tensor, summary: torch.Tensor | None,
                query_window: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, d], mask [B, T], ns_tokens [B, N, d], summary [B, S', d] (None before the first global layer)."""
        if self.kind == "global":
            x = x + self.attn(self.attn_norm(x), mask, None, query_window)
            summary = self.hsp(x, mask)
            x = self.gdpa(x, torch.cat([ns_tokens, summary], dim=1), x_mask=mask)
        else:
            if summary is None:
                raise ValueError("a local layer needs the summary of an earlier global layer")
            x = x + self.attn(self.attn_norm(x), mask, summary, query_window)
        return self.ffn(x, mask), summary


class CompSkipEncoder(nn.Module):
    """The layer stack; returns final event states [B, T, d] and the last HSP summary [B, S', d]."""

    def __init__(self, cfg: FMConfig) -> None:
        super().__init__()
        kinds = cfg.layer_kinds()
        if kinds[0] != "global":
            raise ValueError("layer 0 must be global (local layers reuse its summary)")
        self.cfg = cfg
        self.layers = nn.ModuleList(CompSkipLayer(cfg, k) for k in kinds)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, ns_tokens: torch.Tensor,
                event_type: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        query_window = None
        if self.cfg.type_windows and self.cfg.windowed:
            query_window = type_query_window(event_type, self.cfg.type_windows)
        summary: torch.Tensor | None = None
        for layer in self.layers:
            x, summary = layer(x, mask, ns_tokens, summary, query_window)
        assert summary is not None  # layer 0 is global
        return self.norm(x) * mask.unsqueeze(-1).to(x.dtype), summary
