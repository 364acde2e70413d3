"""Event-level personalization: an impression, a click and a conversion of the same ad mean different
things, so each event type gets its own embedding, its own feature scaling, its own adapter width and
(optionally, see `FMConfig.type_windows`) its own attention window.

Everything is selected by gathering rows of small per-type tables with `hist_type` — no per-type
Python branching, one matmul pair for all types together:

* `TypedAdapter`: y = (x + U(act(D x) ⊙ m_type)) ⊙ (1 + g_type). The hidden units of D are split
  into per-type blocks of widths `type_widths`; the mask m_type keeps only the event's own block, so
  a conversion gets a wider (more expressive) adapter than an impression at the cost of Σ widths
  units per event, and g_type scales the projected token per type.
* `EventEmbedding`: item + category + type embeddings + a projection of the event's age, then the
  typed adapter.

Example:
    >>> emb = EventEmbedding(FMConfig(n_items=50, n_categories=5))
    >>> x = emb(item, category, etype, age, mask)   # each input [B, T] -> [B, T, d_model]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.fm.config import FMConfig

AGE_SCALE = 9.1  # log1p(hours in a year): ages beyond a year saturate gently, not explosively


class TypedAdapter(nn.Module):
    """Per-event-type residual adapter with type-specific hidden widths and an output scale."""

    def __init__(self, d_model: int, type_widths: tuple[int, ...]) -> None:
        super().__init__()
        total = sum(type_widths)
        self.down = nn.Linear(d_model, total)
        self.up = nn.Linear(total, d_model)
        nn.init.zeros_(self.up.weight)  # starts as the identity; types diverge as they learn
        nn.init.zeros_(self.up.bias)
        unit_mask = torch.zeros(len(type_widths), total)
        start = 0
        for c, w in enumerate(type_widths):
            unit_mask[c, start:start + w] = 1.0
            start += w
        self.register_buffer("unit_mask", unit_mask, persistent=False)
        self.gate = nn.Embedding(len(type_widths), d_model)
        nn.init.zeros_(self.gate.weight)

    def forward(self, x: torch.Tensor, event_type: torch.Tensor) -> torch.Tensor:
        """x [B, T, d], event_type [B, T] int64 in [0, n_types)."""
        h = F.gelu(self.down(x)) * self.unit_mask[event_type]
        return (x + self.up(h)) * (1.0 + self.gate(event_type))


class EventEmbedding(nn.Module):
    """Turns the raw history tensors into event tokens [B, T, d]; padded events become zero vectors."""

    def __init__(self, cfg: FMConfig, shared: nn.Embedding | None = None) -> None:
        super().__init__()
        d = cfg.d_model
        if shared is not None:  # items and categories index the target's table (see FMConfig)
            self.item = self.category = shared
        else:
            self.item = nn.Embedding(cfg.n_items, d, padding_idx=0)
            self.category = nn.Embedding(cfg.n_categories, d, padding_idx=0)
        self.event_type = nn.Embedding(cfg.n_event_types, d)
        self.age = nn.Linear(2, d)
        self.norm = nn.LayerNorm(d)
        self.adapter = TypedAdapter(d, cfg.type_widths)
        own = [self.event_type] if shared is not None else [self.item, self.category, self.event_type]
        nn.init.normal_(self.age.weight, std=0.1)  # recency starts as one feature among equals
        nn.init.zeros_(self.age.bias)
        for emb in own:  # a list, not a set: initialization order must be reproducible
            nn.init.normal_(emb.weight, std=0.1)
            if emb.padding_idx is not None:
                with torch.no_grad():
                    emb.weight[emb.padding_idx].zero_()

    def forward(self, item: torch.Tensor, category: torch.Tensor, event_type: torch.Tensor, age: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        # age is log1p(hours); its square lets a linear layer bend recency (hours vs weeks) cheaply. Scaled
        # to ~[0, 1] first: unscaled, the squared term (up to ~50) swamps the 0.1-scale id embeddings in
        # the LayerNorm below and the FM cannot tell which ad or category an event was about.
        a = age / AGE_SCALE
        age_feat = self.age(torch.stack([a, a * a], dim=-1))
        x = self.norm(self.item(item) + self.category(category) + self.event_type(event_type) + age_feat)
        return self.adapter(x, event_type) * mask.unsqueeze(-1).to(x.dtype)


def type_query_window(event_type: torch.Tensor, type_windows: tuple[int, ...]) -> torch.Tensor:
    """[B, T] per-event window sizes looked up from the per-type table (a Gather in ONNX)."""
    table = torch.tensor(type_windows, dtype=torch.long, device=event_type.device)
    return table[event_type]
