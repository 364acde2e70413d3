"""`adrank bench rollout`: a whole rollout under a steady locust load, counting failed requests and
comparing the p99 around every switch with the p99 just before it.

    adrank bench rollout                          # trains a tiny VM first (about a minute on 2 cores)
    adrank bench rollout --run runs/demo --rate 150 --json runs/bench/rollout.json
    adrank bench rollout --backend triton         # through the bundled tritonserver (model control)

A real `adrank serve` (embedded backend, or `--backend triton` with the bundled tritonserver started
here on the same repository; SQLite registry, token auth) serves v1 of `vm`; locust runs in
its own process at a fixed request rate for the whole run. While it runs, v2 is exported into the
repository (a copy of v1: the same scores, so the analysis passes) and rolled out through the
RolloutAdmin API (the calls `adrank rollout` makes, from this process so that no CLI start-up competes
with the server for the cores):

    shadow 20 % → canary 10 % → (analysis) 50 % → (analysis) promote → rollback (v1 live again)

The switch instants are read from the registry's audit log. For each, the p99 of the calls that
started in the `--window-s` seconds before it is compared with the p99 of those that started in the
`--window-s` after it (the acceptance bound is 1.2×). Exit code 0 when no call failed and every ratio
is within --max-p99-ratio, 1 otherwise. Figures on a shared machine are noisy: the output prints the
load average next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCORE_TOKEN, ADMIN_TOKEN = "bench-score-token-0123456789", "bench-admin-token-9876543210"
SPEC = """model = "vm"
version = 2
steps = [10, 50]
interval_s = {interval}
threshold = 2

[checks]
min_requests = {min_requests}
max_p99_latency_ratio = 3.0

[preflight]
max_embedding_age_s = 1e12
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adrank bench rollout", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="", help="folder with model_repository/vm/1 and catalog.npz (default: train "
                   "a tiny VM into a temporary folder)")
    p.add_argument("--rate", type=float, default=100.0, help="requests per second locust sends, in total")
    p.add_argument("--users", type=int, default=4, help="locust users (each with its own channel)")
    p.add_argument("--candidates", default="fixed:100")
    p.add_argument("--interval-s", type=float, default=5.0, help="analysis interval of the rollout spec")
    p.add_argument("--phase-s", type=float, default=10.0, help="seconds between the operator's steps")
    p.add_argument("--window-s", type=float, default=5.0, help="seconds of calls before / after each switch")
    p.add_argument("--max-p99-ratio", type=float, default=1.2)
    p.add_argument("--backend", choices=("embedded", "triton"), default="embedded")
    p.add_argument("--json", default="", help="write the figures here too")
    return p


def _train_tiny(out: Path) -> Path:
    from exporters.onnx_export import export_onnx
    from models.pipeline import TrainJob, run_train_job

    _, ckpt = run_train_job(TrainJob(n_events=20_000, seed=0, epochs=1, out_dir=str(out)), progress=False)
    export_onnx(ckpt, out / "model_repository", "vm", 1, parity_examples=2_000)
    return out


def _copy_v2(repo: Path) -> None:
    """v2 as a resealed copy of v1 (what `adrank export` of the same checkpoint would produce)."""
    from exporters.manifest import MANIFEST_NAME, seal_manifest

    staging = repo / "vm" / ".2.staging"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(repo / "vm" / "1", staging)
    manifest = json.loads((staging / MANIFEST_NAME).read_text())
    manifest["version"] = 2
    (staging / MANIFEST_NAME).write_text(json.dumps(seal_manifest(manifest), indent=2, sort_keys=True))
    staging.rename(repo / "vm" / "2")


class Admin:
    """The RolloutAdmin calls the CLI makes, from this process: a CLI process per poll would compete with
    the server for the same cores and show up in the very p99 being measured."""

    def __init__(self, target: str) -> None:
        import grpc

        from protos.adrank.v1 import rollout_pb2, rollout_pb2_grpc

        self.pb, self._channel = rollout_pb2, grpc.insecure_channel(target)
        self.stub = rollout_pb2_grpc.RolloutAdminStub(self._channel)
        self.md = [("authorization", f"Bearer {ADMIN_TOKEN}")]

    def call(self, method: str, request):
        return getattr(self.stub, method)(request, timeout=60, metadata=self.md)

    def target(self, **kw):
        return self.pb.RolloutTarget(model="vm", actor="bench", **kw)

    def wait(self, done, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while True:
            s = self.call("Status", self.target())
            if done(s) or time.monotonic() > deadline:
                return s
            time.sleep(0.5)

    def history(self) -> list[dict]:
        from google.protobuf.json_format import MessageToDict

        return MessageToDict(self.call("History", self.target()), preserving_proto_field_name=True).get("entries", [])

    def close(self) -> None:
        self._channel.close()


def p99(ms: np.ndarray) -> float:
    return float(np.percentile(ms, 99)) if ms.size else float("nan")


def switch_figures(calls: dict, switches: list[tuple[str, float]], window_s: float) -> list[dict]:
    """Per switch (name, seconds after the load's start): calls, failures and p99 before and after."""
    t, ms, ok, server = calls["t_s"], calls["client_ms"], calls["ok"].astype(bool), calls["server_ms"]
    out = []
    for name, at in switches:
        before = (t >= at - window_s) & (t < at)
        after = (t >= at) & (t < at + window_s)
        b, a = p99(ms[before]), p99(ms[after])
        sb, sa = p99(server[before & ok]), p99(server[after & ok])
        out.append({"switch": name, "at_s": round(at, 2), "calls_before": int(before.sum()),
                    "calls_after": int(after.sum()), "failed_after": int((after & ~ok).sum()),
                    "p99_before_ms": round(b, 3), "p99_after_ms": round(a, 3), "p99_ratio": round(a / b, 3),
                    "server_p99_before_ms": round(sb, 3), "server_p99_after_ms": round(sa, 3),
                    "server_p99_ratio": round(sa / sb, 3)})
    return out


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from serving.security.auth import hash_token

    tmp = Path(tempfile.mkdtemp(prefix="adrank-rollout-bench-"))
    try:
        run = Path(a.run) if a.run else _train_tiny(tmp / "run")
        repo = tmp / "repo"
        shutil.copytree(run / "model_repository", repo)
        shutil.rmtree(repo / "vm" / "2", ignore_errors=True)
        tokens = tmp / "tokens"
        tokens.write_text(f"{hash_token(SCORE_TOKEN)} score load\n{hash_token(ADMIN_TOKEN)} admin operator\n")
        duration = 4 * a.phase_s + 2 * a.interval_s + 20
        args = ["--repository", str(repo), "--rollout-registry", str(tmp / "state"), "--auth-tokens", str(tokens),
                "--rollout-poll-s", "0.5", "--max-in-flight", "0"]
        triton = None
        if a.backend == "triton":
            from exporters.triton_repo import write_triton_model
            from serving.triton import launcher

            for extra in [p for p in repo.iterdir() if p.name != "vm"]:  # only vm: one python stub per version
                shutil.rmtree(extra)
            write_triton_model(repo, "vm", versions=[1], target="python")
            triton = launcher.start(repo, models=["vm"], state_dir=tmp / "triton")
            args += ["--backend", "triton", "--triton-url", triton.grpc_url]
        try:
            return _run(a, run, repo, tmp, args, duration)
        finally:
            if triton is not None:
                launcher.stop(triton)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(a: argparse.Namespace, run: Path, repo: Path, tmp: Path, args: list[str], duration: float) -> int:
    from loadtests.report import load_calls
    from serving.process import ServerProcess

    with ServerProcess(args) as srv:
        calls_path = tmp / "calls.npz"
        cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
               "--host", srv.target, "-u", str(a.users), "-r", str(a.users), "-t", f"{int(duration)}s",
               "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0", "--stop-timeout", "2",
               "--catalog", str(run / "catalog.npz"), "--candidates", a.candidates,
               "--user-rate", f"{a.rate / a.users:g}", "--latency-out", str(calls_path)]
        env = {**os.environ, "ADRANK_TOKEN": SCORE_TOKEN, "PYTHONPATH": str(ROOT)}
        locust = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        steps: list[str] = []
        errors: list[str] = []

        admin = Admin(srv.target)

        def operate() -> None:
            pb = admin.pb
            try:
                time.sleep(a.phase_s)
                _copy_v2(repo)
                admin.call("Shadow", pb.ShadowRequest(model="vm", version=2, sample_rate=0.2, actor="bench"))
                steps.append("shadow")
                time.sleep(a.phase_s)
                text = SPEC.format(interval=a.interval_s, min_requests=max(5, int(a.rate * a.interval_s * 0.05)))
                admin.call("Start", pb.StartRolloutRequest(spec_toml=text, actor="bench"))
                s = admin.wait(lambda s: s.phase != "progressing", 6 * a.interval_s + 30)
                steps.append(s.phase)
                time.sleep(a.phase_s)
                admin.call("Rollback", admin.target(reason="bench: rollback under load"))
                steps.append("rollback")
            except Exception as exc:  # noqa: BLE001 - reported with the figures
                errors.append(str(exc))

        operator = threading.Thread(target=operate)
        operator.start()
        operator.join()
        locust.wait(duration + 120)
        history = admin.history()
        admin.close()
    calls = load_calls(calls_path)
    if calls is None:
        print("locust recorded no calls", file=sys.stderr)
        return 1
    t0_ms = float(calls["t0_s"][0]) * 1000
    names = {("shadow", "shadow"): "shadow {w:g}", ("canary", "canary"): "canary {w:g}%",
             ("canary", "live"): "promote", ("live", "rolled_back"): "rollback"}
    switches = []
    for e in history:
        key = (e.get("from_state", ""), e["to_state"])
        label = names.get(key)
        if e["version"] != "2" or label is None:
            continue
        if key[0] == key[1] and "weight" not in e:
            continue
        switches.append((label.format(w=e.get("weight", 0.0)), (int(e["at_ms"]) - t0_ms) / 1000))
    figures = switch_figures(calls, switches, a.window_s)
    ok = calls["ok"].astype(bool)
    versions = {int(v): int((calls["version"] == v).sum()) for v in np.unique(calls["version"])}
    load = os.getloadavg()
    result = {"calls": int(ok.size), "failed": int((~ok).sum()), "rate": a.rate, "served_by_version": versions,
              "p99_ms": round(p99(calls["client_ms"]), 3), "switches": figures, "operator": steps,
              "operator_errors": errors, "load_average": [round(x, 2) for x in load]}
    print(f"rollout under load: {result['calls']:,} calls, {result['failed']} failed, overall p99 "
          f"{result['p99_ms']:.2f} ms; calls per version {versions}; steps {steps}")
    print(f"{'switch':<12} {'at s':>6} {'calls before/after':>19} {'failed':>7} {'p99 before':>11} "
          f"{'p99 after':>10} {'ratio':>6} | server p99 before / after (ratio)")
    for f in figures:
        print(f"{f['switch']:<12} {f['at_s']:>6.1f} {f['calls_before']:>9}/{f['calls_after']:<9} "
              f"{f['failed_after']:>7} {f['p99_before_ms']:>10.2f} {f['p99_after_ms']:>10.2f} "
              f"{f['p99_ratio']:>6.2f} | {f['server_p99_before_ms']:.2f} / {f['server_p99_after_ms']:.2f} "
              f"({f['server_p99_ratio']:.2f})")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores (figures are noisy "
          "on a shared machine)")
    if errors:
        print("operator errors: " + "; ".join(errors), file=sys.stderr)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=2))
        shutil.copy(calls_path, Path(a.json).with_suffix(".calls.npz"))  # every call, for a closer look
    within = all(f["p99_ratio"] <= a.max_p99_ratio for f in figures)
    return 0 if result["failed"] == 0 and within and not errors and len(figures) >= 5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
