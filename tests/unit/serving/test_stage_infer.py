"""infer: ModelInputs → Scores, one backend call, the backend's name kept for served_by."""

from __future__ import annotations

import asyncio

import numpy as np
import serving_fakes as fakes

from serving.pipeline import ModelInputs, RequestContext
from serving.pipeline.infer import InferStage


def test_one_backend_call_with_the_tensors_and_its_name():
    backend, handle = fakes.FakeBackend(), fakes.handle()
    tensors = {"sparse": np.zeros((2, 8), np.int64), "dense": np.array([[0.0], [1.0]], np.float32)}
    scores = asyncio.run(InferStage(backend)(ModelInputs(None, handle, tensors), RequestContext.begin()))
    assert backend.calls == [(handle, tensors)]
    assert scores.backend == "fake" and scores.handle is handle and scores.p_ctr.shape == (2,)
    np.testing.assert_array_equal(scores.p_ctr, fakes.scores(tensors)[0])
