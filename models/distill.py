"""Knowledge distillation from the FM (ExFM).

* Single-head KD: the serving head learns label + λ·soft-label loss against the FM's prediction.
* Auxiliary head (ExFM): the serving head learns from labels only; a separate distillation head
  learns w·h(ŷ_D, α·ŷ_F) and sends only β of its gradient into the shared trunk, so FM errors or
  staleness cannot pull the serving head directly.
* Student adapter (ExFM): a tiny MLP maps the FM logit to the fresh label and is fitted first at
  every step; the VM distils from stopgrad(adapter(ŷ_F)), which corrects a stale or mis-calibrated FM.

FM predictions come from the DAS log: computed once per unique example, reused by every VM run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    mode: str = "none"  # "none" | "single" | "aux"
    weight: float = 1.0  # λ (single) or w (aux)
    label_scale: float = 1.0  # α
    grad_scale: float = 0.5  # β: share of the aux head's gradient that reaches the trunk
    adapter: bool = False


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: ANN001
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by `scale` on the way back."""
    return _ScaleGrad.apply(x, scale)


class StudentAdapter(nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        with torch.no_grad():  # start as the identity on the logit
            self.net[0].weight.normal_(0, 0.1)
            self.net[2].weight.zero_()
            self.net[2].bias.zero_()

    def forward(self, fm_logit: torch.Tensor) -> torch.Tensor:
        return fm_logit + self.net(fm_logit.unsqueeze(-1)).squeeze(-1)


def soft_bce(logit: torch.Tensor, target_prob: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logit, target_prob.clamp(0.0, 1.0))
