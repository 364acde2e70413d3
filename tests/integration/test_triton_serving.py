"""A real tritonserver (nvidia-pytriton's bundle, python backend) started by our launcher, called
through TritonBackend; results compared with the embedded backend on the same repository.

The tests share one server and run in file order: versions 1 and 2 side by side, then version 3
loaded under traffic, then a corrupt version refused while the others keep serving.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import triton_fixtures

from exporters.triton_repo import TritonRepoError, render_config, write_triton_model
from serving.backends.embedded import EmbeddedBackend
from serving.backends.triton import TritonBackend
from serving.errors import BackendUnavailable, InvalidRequest, ModelNotFound

MODEL = triton_fixtures.MODEL
triton_repo, triton_server = triton_fixtures.triton_repo, triton_fixtures.triton_server


def run(coro_fn, *args, **kwargs):
    return asyncio.run(coro_fn(*args, **kwargs))


async def triton_scores(url: str, repo: Path, inputs: dict, versions: list[int | None]) -> list[tuple[int, np.ndarray]]:
    backend = TritonBackend(url, repo)
    await backend.start()
    try:
        out = []
        for v in versions:
            handle = backend.resolve(MODEL, v)
            result = await backend.infer(handle, inputs)
            out.append((handle.version, np.stack([result.p_ctr, result.p_cvr])))
        return out
    finally:
        await backend.close()


def embedded_scores(repo: Path, inputs: dict, version: int) -> np.ndarray:
    backend = EmbeddedBackend(repo)
    backend.load()
    result = run(backend.infer, backend.resolve(MODEL, version), inputs)
    return np.stack([result.p_ctr, result.p_cvr])


def test_triton_matches_embedded_backend(triton_server, triton_repo):
    inputs = triton_fixtures.sample_inputs(200, seed=3)
    got = run(triton_scores, triton_server.grpc_url, triton_repo, inputs, [1, 2])
    for version, scores in got:
        np.testing.assert_allclose(scores, embedded_scores(triton_repo, inputs, version), atol=1e-6, rtol=0)


def test_loopfm_model_with_per_user_history_served_unbatched(triton_server, triton_repo):
    name = triton_fixtures.LOOPFM_MODEL
    inputs = triton_fixtures.sample_inputs(120, seed=7, history=True)
    assert inputs["fm_history"].shape[0] != 120  # users, not rows: the batcher could not concatenate it

    async def body() -> np.ndarray:
        backend = TritonBackend(triton_server.grpc_url, triton_repo)
        await backend.start()
        try:
            result = await backend.infer(backend.resolve(name, None), inputs)
            return np.stack([result.p_ctr, result.p_cvr])
        finally:
            await backend.close()

    embedded = EmbeddedBackend(triton_repo)
    embedded.load()
    ref = run(embedded.infer, embedded.resolve(name, 1), inputs)
    np.testing.assert_allclose(run(body), np.stack([ref.p_ctr, ref.p_cvr]), atol=1e-6, rtol=0)


def test_two_versions_side_by_side_and_pins(triton_server, triton_repo):
    inputs = triton_fixtures.sample_inputs(50, seed=4)
    (v1, s1), (v2, s2), (vn, sn) = run(triton_scores, triton_server.grpc_url, triton_repo, inputs, [1, 2, None])
    assert (v1, v2, vn) == (1, 2, 2)  # unpinned goes to the newest ready version
    assert np.all(s2[0] > s1[0]), "v2's larger ctr bias must raise every pCTR"
    np.testing.assert_array_equal(sn, s2)


def test_missing_version_and_bad_input_map_to_typed_errors(triton_server, triton_repo):
    async def body() -> None:
        backend = TritonBackend(triton_server.grpc_url, triton_repo)
        await backend.start()
        try:
            with pytest.raises(ModelNotFound, match="version 9"):
                backend.resolve(MODEL, 9)
            handle = backend.resolve(MODEL, 1)
            bad = triton_fixtures.sample_inputs(4)
            bad["dense"] = bad["dense"][:, :2]  # wrong width: Triton answers INVALID_ARGUMENT
            with pytest.raises(InvalidRequest, match="INVALID_ARGUMENT"):
                await backend.infer(handle, bad)
        finally:
            await backend.close()
        down = TritonBackend("127.0.0.1:1", triton_repo, timeout_s=0.5)
        with pytest.raises(BackendUnavailable):
            await down.start()
        await down.close()

    run(body)


def _metrics(handle, model: str, version: str) -> dict[str, float]:
    """Triton's Prometheus counters for one model version (summed over failure reasons)."""
    import urllib.request

    text = urllib.request.urlopen(handle.metrics_url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("nv_inference_") and f'model="{model}"' in line and f'version="{version}"' in line:
            key = line.split("{", 1)[0]
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_bad_request_in_a_dynamic_batch_fails_alone(triton_server, triton_repo):
    """Concurrent requests are merged by the dynamic batcher; an out-of-range index in one of them makes
    the merged run fail, and model.py re-runs them one by one so only that request gets an error."""

    async def body() -> list:
        backend = TritonBackend(triton_server.grpc_url, triton_repo)
        await backend.start()
        try:
            handle = backend.resolve(MODEL, 1)
            batches = [triton_fixtures.sample_inputs(50, seed=s) for s in range(24)]
            batches[5]["sparse"][3, 0] = 10**9
            return await asyncio.gather(*(backend.infer(handle, b) for b in batches), return_exceptions=True)
        finally:
            await backend.close()

    before = _metrics(triton_server, "vm_triton", "1")
    results = run(body)
    after = _metrics(triton_server, "vm_triton", "1")
    requests = after["nv_inference_request_success"] + after["nv_inference_request_failure"] - \
        before["nv_inference_request_success"] - before["nv_inference_request_failure"]
    executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
    print(f"\n24 concurrent requests: {requests:.0f} counted by Triton in {executions:.0f} model executions")
    errors = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert requests == 24 and executions < requests, "the dynamic batcher did not merge any requests"
    assert errors == [5], results
    print(f"\nthe bad request's error: {results[5]}")
    assert isinstance(results[5], InvalidRequest) and f"{MODEL}/1" in str(results[5])
    assert all(len(r.p_ctr) == 50 for i, r in enumerate(results) if i != 5)


def _score_until(url: str, repo: Path, stop: threading.Event, served: Counter, failures: list[str]) -> None:
    async def loop() -> None:
        backend = TritonBackend(url, repo, refresh_s=0.1)
        await backend.start()
        inputs = triton_fixtures.sample_inputs(200, seed=5)
        try:
            while not stop.is_set():
                handle = backend.resolve(MODEL, None)
                try:
                    await backend.infer(handle, inputs)
                    served[handle.version] += 1
                except Exception as exc:  # counted, not raised: the test asserts there are none
                    failures.append(f"v{handle.version}: {exc!r}")
        finally:
            await backend.close()

    asyncio.run(loop())


def test_loading_a_new_version_under_traffic_loses_no_request(triton_server, triton_repo, tmp_path):
    from serving.triton.launcher import load_model

    stop, served, failures = threading.Event(), Counter(), []
    scorer = threading.Thread(target=_score_until, args=(triton_server.grpc_url, triton_repo, stop, served, failures))
    scorer.start()
    try:
        time.sleep(0.5)
        triton_fixtures.export_version(triton_repo, tmp_path, 3)
        write_triton_model(triton_repo, MODEL, target="python")
        t0 = time.monotonic()
        load_model(triton_server, MODEL)
        load_s = time.monotonic() - t0
        deadline = time.monotonic() + 10
        while served[3] < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        scorer.join(timeout=30)
    total = sum(served.values())
    print(f"\nreload under traffic: {total} requests ({dict(served)}), {len(failures)} failures, load {load_s:.2f} s")
    assert failures == []
    assert served[2] > 0 and served[3] >= 20, served


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 16] = bytes(b ^ 0xFF for b in data[len(data) // 2: len(data) // 2 + 16])
    path.write_bytes(bytes(data))


def test_corrupt_version_is_refused_and_serving_versions_keep_serving(triton_server, triton_repo, tmp_path):
    from exporters.manifest import read_manifest
    from serving.triton.launcher import TritonLaunchError, load_model

    model_dir = triton_repo / MODEL
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    bad = max(versions) + 1
    triton_fixtures.export_version(triton_repo, tmp_path, bad)
    _flip_bytes(model_dir / str(bad) / "model.onnx")
    config_before = (model_dir / "config.pbtxt").read_text()
    try:
        # 1. at repository-write time: refused, config untouched
        with pytest.raises(TritonRepoError, match=rf"v{bad} refused: .*sha256"):
            write_triton_model(triton_repo, MODEL, target="python")
        assert (model_dir / "config.pbtxt").read_text() == config_before
        # 2. at load time (a config forced to list it): the version's own model.py refuses it
        manifests = [read_manifest(model_dir / str(v), verify=False) for v in (*versions, bad)]
        (model_dir / "config.pbtxt").write_text(render_config(MODEL, manifests, target="python"))
        shutil.copy(model_dir / "1" / "model.py", model_dir / str(bad) / "model.py")
        with pytest.raises(TritonLaunchError, match="sha256"):
            load_model(triton_server, MODEL)
        inputs = triton_fixtures.sample_inputs(20, seed=6)
        got = run(triton_scores, triton_server.grpc_url, triton_repo, inputs, [None, *versions])
        assert [v for v, _ in got] == [max(versions), *versions]
    except BaseException:
        # the test's own failure is the verdict: a restore that fails too (e.g. a reload timing out on a
        # loaded machine) is reported beside it, never in its place
        try:
            _restore(model_dir, bad, triton_repo, triton_server, load_model)
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"restoring the Triton repository after a failure also failed: {exc!r}", stacklevel=1)
        raise
    _restore(model_dir, bad, triton_repo, triton_server, load_model)  # on success, a failed restore fails it


def _restore(model_dir: Path, bad: int, triton_repo: Path, triton_server, load_model) -> None:  # noqa: ANN001
    shutil.rmtree(model_dir / str(bad), ignore_errors=True)
    write_triton_model(triton_repo, MODEL, target="python")
    load_model(triton_server, MODEL)
