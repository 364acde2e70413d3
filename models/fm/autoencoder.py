"""LoopFM compression: Hidden-0 [H] → a short tanh code z [d] that every Matryoshka prefix can decode,
stored by the embedding cache's codecs.

* `CodeAutoencoder`: MLP encoder ending in tanh (codes lie in (−1, 1), so a fixed quantization grid
  fits every code without per-row scales), linear decoder.
* `matryoshka_loss`: Σ_d' ‖e − dec(z[:d'] zero-padded)‖² (mean over the batch), so a consumer may keep
  only the first 4, 8, 16 … dims. The input is detached here — stop-gradient into the FM is part of
  the method, not something each caller must remember.
* Storage: the codes are quantized by the embedding cache's codecs (`embedding_cache.codecs`, int4 is
  LoopFM's round(8z).clamp(−8, 7) / 8), the one place that rule lives; this module stays float.

Example:
    >>> ae = CodeAutoencoder(in_dim=128, code_dim=32)
    >>> loss = matryoshka_loss(out.hidden0, ae, prefixes=(4, 8, 16, 32))
    >>> codec = make_codec("int4", dim=32)  # from embedding_cache
    >>> stored = codec.decode(*codec.encode(ae.encode(out.hidden0).detach().numpy()))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CodeAutoencoder(nn.Module):
    """Encoder in_dim → hidden → code_dim (tanh); decoder code_dim → in_dim (linear)."""

    def __init__(self, in_dim: int, code_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(in_dim, 2 * code_dim)
        self.in_dim, self.code_dim = in_dim, code_dim
        self.enc1 = nn.Linear(in_dim, hidden)
        self.enc2 = nn.Linear(hidden, code_dim)
        self.dec = nn.Linear(code_dim, in_dim)

    def encode(self, e: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.enc2(F.gelu(self.enc1(e))))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decode a code or a prefix of one (shorter codes are zero-padded to code_dim)."""
        if z.shape[-1] < self.code_dim:
            z = F.pad(z, (0, self.code_dim - z.shape[-1]))
        return self.dec(z)

    def forward(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(e)
        return z, self.decode(z)


def prefix_errors(e: torch.Tensor, ae: CodeAutoencoder, prefixes: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Mean over the batch of ‖e − dec(z[:d'])‖² for each prefix d' (e is detached: stop-gradient)."""
    bad = [p for p in prefixes if not 0 < p <= ae.code_dim]
    if bad:
        raise ValueError(f"prefixes {bad} outside (0, code_dim={ae.code_dim}]")
    e = e.detach()
    z = ae.encode(e)
    return {p: (e - ae.decode(z[..., :p])).pow(2).sum(-1).mean() for p in prefixes}


def matryoshka_loss(e: torch.Tensor, ae: CodeAutoencoder, prefixes: tuple[int, ...] = (4, 8, 16, 32)) -> torch.Tensor:
    """Σ over prefixes d' of the mean squared reconstruction error from z[:d'] (zero-padded)."""
    return torch.stack(list(prefix_errors(e, ae, prefixes).values())).sum()
