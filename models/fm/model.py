"""`FoundationModel`: a Kunlun-style FM over a user's long event history, with CTR / CVR heads and the
Hidden-0 activations LoopFM extracts.

    history [B, T] ──EventEmbedding (per-type personalization)──► event tokens [B, T, d]
    candidate (target_sparse [B, F], target_dense [B, D]) ──► non-sequence tokens [B, F+1, d]
    CompSkipEncoder(event tokens, non-seq tokens) ──► states [B, T, d]
    readout: HSP(states) ──► summary [B, S', d];  target attention(candidate → states) ──► [B, d]
    Hidden-0 = GELU(W0 · [summary ; target view ; non-seq tokens ; log1p(n_events) ; has_history
                          (; interaction scalars, with `FMConfig.interaction` / `interaction_category`)] + b0)
    ctr_logit = tower_ctr(Hidden-0),  cvr_logit = tower_cvr(Hidden-0)

**Hidden-0** (what LoopFM compresses and caches) is precisely the post-GELU output of the first
hidden layer of the top network: the first layer whose input merges the history summary with the
candidate's features, before the layers split into task towers. Being the widest
history-and-target representation shared by both tasks, it is the layer LoopFM found to transfer
best. Width: `FMConfig.hidden_dim` (exposed as `model.hidden_dim`).

Every input is a tensor and forward has no data-dependent Python control flow (ONNX-friendly).

Example:
    >>> cfg = FMConfig(n_items=1000, n_categories=50, n_sparse=500, n_sparse_fields=3, dense_dim=4)
    >>> out = FoundationModel(cfg)(**batch)           # batch: the seven tensors of `forward`
    >>> out.ctr_logit.shape, out.hidden0.shape        # ([B], [B, 128])
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.fm.compskip import CompSkipEncoder
from models.fm.config import FMConfig
from models.fm.gdpa import gdpa
from models.fm.personalization import EventEmbedding
from models.fm.seed_pooling import HierarchicalSeedPooling

__all__ = ["FMConfig", "FMOutput", "FoundationModel"]


class FMOutput(NamedTuple):
    ctr_logit: torch.Tensor  # [B]
    cvr_logit: torch.Tensor  # [B] (post-click conversion; pCTCVR = σ(ctr) σ(cvr))
    hidden0: torch.Tensor  # [B, hidden_dim]


class TargetAttentionReadout(nn.Module):
    """Target-aware readout: the candidate (its non-sequence tokens) queries the final event states, GDPA-style.

    HSP's seeds are the same for every candidate, so they summarise the history in general; "has this
    user engaged with things like *this* ad, and how much" needs a candidate-dependent query. The
    weights are Act(q·k/τ), not a softmax: a softmax normalises the match strength away (one matching
    event and ten look the same), while un-normalised weights keep "how much of the history matches".
    The sum is divided by sqrt(1 + n_events) so long histories do not blow up the scale.
    """

    def __init__(self, d_model: int, n_heads: int, n_ns_tokens: int, activation: str = "silu") -> None:
        super().__init__()
        self.n_heads, self.d_head, self.activation = n_heads, d_model // n_heads, activation
        self.q = nn.Linear(n_ns_tokens * d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, states: torch.Tensor, mask: torch.Tensor, ns_tokens: torch.Tensor) -> torch.Tensor:
        """states [B, T, d], mask [B, T], ns_tokens [B, N, d] -> [B, d]."""
        q = self.q(ns_tokens.flatten(1)).unflatten(-1, (self.n_heads, self.d_head)).unsqueeze(2)  # [B, H, 1, dh]
        k, v = (z.unflatten(-1, (self.n_heads, self.d_head)).transpose(1, 2) for z in self.kv(states).chunk(2, -1))
        m = mask[:, None, :]  # [B, 1, T] -> broadcast over heads
        pooled = gdpa(q, k, v, math.sqrt(self.d_head), self.activation, m)  # [B, H, 1, dh]
        scale = torch.rsqrt(1.0 + mask.sum(1, keepdim=True).to(states.dtype))  # [B, 1]
        return self.out(pooled.flatten(1) * scale)


def _head_dots(a: torch.Tensor, b: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, H]: ⟨a, b⟩ over each head's slice of d, scaled by 1/sqrt(d_head) as an attention score is (an einsum:
    a matmul, counted by `models/fm/flops.py`)."""
    heads = (a.shape[0], n_heads, a.shape[-1] // n_heads)
    return torch.einsum("bhk,bhk->bh", a.reshape(heads), b.reshape(heads)) / math.sqrt(heads[-1])


def preference_scalars(candidate: torch.Tensor, history: torch.Tensor, hist_type: torch.Tensor,
                       hist_mask: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, H]: per head, ⟨mean of clicked − mean of unclicked history tokens, candidate⟩ / sqrt(d_head).

    candidate [B, d], history [B, T, d] (each history event's token in the candidate's space), hist_type
    [B, T] (0 impression, 1 click, 2 conversion: clicked = type > 0), hist_mask [B, T]. A history with no
    clicked (or no unclicked) event contributes a zero mean for that side; padded events are never read.
    Only the given history is read: the batcher's history holds events strictly before the example, with
    those past events' own outcomes, so nothing at or after t enters. No data-dependent control flow.
    """
    real = hist_mask.to(history.dtype)
    clicked = (hist_type > 0).to(history.dtype) * real
    unclicked = real - clicked
    weights = (clicked / clicked.sum(1, keepdim=True).clamp(min=1.0)
               - unclicked / unclicked.sum(1, keepdim=True).clamp(min=1.0))  # [B, T]
    preference = torch.einsum("bt,btd->bd", weights, history)  # clicked − unclicked mean
    return _head_dots(preference, candidate, n_heads)


def interaction_scalars(target_view: torch.Tensor, candidate: torch.Tensor, history: torch.Tensor,
                        hist_type: torch.Tensor, hist_mask: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, 2H]: per head h, ⟨target view, candidate⟩_h, then the H `preference_scalars` of the history.
    target_view [B, d], candidate [B, d] (the candidate ad's token); the rest as in `preference_scalars`."""
    return torch.cat([_head_dots(target_view, candidate, n_heads),
                      preference_scalars(candidate, history, hist_type, hist_mask, n_heads)], dim=1)


class FoundationModel(nn.Module):
    """Kunlun-style FM: personalized event tokens → CompSkip encoder → HSP readout → Hidden-0 → CTR/CVR towers."""

    def __init__(self, cfg: FMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.sparse = nn.Embedding(cfg.n_sparse, d)
        nn.init.normal_(self.sparse.weight, std=0.1)
        self.events = EventEmbedding(cfg, shared=self.sparse if cfg.shared_target_vocab else None)
        self.dense = nn.Linear(cfg.dense_dim, d)
        self.ns_norm = nn.LayerNorm(d)
        self.encoder = CompSkipEncoder(cfg)
        self.readout = HierarchicalSeedPooling(d, cfg.n_heads, cfg.n_seeds, cfg.n_summary, cfg.kron_rank)
        self.target_attention = TargetAttentionReadout(d, cfg.n_heads, cfg.n_ns_tokens, cfg.gdpa_activation)
        self.hidden0 = nn.Linear(cfg.hidden0_inputs, cfg.hidden_dim)
        self.ctr_tower = nn.Sequential(nn.Linear(cfg.hidden_dim, cfg.tower_dim), nn.GELU(), nn.Linear(cfg.tower_dim, 1))
        self.cvr_tower = nn.Sequential(nn.Linear(cfg.hidden_dim, cfg.tower_dim), nn.GELU(), nn.Linear(cfg.tower_dim, 1))

    @property
    def hidden_dim(self) -> int:
        return self.cfg.hidden_dim

    def non_sequence_tokens(self, target_sparse: torch.Tensor, target_dense: torch.Tensor) -> torch.Tensor:
        """[B, F+1, d]: one token per categorical field (shared vocab) plus one for the dense features."""
        tokens = torch.cat([self.sparse(target_sparse), self.dense(target_dense).unsqueeze(1)], dim=1)
        return self.ns_norm(tokens)

    def interactions(self, target_view: torch.Tensor, ns: torch.Tensor, hist_item: torch.Tensor,
                     hist_category: torch.Tensor, hist_type: torch.Tensor, hist_mask: torch.Tensor) -> torch.Tensor:
        """[B, n_interactions]: `interaction_scalars` (with `interaction`), then the category
        `preference_scalars` (with `interaction_category`). The candidate and the history's ads (categories)
        are all read as non-sequence tokens (the shared table, then the same LayerNorm), so a clicked ad in
        the history and the same ad as the candidate are one vector of unit-scale components."""
        cfg, parts = self.cfg, []
        if cfg.interaction:
            history = self.ns_norm(self.sparse(hist_item))
            parts.append(interaction_scalars(target_view, ns[:, cfg.item_field], history, hist_type, hist_mask,
                                             cfg.n_heads))
        if cfg.interaction_category:
            history = self.ns_norm(self.sparse(hist_category))
            parts.append(preference_scalars(ns[:, cfg.category_field], history, hist_type, hist_mask, cfg.n_heads))
        return torch.cat(parts, dim=1)

    def encode_history(self, hist_item: torch.Tensor, hist_category: torch.Tensor, hist_type: torch.Tensor,
                       hist_age: torch.Tensor, hist_mask: torch.Tensor, target_sparse: torch.Tensor,
                       target_dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-event states [B, T, d] (in the input's order, zero at padding), the non-sequence tokens
        [B, N, d] and the readout summary [B, S', d]. States are target-aware (GDPA sees the candidate)."""
        x_in = (hist_item, hist_category, hist_type, hist_age, hist_mask)
        if self.cfg.newest_first:  # run chronologically so the causal window looks at older events
            x_in = tuple(torch.flip(t, dims=[1]) for t in x_in)
        item, category, etype, age, mask = x_in
        ns = self.non_sequence_tokens(target_sparse, target_dense)
        states, _ = self.encoder(self.events(item, category, etype, age, mask), mask, ns, etype)
        summary = self.readout(states, mask)
        if self.cfg.newest_first:
            states = torch.flip(states, dims=[1])
        return states, ns, summary

    def forward(self, hist_item: torch.Tensor, hist_category: torch.Tensor, hist_type: torch.Tensor,
                hist_age: torch.Tensor, hist_mask: torch.Tensor, target_sparse: torch.Tensor,
                target_dense: torch.Tensor) -> FMOutput:
        """hist_* [B, T] (item / category / type int64, age float32 log1p hours, mask bool True = real),
        target_sparse int64 [B, F], target_dense float32 [B, D] -> FMOutput."""
        states, ns, summary = self.encode_history(hist_item, hist_category, hist_type, hist_age, hist_mask,
                                                  target_sparse, target_dense)
        target_view = self.target_attention(states, hist_mask, ns)
        count = hist_mask.sum(dim=1, keepdim=True).to(summary.dtype)
        parts = [summary.flatten(1), target_view, ns.flatten(1), torch.log1p(count), (count > 0).to(count.dtype)]
        if self.cfg.n_interactions:  # config switches, fixed at construction: no data-dependent branch
            parts.append(self.interactions(target_view, ns, hist_item, hist_category, hist_type, hist_mask))
        h0 = F.gelu(self.hidden0(torch.cat(parts, dim=1)))
        return FMOutput(self.ctr_tower(h0).squeeze(-1), self.cvr_tower(h0).squeeze(-1), h0)
