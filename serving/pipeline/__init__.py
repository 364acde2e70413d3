"""The Score request pipeline: decode → validate → route → history → features → infer → rank → encode.

One module per stage (named after it), the values passed between them (`values`), the per-request
context (`context`), the admission seam (`admission`) and the function that runs them (`pipeline`).
The gRPC servicer (serving.service) only adapts a call to `Pipeline.run`; see docs/pipeline.md.
"""

from serving.pipeline.admission import Admission
from serving.pipeline.context import ARM_LIVE, RequestContext
from serving.pipeline.pipeline import STAGE_NAMES, Pipeline, Stage, Stages
from serving.pipeline.values import (
    DecodedRequest,
    ModelInputs,
    ParsedRequest,
    Ranking,
    Route,
    Scores,
    WithHistory,
)

__all__ = ["ARM_LIVE", "STAGE_NAMES", "Admission", "DecodedRequest", "ModelInputs", "ParsedRequest", "Pipeline",
           "Ranking", "RequestContext", "Route", "Scores", "Stage", "Stages", "WithHistory"]
