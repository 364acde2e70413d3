"""Hot loading through Triton's model-control API on the bundled tritonserver: a version exported after
Triton started is loaded beside the serving one as a Triton model of its own (`vm__v2`), warmed, and
the serving version is not reloaded (its inference count keeps growing: a reload would start it from
zero); a retired version leaves the table at once and Triton without reloading anything, while calls
keep succeeding — no request fails during any switch."""

from __future__ import annotations

import asyncio
import importlib.util

import numpy as np
import pytest
import triton_fixtures as tf

from serving.backends.triton import TritonBackend, side_model_name
from serving.errors import ModelLoadError


@pytest.fixture(scope="module")
def own_triton(tmp_path_factory: pytest.TempPathFactory):
    """A tritonserver of its own (the session one's repository stays untouched) serving only v1."""
    if importlib.util.find_spec("pytriton") is None:
        pytest.skip("nvidia-pytriton (the 'triton' extra) is not installed: pip install -e '.[triton]'")
    from exporters.triton_repo import write_triton_model
    from serving.triton import launcher

    base = tmp_path_factory.mktemp("triton_hot")
    repo = base / "model_repository"
    tf.export_version(repo, base, 1)
    write_triton_model(repo, tf.MODEL, versions=[1], target="python")
    handle = launcher.start(repo, models=[tf.MODEL], state_dir=base / "state")
    try:
        yield handle, repo, base
    finally:
        launcher.stop(handle)


def test_a_version_loads_beside_the_serving_one_and_unloads_with_no_failed_call(own_triton):
    handle, repo, base = own_triton
    tf.export_version(repo, base, 2)  # after Triton started: nothing loads it but the backend's call
    tf.export_version(repo, base, 3)
    inputs = tf.sample_inputs(16, seed=3)

    async def scenario():
        backend = TritonBackend(handle.grpc_url, repo)
        await backend.start()
        assert backend.models() == {tf.MODEL: [1]}
        v1 = backend.resolve(tf.MODEL, 1)
        stop, outcomes = asyncio.Event(), []

        async def steady():  # calls on the serving version throughout both switches
            while not stop.is_set():
                try:
                    await backend.infer(backend.resolve(tf.MODEL, None), inputs)  # as route resolves
                    outcomes.append("ok")
                except Exception as exc:  # noqa: BLE001 - counted, asserted below
                    outcomes.append(repr(exc))
                await asyncio.sleep(0.005)

        async def in_triton() -> dict[str, list[int]]:
            index = await backend._triton().get_model_repository_index()
            out = {m.name: [int(m.version)] for m in index.models if m.state == "READY"}
            for side in (side_model_name(tf.MODEL, 2), side_model_name(tf.MODEL, 3)):
                try:
                    if await backend._triton().is_model_ready(side):
                        out[side] = [int(side.rsplit("v", 1)[1])]
                except Exception:  # noqa: BLE001 - not loaded
                    pass
            return out

        async def v1_count() -> int:
            stats = await backend._triton().get_inference_statistics(tf.MODEL, "1", as_json=True)
            return int(stats["model_stats"][0]["inference_count"])

        load = asyncio.create_task(steady())
        await asyncio.sleep(0.5)
        before = await v1_count()
        v2 = await backend.load_version(tf.MODEL, 2)
        after_load = await v1_count()
        assert backend.models() == {tf.MODEL: [1, 2]}
        assert backend.triton_model(tf.MODEL, 2) == side_model_name(tf.MODEL, 2)
        assert backend.triton_model(tf.MODEL, 1) == tf.MODEL
        p1 = (await backend.infer(v1, inputs)).p_ctr
        p2 = (await backend.infer(v2, inputs)).p_ctr
        assert not np.allclose(p1, p2)  # two seeds: two models, each answering as itself
        loaded = await in_triton()
        await asyncio.sleep(0.5)
        await backend.unload_version(tf.MODEL, 1)  # every version of `vm` retired: `vm` leaves Triton
        assert backend.models() == {tf.MODEL: [2]}
        still = await in_triton()
        await backend.refresh()
        assert backend.models() == {tf.MODEL: [2]}  # a refresh does not bring the retired version back
        await asyncio.sleep(0.5)
        await backend.load_version(tf.MODEL, 3)  # its config copied from the v2 side model, the only loaded one
        both = await in_triton()
        await asyncio.sleep(0.3)
        await backend.unload_version(tf.MODEL, 2)
        after = await in_triton()
        await asyncio.sleep(0.5)
        stop.set()
        await load
        await backend.close()
        return outcomes, (before, after_load), loaded, still, both, after, backend.models()

    outcomes, counts, loaded, still, both, after, models = asyncio.run(scenario())
    failures = [o for o in outcomes if o != "ok"]
    assert failures == [] and len(outcomes) > 20, (failures[:3], len(outcomes))
    assert counts[1] >= counts[0] > 0, counts  # v1 kept its instance (and its count) through v2's load
    assert loaded == {tf.MODEL: [1], side_model_name(tf.MODEL, 2): [2]}
    assert still == {side_model_name(tf.MODEL, 2): [2]}
    v2s, v3s = side_model_name(tf.MODEL, 2), side_model_name(tf.MODEL, 3)
    assert both == {v2s: [2], v3s: [3]} and after == {v3s: [3]}
    assert models == {tf.MODEL: [3]}


def test_the_last_version_is_never_unloaded(own_triton):
    handle, repo, _ = own_triton

    async def scenario():
        backend = TritonBackend(handle.grpc_url, repo)
        await backend.start()
        *others, last = backend.models()[tf.MODEL]
        try:
            for v in others:
                await backend.unload_version(tf.MODEL, v)
            with pytest.raises(ModelLoadError, match="at least one version"):
                await backend.unload_version(tf.MODEL, last)
            assert backend.models() == {tf.MODEL: [last]}
        finally:
            await backend.close()

    asyncio.run(scenario())

