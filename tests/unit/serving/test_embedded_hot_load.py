"""The embedded backend loads a version exported after it started, beside the serving ones, warms it
before it becomes resolvable, and unloads one on request; a broken export is refused and changes nothing."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from serving.backends.base import WARM_BATCH_ROWS, warm_inputs
from serving.backends.embedded import ASIDE_NICE, LOADER_NICE, EmbeddedBackend
from serving.errors import ModelLoadError, ModelNotFound

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration"))
from rollout_versions import copy_version  # noqa: E402 - the integration helpers' version builder


@pytest.fixture()
def repo(tiny_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "repo"
    shutil.copytree(tiny_run / "model_repository", out)
    return out


def test_a_version_exported_after_start_loads_beside_the_serving_one_and_unloads(repo: Path):
    backend = EmbeddedBackend(repo)
    backend.load()
    v1 = backend.resolve("vm", 1)
    copy_version(repo, "vm", 1, 2, p_ctr_factor=2.0)
    assert backend.models() == {"vm": [1]}  # nothing rescans on its own
    warmed = []
    original = backend._session

    class Counting:  # counts the runs a session gets before the version is resolvable
        def __init__(self, session) -> None:
            self.session = session

        def run(self, *args):
            warmed.append(backend.models())
            return self.session.run(*args)

        def get_inputs(self):
            return self.session.get_inputs()

    backend._session = lambda path: Counting(original(path))
    handle = asyncio.run(backend.load_version("vm", 2))
    assert backend.models() == {"vm": [1, 2]} and handle.version == 2
    assert warmed == [{"vm": [1]}] * 3  # three warm-up runs, all before v2 could be resolved
    inputs = warm_inputs(v1.manifest)
    one = asyncio.run(backend.infer(v1, inputs)).p_ctr
    two = asyncio.run(backend.infer(handle, inputs)).p_ctr
    np.testing.assert_allclose(two, np.minimum(one * 2.0, 1.0), rtol=1e-5)
    asyncio.run(backend.unload_version("vm", 1))
    assert backend.models() == {"vm": [2]}
    with pytest.raises(ModelNotFound, match="not loaded"):
        asyncio.run(backend.infer(v1, inputs))


def test_a_broken_export_is_refused_naming_it_and_the_serving_versions_stay(repo: Path):
    backend = EmbeddedBackend(repo)
    backend.load()
    target = copy_version(repo, "vm", 1, 2)
    (target / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(ModelLoadError, match="vm/2"):
        asyncio.run(backend.load_version("vm", 2))
    assert backend.models() == {"vm": [1]} and ("vm", 2) in backend.load_errors
    with pytest.raises(ModelLoadError, match="vm/7"):
        asyncio.run(backend.load_version("vm", 7))


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread priorities need POSIX setpriority")
def test_a_hot_load_runs_in_a_nicer_thread_warms_on_serving_sized_batches_and_freezes_the_heap(repo: Path):
    backend = EmbeddedBackend(repo)
    backend.load()
    copy_version(repo, "vm", 1, 2)
    serving_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    runs = []
    original = backend._session

    class Recording:  # what each warm-up run saw: its thread's niceness and its batch rows
        def __init__(self, session) -> None:
            self.session = session

        def run(self, outputs, feed):
            rows = {k: v.shape[0] for k, v in feed.items() if v.ndim and v.shape[0] > 1}
            runs.append((os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), max(rows.values(), default=1)))
            return self.session.run(outputs, feed)

        def get_inputs(self):
            return self.session.get_inputs()

    backend._session = lambda path: Recording(original(path))
    frozen = gc.get_freeze_count()
    try:
        asyncio.run(backend.load_version("vm", 2))
        assert [rows for _, rows in runs] == list(WARM_BATCH_ROWS)
        # the loader thread is LOADER_NICE nicer than the thread that serves (capped at 19), on every run
        assert {nice for nice, _ in runs} == {min(19, serving_nice + LOADER_NICE)}
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == serving_nice  # the caller's own stays
        assert gc.get_freeze_count() > frozen  # the loaded heap is out of every later collection's walk
    finally:
        gc.unfreeze()
        asyncio.run(backend.close())


def test_an_aside_inference_runs_off_the_loop_in_a_nicer_thread_and_scores_as_infer_does(repo: Path):
    """Shadow mirrors and the transfer sample run `infer_aside`: the same session, the same scores, but in a
    low-priority thread, so the event loop is free while onnxruntime computes."""
    backend = EmbeddedBackend(repo)
    backend.load()
    handle = backend.resolve("vm", 1)
    serving_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = []
    session = backend._sessions[("vm", 1)]

    class Recording:
        def run(self, outputs, feed):
            seen.append((threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
            return session.run(outputs, feed)

    backend._sessions = {("vm", 1): Recording()}
    feed = warm_inputs(handle.manifest, 7)

    async def both():
        return await backend.infer(handle, feed), await backend.infer_aside(handle, feed)

    try:
        inline, aside = asyncio.run(both())
        np.testing.assert_array_equal(inline.p_ctr, aside.p_ctr)
        np.testing.assert_array_equal(inline.p_cvr, aside.p_cvr)
        (loop_tid, loop_nice), (aside_tid, aside_nice) = seen
        assert loop_tid == threading.get_native_id() and loop_nice == serving_nice  # infer: inline on the loop
        assert aside_tid != loop_tid and aside_nice == min(19, serving_nice + ASIDE_NICE)
        backend._sessions = {}
        with pytest.raises(ModelNotFound, match="vm/1 is not loaded"):  # errors are the same typed ones
            asyncio.run(backend.infer_aside(handle, feed))
    finally:
        asyncio.run(backend.close())
