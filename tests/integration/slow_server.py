"""`adrank serve`'s own serve loop (signals, drain, health, metrics) over a fake model that takes a
known time, so the fault suite can put a real server process at a known capacity.

    python tests/integration/slow_server.py READY_FILE    # config from ADRANK_* variables

SLOW_INFER_MS: each inference awaits this long (an I/O-bound model: many overlap, as with Triton).
SLOW_FEATURES_MS: the features stage blocks the event loop this long (a CPU-bound stage that a
cancellation cannot interrupt, so only the stage-boundary deadline check stops the request).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "serving"))

import serving_fakes as fakes  # noqa: E402

from serving.backends.base import InferenceResult  # noqa: E402
from serving.config import ServerConfig  # noqa: E402
from serving.server import serve_forever  # noqa: E402


class SlowBackend(fakes.FakeBackend):
    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def infer(self, handle, inputs) -> InferenceResult:
        await asyncio.sleep(self.delay_s)
        return InferenceResult(*fakes.scores(inputs))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServerConfig.from_env(port=0)
    infer_s = float(os.environ.get("SLOW_INFER_MS", "0")) / 1e3
    features_s = float(os.environ.get("SLOW_FEATURES_MS", "0")) / 1e3

    def blocking(features):
        async def stage(value, ctx):
            time.sleep(features_s)
            return await features(value, ctx)
        return stage

    async def run() -> None:
        import serving.server as server_module

        original = server_module.RankingServer.start

        async def start(self):  # wrap the features stage of the server serve_forever builds
            if features_s:
                self.service.pipeline = self.service.pipeline.wrap("features", blocking)
            return await original(self)

        server_module.RankingServer.start = start
        await serve_forever(config, ready_file=sys.argv[1], backend=SlowBackend(infer_s))

    asyncio.run(run())


if __name__ == "__main__":
    main()
