"""Inference backends: where an assembled feature batch is turned into probabilities."""

from serving.backends.base import InferenceBackend, InferenceResult, ModelHandle

__all__ = ["InferenceBackend", "InferenceResult", "ModelHandle"]
