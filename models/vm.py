"""The vertical model (VM): a small DCNv2-style multi-task ranker (pCTR and pCVR).

Why this shape: DCNv2 cross layers learn bounded-degree feature crosses cheaply, which is what
small serving models in ads rely on. pCVR is trained ESMM-style (pCTCVR = pCTR × pCVR supervised on
every impression), so pCVR learns from the whole impression space rather than only clicked rows.

The exported graph takes the tensors `models.features.assemble` builds and returns probabilities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.features import FeatureSpec


@dataclass(frozen=True, kw_only=True)
class VMConfig:
    embed_dim: int = 12
    cross_layers: int = 2
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VMConfig:
        return cls(embed_dim=int(d["embed_dim"]), cross_layers=int(d["cross_layers"]), hidden=tuple(d["hidden"]),
                   dropout=float(d["dropout"]))


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

    def trunk(self, sparse: torch.Tensor, recent: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        fields = self.embedding(sparse).flatten(1)
        mask = (recent != self.recent_pad).unsqueeze(-1).to(fields.dtype)
        bag = (self.embedding(recent) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        x0 = torch.cat([fields, bag, dense], dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.bottom(x)

    def logits(self, sparse: torch.Tensor, recent: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(sparse, recent, dense)
        return self.ctr_head(h).squeeze(-1), self.cvr_head(h).squeeze(-1)

    def forward(self, sparse: torch.Tensor, recent: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctr_logit, cvr_logit = self.logits(sparse, recent, dense)
        return torch.sigmoid(ctr_logit), torch.sigmoid(cvr_logit)
