"""The vertical model (VM): a small DCNv2-style multi-task ranker (pCTR and pCVR).

Why this shape: DCNv2 cross layers learn bounded-degree feature crosses cheaply, which is what
small serving models in ads rely on. pCVR is trained ESMM-style (pCTCVR = pCTR × pCVR supervised on
every impression), so pCVR learns from the whole impression space rather than only clicked rows.

The exported graph takes the tensors `models.features.assemble` builds (plus, for LoopFM variants,
the user's FM code history from the embedding cache) and returns probabilities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.features import SPARSE_FIELDS, FeatureSpec
from models.history import HISTORY_INPUTS
from models.loopfm import make_pooling

BASE_INPUTS = ("sparse", "recent", "dense")


@dataclass(frozen=True, kw_only=True)
class VMConfig:
    embed_dim: int = 12
    cross_layers: int = 2
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.0
    history_dim: int = 0  # LoopFM code width; 0 = no FM history input
    history_len: int = 32  # codes per user the VM reads (L)
    history_pooling: str = "sum"  # "sum" | "attention"
    history_dropout: float = 0.1  # training-time probability of hiding a user's whole history
    aux_head: bool = False  # ExFM distillation head (trained, not exported)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VMConfig:
        return cls(**{**d, "hidden": tuple(d["hidden"])})

    @property
    def input_names(self) -> tuple[str, ...]:
        return BASE_INPUTS + (HISTORY_INPUTS if self.history_dim else ())


class CrossLayer(nn.Module):
    """DCNv2 cross: x_{l+1} = x0 ⊙ (W x_l + b) + x_l."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class VerticalModel(nn.Module):
    """Inputs: sparse int64 [B, F], recent int64 [B, K], dense float32 [B, D]. Output: (p_ctr, p_cvr) [B]."""

    def __init__(self, spec: FeatureSpec, config: VMConfig = VMConfig()) -> None:
        super().__init__()
        self.spec, self.config = spec, config
        e = config.embed_dim
        self.embedding = nn.Embedding(spec.vocab_size, e)
        nn.init.normal_(self.embedding.weight, std=0.05)
        self.recent_pad = spec.recent_offset + spec.n_categories
        width = (spec.n_fields + 1) * e + spec.dense_width
        self.history = None
        if config.history_dim:
            self.history = make_pooling(config.history_pooling, config.history_dim, 2 * e, 2 * e)
            width += 2 * e
        self._ad_col, self._cat_col = SPARSE_FIELDS.index("ad_id"), SPARSE_FIELDS.index("category")
        self.cross = nn.ModuleList(CrossLayer(width) for _ in range(config.cross_layers))
        layers: list[nn.Module] = []
        prev = width
        for h in config.hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
            prev = h
        self.bottom = nn.Sequential(*layers)
        self.ctr_head = nn.Linear(prev, 1)
        self.cvr_head = nn.Linear(prev, 1)
        self.kd_head = nn.Linear(prev, 1) if config.aux_head else None

    def trunk(self, sparse: torch.Tensor, recent: torch.Tensor, dense: torch.Tensor,
              fm_history: torch.Tensor | None = None, fm_history_mask: torch.Tensor | None = None,
              user_index: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embedding(sparse)
        fields = emb.flatten(1)
        mask = (recent != self.recent_pad).unsqueeze(-1).to(fields.dtype)
        bag = (self.embedding(recent) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        parts = [fields, bag, dense]
        if self.history is not None:
            if fm_history is None or fm_history_mask is None or user_index is None:
                raise ValueError("this VM reads FM history: pass fm_history, fm_history_mask and user_index")
            target = torch.cat([emb[:, self._ad_col], emb[:, self._cat_col]], dim=1)
            parts.append(self.history(fm_history, fm_history_mask, user_index, target))
        x0 = torch.cat(parts, dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.bottom(x)

    def logits(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(*inputs)
        return self.ctr_head(h).squeeze(-1), self.cvr_head(h).squeeze(-1)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs in `config.input_names` order; returns (p_ctr, p_cvr)."""
        ctr_logit, cvr_logit = self.logits(*inputs)
        return torch.sigmoid(ctr_logit), torch.sigmoid(cvr_logit)
