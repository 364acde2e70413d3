"""The cache benchmark runs end to end at a tiny size and writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

from embedding_cache.bench import main


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    rc = main(["--users", "500", "--history", "8", "--ads-total", "1000", "--requests", "50",
               "--redis-users", "0", "--json", str(out)])
    results = json.loads(out.read_text())
    assert rc in (0, 1) and results["embedded"]["rows"] == 500 * 8
    assert results["embedded"]["lookup"]["p99_us"] > 0 and results["embedded"]["ratio_p50_vs_gather"] > 0
    assert {c["codec"] for c in results["codecs"]} == {"float32", "float16", "int8", "int4", "pq"}
