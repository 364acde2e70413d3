"""The README's CLI-only LoopFM journey through real processes, on the embedded cache and on a real
redis-server: train fm → embed → train vm --history sum → export → serve → score. Both give the same scores.

Also: re-running `embed` leaves the snapshot unchanged, and `embed --since auto` adds exactly the events
after the high-water mark while reader threads keep reading without a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import cache_fixtures
import numpy as np
import pytest

from embedding_cache import open_reader
from embedding_cache.embedded import open_snapshot
from models.data import load_dataset
from models.fm_pipeline import fm_payload
from serving.process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
EVENTS = "12000"
redis_server, redis_url = cache_fixtures.redis_server, cache_fixtures.redis_url

pytestmark = pytest.mark.slow


def adrank(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "adrank", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, f"adrank {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def fm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("journey_fm")
    adrank("train", "fm", "--events", EVENTS, "--epochs", "1", "--out", str(out))
    return out


def _journey(fm_dir: Path, out: Path, cache_flag: list[str]) -> tuple[list[dict], str]:
    """embed → train vm → export → serve → score three users (one unknown: cold start); the JSON responses."""
    embedded = adrank("embed", "--fm-checkpoint", str(fm_dir / "fm.pt"), "--events", EVENTS, *cache_flag)
    adrank("train", "vm", "--events", EVENTS, "--epochs", "1", "--out", str(out), "--fm-checkpoint",
           str(fm_dir / "fm.pt"), *cache_flag, "--history", "sum", "--history-len", "16")
    adrank("export", "--checkpoint", str(out / "vm.pt"), "--repository", str(out / "repo"), "--name", "vm")
    responses = []
    with ServerProcess(["--repository", str(out / "repo"), *cache_flag]) as srv:
        catalog = np.load(out / "catalog.npz")
        t = str(int(catalog["max_ts_ms"][0]) + 1)
        for user in (int(catalog["user_id"][0]), int(catalog["user_id"][7]), 10**9):
            text = adrank("score", "--target", srv.target, "--user", str(user), "--catalog", str(out / "catalog.npz"),
                          "--time-ms", t, "--candidates", "50", "--json")
            responses.append(json.loads(text))
    return responses, embedded


def test_cli_journey_on_the_embedded_cache_and_on_redis_gives_identical_scores(fm_dir, tmp_path, redis_url):
    local, out = _journey(fm_dir, tmp_path / "embedded", ["--cache-dir", str(tmp_path / "cache")])
    remote, _ = _journey(fm_dir, tmp_path / "redis", ["--cache-url", redis_url])
    fm_version = json.loads(json.dumps(local[0]["served_by"]))["fm_version"]
    assert fm_version.startswith("fm-") and f"of {fm_version}" in out
    for a, b in zip(local, remote, strict=True):
        assert a["served_by"]["fm_version"] == b["served_by"]["fm_version"] == fm_version
        assert [c["ad_id"] for c in a["candidates"]] == [c["ad_id"] for c in b["candidates"]]
        assert [c["p_ctr"] for c in a["candidates"]] == [c["p_ctr"] for c in b["candidates"]]
        assert [c["p_cvr"] for c in a["candidates"]] == [c["p_cvr"] for c in b["candidates"]]
    assert "FLAG_USER_HISTORY_MISSING" not in local[0].get("flags", [])
    assert "FLAG_USER_HISTORY_MISSING" in local[2]["flags"] and "FLAG_USER_HISTORY_MISSING" in remote[2]["flags"]


def test_embed_twice_keeps_the_row_count_and_since_auto_adds_exactly_the_new_events(fm_dir, tmp_path):
    events = load_dataset("synthetic", n_events=int(EVENTS), seed=0)
    cut = int(np.quantile(events["ts_ms"], 0.8))
    old = events.take(np.flatnonzero(events["ts_ms"] < cut))  # yesterday's log: same ids, same cardinality
    old.save(tmp_path / "old.npz")
    events.save(tmp_path / "all.npz")
    cache = tmp_path / "cache"
    fm = str(fm_dir / "fm.pt")
    fm_version = fm_payload(fm)["fm_version"]
    kept = {"old": _kept_rows(old["user_id"]), "all": _kept_rows(events["user_id"])}  # retention: 256 per user

    adrank("embed", "--fm-checkpoint", fm, "--events-file", str(tmp_path / "old.npz"), "--cache-dir", str(cache),
           "--codec", "float32")
    first = open_reader("embedded", cache, fm_version).coverage
    adrank("embed", "--fm-checkpoint", fm, "--events-file", str(tmp_path / "old.npz"), "--cache-dir", str(cache),
           "--codec", "float32")
    again = open_reader("embedded", cache, fm_version).coverage
    assert again["rows"] == first["rows"] == kept["old"]
    assert again["high_water_ms"] == first["high_water_ms"] == int(old["ts_ms"].max())

    users = events["user_id"]
    probe = np.unique(users)[:64]
    stop, failures, reads = threading.Event(), [], [0]

    def read_forever() -> None:
        reader = open_reader("embedded", cache, fm_version)
        while not stop.is_set():
            try:
                reader.refresh()
                hb = reader.user_history(probe, int(events["ts_ms"].max()) + 1, 8)
                assert hb.fm_version == fm_version and np.isfinite(hb.codes).all()
                reads[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                failures.append(repr(exc))

    threads = [threading.Thread(target=read_forever) for _ in range(4)]
    for th in threads:
        th.start()
    try:
        out = adrank("embed", "--fm-checkpoint", fm, "--events-file", str(tmp_path / "all.npz"), "--cache-dir",
                     str(cache), "--codec", "float32", "--since", "auto")
    finally:
        stop.set()
        for th in threads:
            th.join()
    after = open_reader("embedded", cache, fm_version)
    assert after.coverage["rows"] == kept["all"], out  # every event once: the old rows plus exactly the new
    assert f"{again['rows']:,} → {kept['all']:,} rows (+{kept['all'] - again['rows']:,})" in out
    assert after.coverage["high_water_ms"] == int(events["ts_ms"].max())
    assert failures == [] and reads[0] > 0
    # the nearline result is the snapshot a one-shot embed of the whole log gives, row for row
    adrank("embed", "--fm-checkpoint", fm, "--events-file", str(tmp_path / "all.npz"), "--cache-dir",
           str(tmp_path / "oneshot"), "--codec", "float32")
    a, b = (open_snapshot(root, fm_version) for root in (cache, tmp_path / "oneshot"))
    for field in ("user_ids", "offsets", "ts", "event_ids", "codes"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    nothing = adrank("embed", "--fm-checkpoint", fm, "--events-file", str(tmp_path / "all.npz"), "--cache-dir",
                     str(cache), "--codec", "float32", "--since", "auto")
    assert open_reader("embedded", cache, fm_version).coverage["rows"] == kept["all"], nothing


def _kept_rows(user_ids: np.ndarray, max_per_user: int = 256) -> int:
    return int(np.minimum(np.unique(user_ids, return_counts=True)[1], max_per_user).sum())


def test_embed_refuses_data_of_another_feature_schema_naming_both(fm_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "adrank", "embed", "--fm-checkpoint", str(fm_dir / "fm.pt"),
                           "--dataset", "movielens", "--cache-dir", str(tmp_path / "c")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert "feature schema mismatch" in proc.stderr and "was trained on 'synthetic' data with" in proc.stderr
    assert "the given 'movielens' data has" in proc.stderr and "Traceback" not in proc.stderr


def test_kd_variants_distil_from_the_das_log_on_disk(fm_dir, tmp_path):
    """`adrank das` logs what `train fm` logged; `train vm --kd aux --adapter` reads it and records how it
    distilled; without a log it refuses, naming the step that writes one."""
    das = tmp_path / "das.npz"
    adrank("das", "--fm-checkpoint", str(fm_dir / "fm.pt"), "--events", EVENTS, "--out", str(das))
    with np.load(das) as mine, np.load(fm_dir / "das.npz") as logged:
        assert np.array_equal(mine["event_id"], logged["event_id"])
        np.testing.assert_allclose(mine["fm_logit"], logged["fm_logit"], atol=1e-6)
    out = adrank("train", "vm", "--events", EVENTS, "--epochs", "1", "--out", str(tmp_path / "kd"), "--fm-checkpoint",
                 str(fm_dir / "fm.pt"), "--kd", "aux", "--kd-strength", "2", "--adapter", "--das", str(das))
    assert "kd=aux (2)" in out
    payload = __import__("torch").load(tmp_path / "kd" / "vm.pt", weights_only=True)
    assert payload["distill"] == {"mode": "aux", "beta": 2.0, "adapter": True, "das": str(das)}
    assert payload["fm_version"] == fm_payload(str(fm_dir / "fm.pt"))["fm_version"] and payload["history"] == {}
    proc = subprocess.run([sys.executable, "-m", "adrank", "train", "vm", "--events", EVENTS, "--out",
                           str(tmp_path / "none"), "--fm-checkpoint", str(fm_dir / "fm.pt"), "--kd", "single",
                           "--das", str(tmp_path / "absent.npz")], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 2 and "absent.npz: no DAS log there" in proc.stderr and "adrank das" in proc.stderr
