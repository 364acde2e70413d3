"""Kunlun-style foundation model (FM) over long user event histories, plus LoopFM code compression.

Modules: `config` (FMConfig), `gdpa`, `window_attention`, `seed_pooling` (HSP, SumKronLinear),
`personalization` (event-type embeddings / adapters / windows), `compskip` (the encoder),
`model` (FoundationModel), `flops` (analytic cost per component), `autoencoder` (LoopFM codes).
"""

from models.fm.config import FMConfig
from models.fm.model import FMOutput, FoundationModel

__all__ = ["FMConfig", "FMOutput", "FoundationModel"]
