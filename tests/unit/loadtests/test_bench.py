"""loadtests.bench: rows from the cache benchmark's JSON, "not available" rows, and the markdown report."""

from __future__ import annotations

from dataclasses import asdict

from loadtests import bench


def _cache_json(redis: bool = True) -> dict:
    stats = {"p50_us": 50.0, "p99_us": 90.0, "mean_us": 55.0, "requests_per_s": 18_000.0}
    out = {"embedded": {"users": 20_000, "history": 64, "codec": "int8", "lookup": stats,
                        "numpy_gather": {**stats, "p50_us": 5.0}, "ratio_p50_vs_gather": 10.0}}
    if redis:
        out["redis"] = {"users": 2000, "lookup": {**stats, "p50_us": 600.0}}
    return out


def test_cache_rows_are_ratios_against_their_baselines() -> None:
    gather, redis = bench.cache_rows(_cache_json(), "")
    assert gather.ratio == 10.0 and "5.0 µs" in gather.baseline
    assert gather.target == "≤ 2×" and gather.met is False
    assert redis.ratio == 12.0


def test_missing_parts_read_not_available_without_failing() -> None:
    rows = bench.cache_rows(None, "embedding_cache.bench not importable")
    assert [r.measured for r in rows] == ["not available"] * 2 and all(r.ratio is None for r in rows)
    assert bench.cache_rows(_cache_json(redis=False), "")[1].measured == "not available"
    assert bench.fm_row(None, quick=True).measured == "not available"


def test_triton_row_needs_the_embedded_figures(tmp_path) -> None:
    row = bench.triton_row(tmp_path, None, quick=True, embedded=None)
    assert row.measured == "not available" and "embedded" in row.note


def test_triton_row_without_the_triton_parts_is_not_available(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(bench, "_find_spec", lambda module: None)
    row = bench.triton_row(tmp_path, None, quick=True, embedded={"client_p50_us": 1000.0})
    assert row.measured == "not available" and "serving.backends.triton" in row.note


def test_markdown_has_machine_command_and_table() -> None:
    rows = [*bench.cache_rows(_cache_json(), ""), bench.Row.unavailable("Triton backend vs embedded", "none")]
    text = bench.markdown({"command": "adrank bench cache --quick", "date": "today", "wall_s": 3.0,
                           "machine": {"platform": "Linux", "python": "3.11", "cpus": 2, "processor": "x86_64"},
                           "rows": [asdict(r) for r in rows]})
    assert "`adrank bench cache --quick`" in text and "2 CPUs" in text
    assert "| cache lookup vs numpy gather | 50.0 µs p50 (p99 90.0) | 5.0 µs | 10.00× |" in text
    assert "| Triton backend vs embedded | not available |" in text


def test_usage_error_exits_2() -> None:
    assert bench.main(["nonsense"]) == 2


def test_doc_keeps_hand_written_text_around_the_generated_block(tmp_path) -> None:
    doc = tmp_path / "benchmarks.md"
    bench.write_doc(doc, "first\n")
    doc.write_text(doc.read_text() + "\n## Analysis\nhand-written\n")
    bench.write_doc(doc, "second\n")
    text = doc.read_text()
    assert "second" in text and "first" not in text and text.endswith("## Analysis\nhand-written\n")
