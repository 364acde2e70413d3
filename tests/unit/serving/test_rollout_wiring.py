"""A server with a rollout registry, in this process over a real grpc.aio port: start-up makes the
newest ready version live, the route follows the registry's table, the arm comes back in ServedBy and
is counted in the per-arm metrics with bounded labels."""

from __future__ import annotations

import asyncio

import grpc
import serving_fakes as fakes

from protos.adrank.v1 import ranking_pb2_grpc
from serving.config import ServerConfig
from serving.server import RankingServer


def test_route_follows_the_registry_and_the_arm_is_returned_and_counted(tmp_path):
    backend = fakes.FakeBackend(fakes.handle(version=1), fakes.handle(version=2))
    server = RankingServer(ServerConfig(port=0, rollout_registry=str(tmp_path / "state"), rollout_poll_s=0.05),
                           backend)

    async def go():
        port = await server.start()
        registry = server.rollout.registry
        out = {"bootstrap": registry.routing("vm")}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ranking_pb2_grpc.AdRankingStub(channel)
            out["before"] = await stub.Score(fakes.request(3), timeout=5)
            registry.register(backend.resolve("vm", 1).manifest, actor="test")
            registry.transition("vm", 1, "canary", actor="test", reason="unit")
            registry.set_route("vm", canary_weight=100, actor="test", reason="everyone")
            await server.rollout.poll_once()
            out["canary"] = await stub.Score(fakes.request(3), timeout=5)
            out["pinned"] = await stub.Score(fakes.request(3, model={"version": 2}), timeout=5)
            try:  # an unknown model name: counted under "unknown" and arm "?", never the caller's string
                await stub.Score(fakes.request(3, model={"name": "caller-chosen-name"}), timeout=5)
            except grpc.aio.AioRpcError as err:
                out["unknown"] = err.code()
        await server.stop(0)
        return out

    out = asyncio.run(go())
    assert out["bootstrap"].live == 2 and out["bootstrap"].canary is None
    assert (out["before"].served_by.model_version, out["before"].served_by.arm) == (2, "live")
    assert (out["canary"].served_by.model_version, out["canary"].served_by.arm) == (1, "canary")
    assert (out["pinned"].served_by.model_version, out["pinned"].served_by.arm) == (2, "pinned")
    metrics = server.service.metrics.registry
    value = metrics.get_sample_value
    assert value("adrank_rollout_arm_requests_total", {"model": "vm", "arm": "live", "code": "OK"}) == 1
    assert value("adrank_rollout_arm_requests_total", {"model": "vm", "arm": "canary", "code": "OK"}) == 1
    assert value("adrank_rollout_arm_requests_total", {"model": "vm", "arm": "pinned", "code": "OK"}) == 1
    assert out["unknown"] == grpc.StatusCode.NOT_FOUND
    assert value("adrank_rollout_arm_requests_total", {"model": "unknown", "arm": "?", "code": "NOT_FOUND"}) == 1
    labels = {(s.labels["model"], s.labels["arm"]) for m in metrics.collect()
              if m.name == "adrank_rollout_arm_requests" for s in m.samples}
    assert labels == {("vm", "live"), ("vm", "canary"), ("vm", "pinned"), ("unknown", "?")}
