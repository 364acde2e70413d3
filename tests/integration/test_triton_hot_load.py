"""Hot loading through Triton's model-control API on the bundled tritonserver: a version exported after
Triton started is loaded beside the serving one and warmed, and a retired one leaves the table at once
and Triton with the next load (one reload for both), while calls keep succeeding — no request fails
during any switch."""

from __future__ import annotations

import asyncio
import importlib.util

import numpy as np
import pytest
import triton_fixtures as tf

from serving.backends.triton import TritonBackend
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

        load = asyncio.create_task(steady())
        await asyncio.sleep(0.5)
        v2 = await backend.load_version(tf.MODEL, 2)
        assert backend.models() == {tf.MODEL: [1, 2]}
        p1 = (await backend.infer(v1, inputs)).p_ctr
        p2 = (await backend.infer(v2, inputs)).p_ctr
        assert not np.allclose(p1, p2)  # two seeds: two models, each answering as itself
        await asyncio.sleep(0.5)
        await backend.unload_version(tf.MODEL, 1)
        assert backend.models() == {tf.MODEL: [2]}

        async def in_triton() -> list[int]:
            index = await backend._triton().get_model_repository_index()
            return sorted(int(m.version) for m in index.models if m.name == tf.MODEL and m.state == "READY")

        still = await in_triton()
        await backend.refresh()
        assert backend.models() == {tf.MODEL: [2]}  # a refresh does not bring the retired version back
        await asyncio.sleep(0.5)
        await backend.load_version(tf.MODEL, 3)
        after = await in_triton()
        await asyncio.sleep(0.5)
        stop.set()
        await load
        await backend.close()
        return outcomes, still, after, backend.models()

    outcomes, still, after, models = asyncio.run(scenario())
    failures = [o for o in outcomes if o != "ok"]
    assert failures == [] and len(outcomes) > 20, (failures[:3], len(outcomes))
    assert still == [1, 2] and after == [2, 3] and models == {tf.MODEL: [2, 3]}


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

