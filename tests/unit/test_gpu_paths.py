"""GPU code paths select themselves when a GPU is present. The selection logic is tested everywhere;
the runs on a real device are skipped, with the reason, on hosts without one."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from embedding_cache.codecs import PQCodec, faiss_gpus
from exporters import triton_repo
from serving.backends import embedded

HAS_CUDA_ORT = "CUDAExecutionProvider" in ort.get_available_providers()
NO_CUDA_ORT = "onnxruntime has no CUDAExecutionProvider here (install the 'gpu' extra on a CUDA host)"


def test_embedded_backend_prefers_cuda_when_onnxruntime_offers_it(monkeypatch):
    monkeypatch.setattr(embedded.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert embedded.providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(embedded.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert embedded.providers() == ["CPUExecutionProvider"]


def test_triton_instance_kind_follows_the_gpu(monkeypatch):
    cfg = triton_repo.TritonModelConfig(kind="auto")
    monkeypatch.setattr(triton_repo, "gpu_present", lambda: True)
    assert triton_repo.instance_kind(cfg, "native") == "KIND_GPU"
    monkeypatch.setattr(triton_repo, "gpu_present", lambda: False)
    assert triton_repo.instance_kind(cfg, "native") == "KIND_CPU"


@pytest.mark.skipif(not HAS_CUDA_ORT, reason=NO_CUDA_ORT)
def test_onnxruntime_runs_on_cuda(tiny_run):
    backend = embedded.EmbeddedBackend(tiny_run / "model_repository")
    backend.load()
    session = backend._sessions[("vm", 1)]
    assert session.get_providers()[0] == "CUDAExecutionProvider"


@pytest.mark.skipif(faiss_gpus() == 0, reason="faiss sees no GPU (faiss-cpu build or no CUDA device)")
def test_pq_codec_trains_on_the_gpu():
    x = np.tanh(np.random.default_rng(0).normal(size=(4096, 32))).astype(np.float32)
    codec = PQCodec(dim=32, m=8, nbits=8)
    codec.fit(x)
    codes, scales = codec.encode(x)
    assert np.sqrt(np.mean((codec.decode(codes, scales) - x) ** 2)) < 0.3
