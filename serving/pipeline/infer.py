"""Stage 6, infer: ModelInputs → Scores. One backend call per request.

The backend (embedded onnxruntime or Triton) translates its runtime's errors into the typed ones of
serving.errors, so this stage adds none. A fallback backend or a shadow scorer is another InferStage,
or a wrapper around this one (`Pipeline.wrap("infer", …)`), reporting its own name in `Scores.backend`.
"""

from __future__ import annotations

from serving.backends.base import InferenceBackend
from serving.pipeline.context import RequestContext
from serving.pipeline.values import ModelInputs, Scores


class InferStage:
    """ModelInputs → Scores, computed by `backend`; with `aside=True` by its `infer_aside`, for scorings
    no caller waits for (the shadow's), which must give way to the requests being answered."""

    name = "infer"

    def __init__(self, backend: InferenceBackend, *, aside: bool = False) -> None:
        self.backend = backend
        self._infer = backend.infer_aside if aside else backend.infer

    async def __call__(self, value: ModelInputs, ctx: RequestContext) -> Scores:
        result = await self._infer(value.handle, value.tensors)
        return Scores(value.request, value.handle, result.backend or self.backend.name, result.p_ctr, result.p_cvr)
