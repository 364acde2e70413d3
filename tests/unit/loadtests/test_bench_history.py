"""The served-history benchmark measures the real serving stage and its baselines on the same rows."""

from loadtests import bench_history


def test_smoke_measures_served_stage_and_both_baselines():
    r = bench_history.measure(users=2_000, history=8, dim=8, requests=200, rounds=1)
    for key in ("served", "gather", "gather_decode"):
        assert r[key]["p50_us"] > 0 and r[key]["p99_us"] >= r[key]["p50_us"]
    assert r["ratio_p50_vs_gather"] == r["served"]["p50_us"] / r["gather"]["p50_us"]
    assert r["lookup_path"] in ("numba", "numpy")


def test_layers_under_the_served_stage_are_timed_on_the_compiled_path():
    r = bench_history.measure(users=2_000, history=8, dim=8, requests=200, rounds=1)
    if r["lookup_path"] != "numba":
        assert r["layers_ratio_p50_vs_gather"] == {}
        return
    assert set(r["layers_ratio_p50_vs_gather"]) == set(bench_history.LAYERS)
    for key in bench_history.LAYERS:
        assert r[key]["p50_us"] > 0
        assert r["layers_ratio_p50_vs_gather"][key] == r[key]["p50_us"] / r["gather"]["p50_us"]
