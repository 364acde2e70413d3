"""The contract every inference backend fulfils.

The service resolves a (name, version pin) to a `ModelHandle` first — that is where NOT_FOUND comes
from — then builds features with the handle's feature spec and calls `infer` once per request.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from exporters.manifest import ModelManifest
from models.features import FeatureSpec


@dataclass(frozen=True)
class ModelHandle:
    name: str
    version: int
    manifest: ModelManifest
    feature_spec: FeatureSpec

    @property
    def fm_version(self) -> str:
        return self.manifest.fm_version


@dataclass(frozen=True)
class InferenceResult:
    p_ctr: np.ndarray  # float32 [B]
    p_cvr: np.ndarray  # float32 [B]


class InferenceBackend(abc.ABC):
    """`resolve` is cheap and synchronous; `infer` is awaited once per request."""

    name: str = "abstract"

    @abc.abstractmethod
    def resolve(self, model_name: str, version: int | None) -> ModelHandle:
        """The handle for a pinned version, or the serving (newest loaded) version when None.
        Raises ModelNotFound naming what exists."""

    @abc.abstractmethod
    async def infer(self, handle: ModelHandle, inputs: dict[str, np.ndarray]) -> InferenceResult:
        """Runs the model once on the assembled batch."""

    @abc.abstractmethod
    def models(self) -> dict[str, list[int]]:
        """Loaded versions per model name."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connects / loads; called once before serving."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases sessions and channels."""
