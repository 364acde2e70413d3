"""How long each step of a switch keeps the event loop from running, measured without latency
percentiles: a probe thread wakes every 0.2 ms, and while another thread holds the GIL (or the CPU is
taken) it cannot, so the longest gap between its wake-ups is the longest stall a serving loop would see.
Wall times and gaps are per step, median and max over `--repeat` runs, beside the probe's own gaps with
nothing running (the machine's noise floor).

    python -m loadtests.switch_gil --run runs/demo          # a folder with model_repository/vm/1

Steps (what a switch runs on the embedded backend, each in a worker thread as the server does):
`read_manifest` (manifest seal and sha256 of the model file), `InferenceSession` (one intra-op
thread), the three warm-up runs, the whole `load_version_sync`, an unload, the whole `load_version` as
the server runs it (in the backend's loader thread, `LOADER_NICE` nicer), the registry writes of a
shadow start and its abort (register, transition, set_route, rollback on the SQLite registry) and one
watcher refresh; and a full garbage collection of this process's heap (the server's modules imported),
unfrozen and after `gc.freeze()`: what a collection triggered after a load costs the loop, and what the
freeze after each hot load leaves of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def probe_gaps(work: Callable[[], None]) -> tuple[float, float, float]:
    """(wall ms of `work`, longest probe gap ms, total ms of probe gaps over 1 ms) while `work` runs."""
    stop, gaps = threading.Event(), []

    def probe() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.0002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    t = threading.Thread(target=probe)
    t.start()
    time.sleep(0.05)
    gaps.clear()
    began = time.perf_counter()
    worker = threading.Thread(target=work)  # as asyncio.to_thread runs it
    worker.start()
    worker.join()
    wall = time.perf_counter() - began
    time.sleep(0.01)
    stop.set()
    t.join()
    g = np.array(gaps) * 1e3
    return wall * 1e3, float(g.max()), float(g[g > 1].sum())


def _export(repo: Path, version: int) -> None:
    from exporters.manifest import MANIFEST_NAME, seal_manifest

    folder = repo / "vm" / str(version)
    shutil.copytree(repo / "vm" / "1", folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["version"] = version
    (folder / MANIFEST_NAME).write_text(json.dumps(seal_manifest(manifest), indent=2, sort_keys=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.switch_gil", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/demo", help="a folder with model_repository/vm/1")
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args(argv)
    import asyncio
    import gc

    import serving.server  # noqa: F401 - the server's modules on the heap, as in a serving process
    from exporters.manifest import read_manifest
    from serving.backends.base import warm_inputs
    from serving.backends.embedded import LOADER_NICE, EmbeddedBackend
    from serving.rollout.sqlite_registry import SqliteRegistry
    from serving.rollout.states import VersionState
    from serving.rollout.watcher import RoutingWatcher

    tmp = Path(tempfile.mkdtemp(prefix="adrank-switch-gil-"))
    try:
        repo = tmp / "repo"
        (repo / "vm").mkdir(parents=True)
        shutil.copytree(Path(a.run) / "model_repository" / "vm" / "1", repo / "vm" / "1")
        backend = EmbeddedBackend(repo)
        backend.load()
        # the server's way (the loader thread) at its nice and without it, each loading every version itself
        plain, niced = EmbeddedBackend(repo, loader_nice=0), EmbeddedBackend(repo, loader_nice=LOADER_NICE)
        plain.load()
        niced.load()
        versions = list(range(2, 2 + a.repeat))
        for v in versions:
            _export(repo, v)
        registry = SqliteRegistry(tmp / "state")
        watcher = RoutingWatcher(registry)
        registry.register(read_manifest(repo / "vm" / "1"), actor="probe")
        registry.transition("vm", 1, VersionState.LIVE, actor="probe", reason="probe")
        manifest = read_manifest(repo / "vm" / "1")
        session = backend._session(repo / "vm" / "1" / manifest.model_file)
        folder = repo / "vm" / "1" / manifest.model_file

        def shadow_writes(v: int) -> None:
            registry.register(read_manifest(repo / "vm" / str(v)), actor="probe")
            registry.transition("vm", v, VersionState.SHADOW, actor="probe", reason="probe")
            registry.set_route("vm", shadow_sample_rate=0.2, actor="probe", reason="probe")
            registry.rollback("vm", v, actor="probe", reason="probe")  # out again: one shadow at a time

        steps: dict[str, Callable[[int], None]] = {
            "nothing (noise floor)": lambda v: time.sleep(0.005),
            "read_manifest (sha256)": lambda v: read_manifest(repo / "vm" / str(v)),
            "InferenceSession": lambda v: backend._session(folder),
            "3 warm-up runs": lambda v: [session.run(["p_ctr", "p_cvr"], warm_inputs(manifest)) for _ in range(3)],
            "load_version_sync": lambda v: backend.load_version_sync("vm", v),
            "unload_version": lambda v: asyncio.run(backend.unload_version("vm", v)),
            "load_version, nice 0": lambda v: asyncio.run(plain.load_version("vm", v)),
            f"load_version, nice {LOADER_NICE}": lambda v: asyncio.run(niced.load_version("vm", v)),
            "full gc, heap unfrozen": lambda v: (gc.unfreeze(), gc.collect()),
            "full gc after gc.freeze": lambda v: (gc.freeze(), gc.collect()),
            "registry: shadow + abort": shadow_writes,
            "watcher.refresh": lambda v: watcher.refresh(),
        }
        print(f"{'step':<24} {'wall ms (med / max)':>20} {'longest gap ms':>16} {'gaps > 1 ms, sum':>17}")
        for name, step in steps.items():
            figures = [probe_gaps(lambda v=v, step=step: step(v)) for v in versions]
            wall, gap, lost = zip(*figures, strict=True)
            med = statistics.median
            print(f"{name:<24} {med(wall):>9.2f} / {max(wall):<8.2f} {med(gap):>6.2f} / {max(gap):<7.2f} "
                  f"{med(lost):>7.2f} / {max(lost):<6.2f}")
        registry.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores (noisy when shared)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
