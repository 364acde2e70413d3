"""`adrank bench all|serve|cache [--json FILE] [--quick]`: every serving cost as a ratio against a
baseline measured in the same run, written to docs/benchmarks.md (+ JSON).

| row | measured | baseline |
|---|---|---|
| serve | Score end to end (server child process, real gRPC, 200 candidates) | raw `session.run`, same features |
| cache | embedding-cache lookup (1 user + 200 ads) | numpy gather of the same bytes (`embedding_cache.bench`) |
| fm | the FoundationModel run live on one user's history (T=256) | the cache lookup that replaces it |
| triton | Score via the Triton backend | Score via the embedded backend |
| redis | Redis cache lookup | embedded cache lookup (`embedding_cache.bench`) |

A row whose parts are not installed reads "not available" and does not fail the run. ``serve`` also
profiles the in-process Score path with pyinstrument and records where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from embedding_cache.latency import percentiles
from loadtests import bench_serve

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


@dataclass
class Row:
    """One row of the table: ratio = measured / baseline (for the FM row, how many times the lookup saves)."""

    name: str
    measured: str
    baseline: str
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    data: dict = field(default_factory=dict)

    @classmethod
    def unavailable(cls, name: str, why: str) -> Row:
        return cls(name, "not available", "", None, "", None, why)


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5, check=False).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "Thread(s) per core", "L2 cache", "L3 cache", "Hypervisor vendor"):
                info[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


# ---------------------------------------------------------------- cache, FM, redis (delegated)

def _cache_bench(quick: bool, tmp: Path) -> tuple[dict | None, str]:
    try:
        from embedding_cache import bench as cache_bench
    except ImportError as exc:
        return None, f"embedding_cache.bench not importable ({exc})"
    out = tmp / "cache.json"
    argv = ["--json", str(out), "--users", "20000" if quick else "200000", "--requests", "1000" if quick else "3000",
            "--redis-users", "2000" if quick else "20000", "--ads-total", "20000" if quick else "100000"]
    try:
        cache_bench.main(argv)  # its exit code is its own p99 target; the figures are what we need
    except Exception as exc:  # noqa: BLE001 - another package's failure becomes a table note, not a crash
        return None, f"embedding_cache.bench failed: {type(exc).__name__}: {exc}"
    return (json.loads(out.read_text()), "") if out.exists() else (None, "embedding_cache.bench wrote no JSON")


def cache_rows(cache: dict | None, why: str) -> list[Row]:
    if cache is None:
        return [Row.unavailable("cache lookup vs numpy gather", why), Row.unavailable("Redis vs embedded cache", why)]
    e = cache["embedded"]
    ratio = e["ratio_p50_vs_gather"]
    rows = [Row("cache lookup vs numpy gather", f"{e['lookup']['p50_us']:.1f} µs p50 (p99 {e['lookup']['p99_us']:.1f})",
                f"{e['numpy_gather']['p50_us']:.1f} µs", ratio, "≤ 2×", ratio <= 2.0,
                f"{e['users']:,} users × L={e['history']} {e['codec']}, 1 user + 200 ads per lookup, "
                f"{e.get('ids', 'dense')} ids, {e.get('lookup_path', 'numpy')} lookup", e)]
    r = cache.get("redis")
    if r:
        ratio = r["lookup"]["p50_us"] / e["lookup"]["p50_us"]
        measured = f"{r['lookup']['p50_us']:.1f} µs p50 (p99 {r['lookup']['p99_us']:.1f})"
        rows.append(Row("Redis vs embedded cache", measured, f"{e['lookup']['p50_us']:.1f} µs", ratio, "", None,
                        f"Redis with {r['users']:,} users (local redis-server)", r))
    else:
        rows.append(Row.unavailable("Redis vs embedded cache", "no redis-server found (or --redis-users 0)"))
    return rows


def served_history_rows(quick: bool) -> tuple[list[Row], dict | None]:
    """The history stage as the serving path calls it (HistoryProvider.inputs: one lookup + the model's
    tensors) against numpy gathers of the same user rows, measured in this run (loadtests/bench_history.py)."""
    from loadtests import bench_history

    try:
        r = bench_history.measure(users=20_000 if quick else 200_000, requests=1_000 if quick else 3_000,
                                  rounds=1 if quick else 3)
    except Exception as exc:  # noqa: BLE001 - a failed measurement becomes a table note, not a crash
        why = f"bench_history failed: {type(exc).__name__}: {exc}"
        return [Row.unavailable("served history stage vs numpy gather", why)], None
    shape = f"{r['users']:,} users × L={r['history']} d={r['dim']} {r['codec']}, {r['lookup_path']} lookup"
    served = f"{r['served']['p50_us']:.1f} µs p50 (p99 {r['served']['p99_us']:.1f})"
    rows = [Row("served history stage vs numpy gather", served, f"{r['gather']['p50_us']:.1f} µs",
                r["ratio_p50_vs_gather"], "≤ 1.5×", r["ratio_p50_vs_gather"] <= 1.5,
                f"{shape}; baseline: the same bytes gathered by precomputed row numbers", r),
            Row("served history stage vs numpy gather + decode", served, f"{r['gather_decode']['p50_us']:.1f} µs",
                r["ratio_p50_vs_gather_decode"], "≤ 1.5×", r["ratio_p50_vs_gather_decode"] <= 1.5,
                f"{shape}; baseline: the same bytes gathered and decoded to float32", r)]
    return rows, r


def fm_row(cache: dict | None, quick: bool, history_len: int = 256, candidates: int = 200) -> Row:
    """The FM run live on one user's history versus the cache lookup that replaces it."""
    name = "live FM vs cache lookup"
    if cache is None:
        return Row.unavailable(name, "needs the cache lookup figure (embedding_cache.bench)")
    try:
        import torch

        from models.fm.config import FMConfig
        from models.fm.model import FoundationModel
    except ImportError as exc:
        return Row.unavailable(name, f"models.fm not importable ({exc})")
    torch.set_num_threads(1)  # the cache lookup is single-threaded too
    cfg = FMConfig(n_items=100_000, n_categories=100, n_sparse=1000, max_len=history_len)
    model = FoundationModel(cfg).eval()
    rng = np.random.default_rng(0)

    def inputs(b: int) -> dict:
        t = history_len
        return {"hist_item": torch.from_numpy(np.tile(rng.integers(1, cfg.n_items, (1, t)), (b, 1))),
                "hist_category": torch.from_numpy(np.tile(rng.integers(1, cfg.n_categories, (1, t)), (b, 1))),
                "hist_type": torch.from_numpy(np.tile(rng.integers(0, cfg.n_event_types, (1, t)), (b, 1))),
                "hist_age": torch.from_numpy(np.tile(rng.uniform(0, 5, (1, t)).astype(np.float32), (b, 1))),
                "hist_mask": torch.ones(b, t, dtype=torch.bool),
                "target_sparse": torch.from_numpy(rng.integers(0, cfg.n_sparse, (b, cfg.n_sparse_fields))),
                "target_dense": torch.from_numpy(rng.standard_normal((b, cfg.dense_dim)).astype(np.float32))}

    out = {}
    for b in (1, candidates):
        x = inputs(b)
        n = (10 if quick else 30) if b > 1 else (50 if quick else 200)
        with torch.inference_mode():
            for _ in range(3):
                model(**x)
            us = []
            for _ in range(n):
                t0 = time.perf_counter()
                model(**x)
                us.append((time.perf_counter() - t0) * 1e6)
        out[b] = percentiles(us, (50,))["p50"]
    lookup = cache["embedded"]["lookup"]["p50_us"]
    ratio = out[1] / lookup
    return Row(name, f"{out[1]:,.0f} µs FM forward (B=1, T={history_len})", f"{lookup:.1f} µs cache lookup",
               ratio, "≥ 20×", ratio >= 20,
               f"FM with every candidate as target (B={candidates}): {out[candidates]:,.0f} µs = "
               f"{out[candidates] / lookup:,.0f}× the lookup; FMConfig defaults, 1 torch thread",
               {"fm_b1_us": out[1], f"fm_b{candidates}_us": out[candidates], "lookup_us": lookup})


# ---------------------------------------------------------------- triton

def triton_row(run_dir: Path, triton_url: str | None, quick: bool, embedded: dict | None) -> Row:
    name = "Triton backend vs embedded"
    missing = [m for m in ("serving.backends.triton", "serving.triton.launcher") if _find_spec(m) is None]
    if missing:
        return Row.unavailable(name, f"{', '.join(missing)} not present")
    if embedded is None:
        return Row.unavailable(name, "needs the embedded serve figures")
    if triton_url:
        tri = bench_serve.end_to_end(run_dir, ["--backend", "triton", "--triton-url", triton_url], quick=quick)
        where = f"Triton at {triton_url}"
    else:
        tri = _with_bundled_triton(run_dir, quick)
        where = "the bundled tritonserver (python backend running the same model.onnx), started for this run"
    ratio = tri["client_p50_us"] / embedded["client_p50_us"]
    return Row(name, f"{tri['client_p50_us']:,.0f} µs p50", f"{embedded['client_p50_us']:,.0f} µs p50", ratio,
               note=f"Score end to end, 200 candidates, {where}", data=tri)


def _with_bundled_triton(run_dir: Path, quick: bool) -> dict:
    """Copies the run's repository, writes python-backend Triton configs, starts the bundled server,
    measures Score through the Triton backend, stops the server."""
    import shutil
    import tempfile

    from exporters.triton_repo import write_triton_model
    from serving.model_repository import model_names
    from serving.triton.launcher import TritonServer

    with tempfile.TemporaryDirectory(prefix="adrank-bench-triton-") as tmp:
        work = Path(tmp)
        shutil.copytree(run_dir / "model_repository", work / "model_repository")
        shutil.copy(run_dir / "catalog.npz", work / "catalog.npz")
        names = model_names(work / "model_repository")
        for name in names:
            write_triton_model(work / "model_repository", name, target="python")
        with TritonServer(work / "model_repository", models=names, state_dir=work / "triton") as handle:
            return bench_serve.end_to_end(work, ["--backend", "triton", "--triton-url", handle.grpc_url], quick=quick)


def _find_spec(module: str):
    import importlib.util

    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None


# ---------------------------------------------------------------- report

def _ratio(r: Row) -> str:
    return "—" if r.ratio is None else f"{r.ratio:,.2f}×"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Produced by `loadtests/bench.py`; every figure is a ratio against a baseline measured in the same run,",
        "on the same machine, so the ratios travel better than the absolute numbers.",
        "",
        f"Command: `{results['command']}` ({results['date']}, {results['wall_s']:.0f} s)",
        "",
        f"Machine: {m.get('Model name', m['processor'])}, {m['cpus']} CPUs"
        f"{' (' + m['Hypervisor vendor'] + ' VM)' if m.get('Hypervisor vendor') else ''}, {m['platform']}, "
        f"Python {m['python']}, onnxruntime {m.get('onnxruntime', '?')}. The CPUs are shared with other work, "
        "so absolute figures are noisy; run again before quoting one.",
        "",
        "| benchmark | measured | baseline | ratio | target | met | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:,.2f}×"
        cells = (r["name"], r["measured"], r["baseline"], ratio, r["target"], met, r["note"])
        lines.append("| " + " | ".join(cells) + " |")
    serve = results.get("serve")
    if serve:
        lines += ["", "## Score path, 200 candidates", "", bench_serve.stage_table(serve), "",
                  bench_serve.profile_markdown(serve)]
        cap = (serve.get("e2e") or {}).get("capacity")
        if cap:
            lines += ["", "## Capacity ramp (locust in a child process, closed loop, 200 candidates)", "",
                      f"`{cap['command']}`", "", capacity_table(cap)]
    return "\n".join(lines) + "\n"


def capacity_table(cap: dict) -> str:
    lines = ["| users | req/s | candidates/s | client p50 ms | client p99 ms | server p99 ms | errors | p99 ok |",
             "|---|---|---|---|---|---|---|---|"]
    for s in cap["steps"]:
        lines.append(f"| {s['users']} | {s['rps']:,.0f} | {s['candidates_per_s']:,.0f} | {s['p50_ms']:.2f} | "
                     f"{s['p99_ms']:.2f} | {s['server_p99_ms']:.2f} | {s['failures']} | {'yes' if s['ok'] else 'no'} |")
    h = cap.get("half_capacity")
    if h:
        lines += ["", f"At half capacity ({h['target_rps']:,.0f} req/s offered, {h['rps']:,.0f} achieved): client p50 "
                      f"{h['p50_ms']:.2f} / p99 {h['p99_ms']:.2f} ms, server p50 {h['server_p50_ms']:.2f} / "
                      f"p99 {h['server_p99_ms']:.2f} ms."]
    return "\n".join(lines)


BEGIN, END = "<!-- bench:begin (generated by `adrank bench`; edit outside these markers) -->", "<!-- bench:end -->"


def write_doc(path: Path, generated: str, *, begin: str = BEGIN, end: str = END, heading: str | None = None) -> None:
    """Replaces the generated block between `begin` and `end` in `path`, keeping hand-written text before
    and after it; a file without the block gets it appended (under `heading` when given). Written to a
    temporary file and renamed, so the report is never left half written."""
    block = f"{begin}\n{generated}{end}\n"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    elif heading is not None:
        text = old.rstrip("\n") + f"\n\n{heading}\n\n" + block
    else:
        text = block
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _print(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="adrank bench (ratios against baselines measured in this run)")
    for col in ("benchmark", "measured", "baseline", "ratio", "target", "met"):
        table.add_column(col)
    for r in rows:
        met = "" if r.met is None else ("[green]yes[/]" if r.met else "[red]no[/]")
        table.add_row(r.name, r.measured if r.ratio is not None or r.measured != "not available" else
                      f"not available: {r.note}", r.baseline, _ratio(r), r.target, met)
    Console().print(table)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adrank bench", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("all", "serve", "cache", "triton", "fastpath"),
                   help="all | serve | cache (embedding cache + the served history stage) | triton (the Triton row's "
                        "own benchmark, `adrank bench triton --help`) | fastpath (columns, workers, floors and "
                        "h2load capacity, `adrank bench fastpath --help`)")
    p.add_argument("--json", default=None, help="write all figures here")
    p.add_argument("--quick", action="store_true", help="fewer iterations and a smaller cache (≈ 1 min)")
    p.add_argument("--run", default="runs/demo", help="folder with model_repository/ and catalog.npz; "
                                                      "a tiny model is trained into a temp dir when absent")
    p.add_argument("--triton-url", default=None, help="a running tritonserver for the Triton row")
    p.add_argument("--doc", default="", help=f"also rewrite this markdown report's generated block (the committed "
                                            f"one is {DOC.relative_to(ROOT)}); default: none")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["triton"]:  # its own flags: the Triton row's benchmark (loadtests/bench_triton.py)
        from loadtests.bench_triton import main as triton_bench

        return triton_bench(argv[1:])
    if argv[:1] == ["fastpath"]:  # its own flags: columns, workers and floors (loadtests/bench_fastpath.py)
        from loadtests.bench_fastpath import main as fastpath_bench

        return fastpath_bench(argv[1:])
    try:
        a = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    t0 = time.perf_counter()
    results: dict = {"command": "adrank bench " + " ".join(argv),
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine()}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="adrank-bench-") as tmp_s:
        tmp = Path(tmp_s)
        serve = None
        if a.what in ("all", "serve"):
            run_dir = bench_serve.ensure_run(Path(a.run), tmp)
            serve = bench_serve.measure(run_dir, quick=a.quick)
            results["serve"] = serve
            rows += bench_serve.rows(serve, Row)
            rows.append(triton_row(run_dir, a.triton_url, a.quick, serve.get("e2e")))
        if a.what in ("all", "cache"):
            cache, why = _cache_bench(a.quick, tmp)
            rows += cache_rows(cache, why)
            served_rows, results["served_history"] = served_history_rows(a.quick)
            rows += served_rows
            rows.append(fm_row(cache, a.quick))
            results["cache"] = cache
    results["rows"] = [asdict(r) for r in rows]
    results["wall_s"] = time.perf_counter() - t0
    _print(rows)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(results, indent=2, default=float))
    if a.doc:
        Path(a.doc).parent.mkdir(parents=True, exist_ok=True)
        write_doc(Path(a.doc), markdown(results))
        print(f"wrote {a.doc}" + (f" and {a.json}" if a.json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
