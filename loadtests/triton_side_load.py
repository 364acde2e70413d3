"""The serving version's latency while Triton loads a second version, two ways, on the bundled server:

* ``reload``: v2 added to the served model's `version_policy` and the model reloaded (what hot loading
  did before): Triton starts fresh instances of every version, the serving one too;
* ``side``: v2 loaded as a Triton model of its own, `vm__v2`, by file override (what
  `serving.backends.triton.TritonBackend.load_version` does): the serving model is not touched.

    python -m loadtests.triton_side_load --run runs/demo      # a folder with model_repository/vm/1

One client calls v1 every 10 ms (batch of `--rows`) for 5 s before the load, during it and 5 s after;
the table gives calls, p50, p99 and max of v1's latency per phase. Each mode gets its own fresh server.
Figures on a shared machine are noisy: the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _with_v2(run: Path, out: Path) -> Path:
    from exporters.manifest import MANIFEST_NAME, seal_manifest
    from exporters.triton_repo import write_triton_model

    repo = out / "repo"
    (repo / "vm").mkdir(parents=True)
    shutil.copytree(run / "model_repository" / "vm" / "1", repo / "vm" / "1")
    shutil.copytree(repo / "vm" / "1", repo / "vm" / "2")
    manifest = json.loads((repo / "vm" / "2" / MANIFEST_NAME).read_text())
    manifest["version"] = 2
    (repo / "vm" / "2" / MANIFEST_NAME).write_text(json.dumps(seal_manifest(manifest), indent=2, sort_keys=True))
    write_triton_model(repo, "vm", versions=[1], target="python")
    return repo


async def _measure(url: str, repo: Path, mode: str, rows: int) -> dict[str, tuple]:
    import tritonclient.grpc.aio as grpcclient

    from exporters.manifest import read_manifest
    from exporters.triton_repo import PYTHON_MODEL_SOURCE
    from serving.backends.base import warm_inputs

    client = grpcclient.InferenceServerClient(url)
    manifest = read_manifest(repo / "vm" / "1")
    inputs = warm_inputs(manifest, rows)
    kinds = {"int64": "INT64", "int32": "INT32", "float32": "FP32"}

    def tensors():
        out = []
        for spec in manifest.inputs:
            array = np.ascontiguousarray(inputs[spec.name], dtype=np.dtype(spec.dtype))
            t = grpcclient.InferInput(spec.name, list(array.shape), kinds[spec.dtype])
            t.set_data_from_numpy(array)
            out.append(t)
        return out

    calls: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def steady() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            await client.infer("vm", tensors(), model_version="1")
            calls.append((t0, (time.perf_counter() - t0) * 1e3))
            await asyncio.sleep(0.01)

    task = asyncio.create_task(steady())
    await asyncio.sleep(5)
    config = (await client.get_model_config("vm", as_json=True))["config"]
    began = time.perf_counter()
    if mode == "reload":
        config["version_policy"] = {"specific": {"versions": [1, 2]}}
        (repo / "vm" / "2" / "model.py").write_text(PYTHON_MODEL_SOURCE)
        await client.load_model("vm", config=json.dumps(config))
    else:
        config["name"], config["version_policy"] = "vm__v2", {"specific": {"versions": [2]}}
        files = {f"file:2/{p.name}": p.read_bytes() for p in (repo / "vm" / "2").iterdir() if p.is_file()}
        files["file:2/model.py"] = PYTHON_MODEL_SOURCE.encode()
        await client.load_model("vm__v2", config=json.dumps(config), files=files)
    loaded = time.perf_counter()
    await asyncio.sleep(5)
    stop.set()
    await task
    await client.close()
    a = np.array(calls)

    def phase(lo: float, hi: float) -> tuple:
        x = a[(a[:, 0] >= lo) & (a[:, 0] < hi), 1]
        return (int(x.size), float(np.percentile(x, 50)), float(np.percentile(x, 99)), float(x.max()))

    return {"before": phase(began - 5, began), "loading": phase(began, loaded), "after": phase(loaded, loaded + 5),
            "load_s": (round(loaded - began, 2),)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.triton_side_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/demo", help="a folder with model_repository/vm/1")
    p.add_argument("--rows", type=int, default=100)
    a = p.parse_args(argv)
    from serving.triton import launcher

    print(f"{'mode':<7} {'phase':<8} {'calls':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for mode in ("reload", "side"):
        tmp = Path(tempfile.mkdtemp(prefix="adrank-side-load-"))
        try:
            repo = _with_v2(Path(a.run), tmp)
            handle = launcher.start(repo, models=["vm"], state_dir=tmp / "triton")
            try:
                figures = asyncio.run(_measure(handle.grpc_url, repo, mode, a.rows))
            finally:
                launcher.stop(handle)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for name in ("before", "loading", "after"):
            n, p50, p99, top = figures[name]
            print(f"{mode:<7} {name:<8} {n:>6} {p50:>7.2f} {p99:>7.2f} {top:>7.2f}")
        print(f"{mode:<7} load took {figures['load_s'][0]} s")
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores (noisy when shared)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
