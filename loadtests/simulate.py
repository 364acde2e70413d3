"""Traffic from the synthetic world, sent to a real server; clicks and conversions drawn from the world's truth.

Why: the loop (serve → log → join labels → retrain) can only be tested end to end where the true
click and conversion probabilities of *served* impressions are known. The simulator plays the users
and the ad client of the synthetic world (`models.data.synthetic`): it sends the world's users with
candidates drawn as the world draws them, shows the top `show_k` of each response, and draws clicks
and conversions for the shown ads from `SyntheticWorld.true_p_click` / `true_p_conversion` — the same
functions the training events were drawn from — with delays in simulated time.

Why here (`loadtests`) and not in `models`: it is a client of the serving API, like the load
generator; it imports grpc and the wire messages, which `models` (the offline side) never does.

Simulated time: request i is stamped `start_ms + i / rps · time_scale` seconds (default start: the
end of the world's generated range, so the model has seen none of it), whatever the wall clock does,
so a run's requests and labels depend on its seeds only (against a fake scorer, exactly). The
server refuses request times in its future, so keep `start + duration · time_scale` behind its clock.

Delay model (`DelayModel`): a click lands lognormally seconds to minutes after its impression (median
20 s, clipped to [1 s, 30 min]); a conversion lands lognormally hours to days after its click (median
6 h, clipped to [1 min, 30 days]), so a 7-day conversion window misses a few of them, as in life.

Outputs in `out`: `labels.parquet` (`models.data.labels`: impression, click and conversion events),
`truth.parquet` (the true p_click / p_conversion of each shown impression, for oracle metrics only,
never for training), `summary.json`; with `request_log`, also the client's own request log
(`serving.requestlog`), so the join can run before the server logs requests itself.

Entry points: `run_simulation(target, rps, duration_s, ...)`, and `main(argv)` for
`adrank simulate --target H:P --rps R --duration S --out DIR` (`python -m loadtests.simulate ...`).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.catalog import build_catalog
from models.data.labels import labels_table, write_labels
from models.data.synthetic import MS_PER_HOUR, START_MS, SyntheticConfig, build_world, generate_synthetic
from models.vocab import DEVICES, PLACEMENTS
from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc

Scorer = Callable[[ranking_pb2.ScoreRequest], ranking_pb2.ScoreResponse]


@dataclass(frozen=True, kw_only=True)
class DelayModel:
    """Label delays in simulated seconds: lognormal around a median, clipped to [min, max]."""

    click_median_s: float = 20.0
    click_sigma: float = 1.0
    click_min_s: float = 1.0
    click_max_s: float = 1_800.0
    conversion_median_s: float = 6 * 3_600.0
    conversion_sigma: float = 1.2
    conversion_min_s: float = 60.0
    conversion_max_s: float = 30 * 86_400.0

    def __post_init__(self) -> None:
        for kind in ("click", "conversion"):
            lo, med, hi = (getattr(self, f"{kind}_{p}_s") for p in ("min", "median", "max"))
            if not 0 < lo <= med <= hi:
                raise ValueError(f"{kind} delays need 0 < min <= median <= max, got {lo}, {med}, {hi}")
            if getattr(self, f"{kind}_sigma") < 0:
                raise ValueError(f"{kind}_sigma must be >= 0")

    def draw_ms(self, rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
        med, sigma = getattr(self, f"{kind}_median_s"), getattr(self, f"{kind}_sigma")
        s = np.clip(rng.lognormal(np.log(med), sigma, n), getattr(self, f"{kind}_min_s"),
                    getattr(self, f"{kind}_max_s"))
        return np.round(s * 1000).astype(np.int64)


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """What traffic looks like. `world` must be the world the served model was trained on
    (`adrank train vm --n-events N --seed S` trains on `SyntheticConfig(n_events=N, seed=S)`)."""

    world: SyntheticConfig = field(default_factory=SyntheticConfig)
    seed: int = 0  # traffic seed: users, candidates, labels (the world has its own)
    n_candidates: int = 50
    show_k: int = 3  # impressions per request: the top show_k of the response
    time_scale: float = 60.0  # simulated seconds per second of the run
    start_ms: int | None = None  # default: the end of the world's generated range
    concurrency: int = 8  # calls in flight against a real server
    paced: bool = True  # False: send as fast as answers come (simulated time is unchanged)
    timeout_s: float = 5.0
    model: str = ""
    version: int | None = None
    recent_k: int = 5  # recent clicked categories the simulated feature store sends
    delays: DelayModel = field(default_factory=DelayModel)

    def __post_init__(self) -> None:
        if not 1 <= self.n_candidates <= self.world.n_ads:
            raise ValueError(f"n_candidates must be in [1, {self.world.n_ads}], got {self.n_candidates}")
        if not 1 <= self.show_k <= self.n_candidates:
            raise ValueError(f"show_k must be in [1, n_candidates], got {self.show_k}")
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")
        if not 1 <= self.concurrency <= 1024:
            raise ValueError(f"concurrency must be in [1, 1024], got {self.concurrency}")
        if self.world.n_placements > len(PLACEMENTS) or self.world.n_devices > len(DEVICES):
            raise ValueError(f"the wire vocabulary has {len(PLACEMENTS)} placements and {len(DEVICES)} devices; "
                             f"the world has {self.world.n_placements} and {self.world.n_devices}")

    @property
    def first_ms(self) -> int:
        return self.start_ms if self.start_ms is not None else START_MS + self.world.days * 24 * MS_PER_HOUR


@dataclass
class _Shown:
    """What the simulator must remember of a request until its answer arrives."""

    index: int
    user: int
    offset_ms: int
    placement: int
    hour: int
    intent: int


class SimulatedTraffic:
    """The world's users and ad client: builds request i, and turns its response into label events.

    Usage::

        traffic = SimulatedTraffic(SimulationConfig(world=SyntheticConfig(n_events=20_000)), n_requests=100)
        request, state = traffic.request(0)
        traffic.observe(state, request, response)
    """

    def __init__(self, config: SimulationConfig, n_requests: int, rps: float) -> None:
        self.config, self.n_requests, self.rps = config, n_requests, rps
        self.world = build_world(config.world)
        w = self.world
        rng = np.random.default_rng([config.seed, 0])
        self._users = rng.choice(len(w.segment), size=n_requests, p=w.activity / w.activity.sum())
        self._placements = rng.integers(0, config.world.n_placements, n_requests)
        self._devices = rng.integers(0, config.world.n_devices, n_requests)
        self._rng = np.random.default_rng([config.seed, 1])
        self._next = 0
        # the feature store at the start: each user's latest clicked categories in the generated events
        catalog = build_catalog(generate_synthetic(config.world), config.recent_k)
        self.recent = np.full((len(w.segment), config.recent_k), -1, dtype=np.int64)
        self.recent[catalog["user_id"]] = catalog["user_recent"]
        self._pending_clicks: list[tuple[int, int, int]] = []  # (event_ms, user, category), a heap
        self.labels: dict[str, list] = {k: [] for k in ("request_id", "ad_id", "impression_ms", "event", "event_ms")}
        self.truth: dict[str, list] = {k: [] for k in ("request_id", "ad_id", "position", "p_click", "p_conversion")}

    def time_ms(self, i: int) -> int:
        return self.config.first_ms + round(i * 1000.0 * self.config.time_scale / self.rps)

    def request_id(self, i: int) -> str:
        return f"sim{self.config.seed}-{i:09d}"

    def _candidates(self, rng: np.random.Generator, intent: int) -> np.ndarray:
        """Distinct ads, each from the session's intent category with the world's show rate, as events are."""
        w, n = self.world, self.config.n_candidates
        start, count = int(w.cat_start[intent]), int(w.cat_count[intent])
        k = min(int(rng.binomial(n, self.config.world.intent_show_rate)), count)
        picked = (start + rng.choice(count, size=k, replace=False)).tolist()
        seen = set(picked)
        while len(picked) < n:  # the rest uniformly, distinct: rejection beats a permutation of every ad
            for ad in rng.integers(0, len(w.ad_cat), 2 * (n - len(picked))).tolist():
                if ad not in seen and len(picked) < n:
                    seen.add(ad)
                    picked.append(ad)
        return rng.permutation(np.array(picked, dtype=np.int64))

    def request(self, i: int) -> tuple[ranking_pb2.ScoreRequest, _Shown]:
        w, config = self.world, self.config
        if i != self._next:
            raise ValueError(f"requests are built in order: expected request {self._next}, got {i}")
        self._next += 1
        t = self.time_ms(i)
        while self._pending_clicks and self._pending_clicks[0][0] < t:  # clicks the feature store has seen
            _, u, cat = heapq.heappop(self._pending_clicks)
            self.recent[u, 1:] = self.recent[u, :-1].copy()
            self.recent[u, 0] = cat
        user, offset = int(self._users[i]), t - START_MS
        intent = int(w.intent_category(np.array([user]), np.array([offset]))[0])
        ads = self._candidates(self._rng, intent)  # request(i) is always called in order of i
        placement, hour = int(self._placements[i]), int((t // MS_PER_HOUR) % 24)
        # top_k = the slots the ad client has: the server still scores every candidate
        req = ranking_pb2.ScoreRequest(request_id=self.request_id(i), user_id=user, request_time_ms=t,
                                       top_k=config.show_k)
        req.context.placement = PLACEMENTS[placement]
        req.context.device = DEVICES[int(self._devices[i])]
        req.user.segment = int(w.segment[user])
        req.user.recent_categories.extend(int(c) for c in self.recent[user] if c >= 0)
        req.candidates.extend(
            ranking_pb2.Candidate(ad_id=a, advertiser_id=v, campaign_id=c, category=g, bid=b)
            for a, v, c, g, b in zip(ads.tolist(), w.ad_advertiser[ads].tolist(), w.ad_campaign[ads].tolist(),
                                     w.ad_cat[ads].tolist(), w.ad_bid[ads].astype(np.float64).tolist(), strict=True))
        if config.model:
            req.model.name = config.model
        if config.version is not None:
            req.model.version = config.version
        return req, _Shown(i, user, offset, placement, hour, intent)

    def observe(self, state: _Shown, request: ranking_pb2.ScoreRequest, response: ranking_pb2.ScoreResponse) -> int:
        """Shows the top show_k of `response`, draws their labels; returns the number of impressions."""
        idx = np.array([c.request_index for c in response.candidates[:self.config.show_k]], dtype=np.int64)
        if not len(idx):
            return 0
        ads = np.array([request.candidates[j].ad_id for j in idx], dtype=np.int64)
        n = len(ads)
        users = np.full(n, state.user)
        p_click = self.world.true_p_click(users, ads, np.full(n, state.offset_ms), np.full(n, state.placement),
                                          np.full(n, state.hour), np.full(n, state.intent))
        p_conv = self.world.true_p_conversion(users, ads)
        rng = np.random.default_rng([self.config.seed, 2, state.index])
        click = rng.random(n) < p_click
        conversion = click & (rng.random(n) < p_conv)
        t = START_MS + state.offset_ms
        click_ms = t + self.config.delays.draw_ms(rng, "click", n)
        conv_ms = click_ms + self.config.delays.draw_ms(rng, "conversion", n)
        rid = request.request_id
        for j in range(n):
            ad = int(ads[j])
            events = [("impression", t)]
            if click[j]:
                events.append(("click", int(click_ms[j])))
                heapq.heappush(self._pending_clicks, (int(click_ms[j]), state.user, int(self.world.ad_cat[ad])))
            if conversion[j]:
                events.append(("conversion", int(conv_ms[j])))
            for kind, when in events:
                for key, value in zip(self.labels, (rid, ad, t, kind, when), strict=True):
                    self.labels[key].append(value)
            for key, value in zip(self.truth, (rid, ad, j, float(p_click[j]), float(p_conv[j])), strict=True):
                self.truth[key].append(value)
        return n

    def label_table(self) -> pa.Table:
        return labels_table(**self.labels)

    def truth_table(self) -> pa.Table:
        return pa.table({"request_id": pa.array(self.truth["request_id"], pa.string()),
                         "ad_id": pa.array(self.truth["ad_id"], pa.int64()),
                         "position": pa.array(self.truth["position"], pa.int32()),
                         "p_click": pa.array(self.truth["p_click"], pa.float32()),
                         "p_conversion": pa.array(self.truth["p_conversion"], pa.float32())})


@dataclass(frozen=True)
class SimulationResult:
    """Counts of one run and where its files are."""

    requests: int
    ok: int
    errors: dict[str, int]
    impressions: int
    clicks: int
    conversions: int
    first_ms: int
    last_ms: int
    wall_s: float
    latency_ms_p50: float
    latency_ms_p99: float
    labels_path: str
    truth_path: str
    request_log: str | None = None
    request_log_written: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


async def _drive(traffic: SimulatedTraffic, call: Callable, config: SimulationConfig, on_answer: Callable,
                 progress: Callable[[int], None]) -> tuple[dict[str, int], list[float]]:
    """Sends every request (paced at rps when asked), at most `concurrency` in flight."""
    errors: dict[str, int] = {}
    latencies: list[float] = []
    slots = asyncio.Semaphore(config.concurrency)
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def one(i: int) -> None:
        try:
            request, state = traffic.request(i)
            start = time.perf_counter()
            try:
                response = await call(request)
            except grpc.RpcError as exc:
                code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
                errors[code] = errors.get(code, 0) + 1
                return
            latencies.append((time.perf_counter() - start) * 1000)
            on_answer(state, request, response)
        finally:
            slots.release()
            progress(1)

    tasks = []
    for i in range(traffic.n_requests):
        if config.paced:
            delay = t0 + i / traffic.rps - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await slots.acquire()
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return errors, latencies


def run_simulation(target: str | None, rps: float, duration_s: float, *, out: str | Path,
                   config: SimulationConfig = SimulationConfig(), score: Scorer | None = None,
                   request_log: str | Path | None = None, progress: bool = False) -> SimulationResult:
    """Sends `rps · duration_s` requests to `target` (HOST:PORT, plain insecure channel) or to `score`
    (a callable, for tests), shows the top `show_k` of each answer and writes their labels to `out`.

    `request_log`: a folder where the simulator logs each exchange it saw (`serving.requestlog`), for
    joining before the server logs requests itself.
    """
    if (target is None) == (score is None):
        raise ValueError("give exactly one of target (HOST:PORT) and score (a callable)")
    if not rps > 0 or not duration_s > 0:
        raise ValueError(f"rps and duration_s must be > 0, got {rps} and {duration_s}")
    n_requests = max(1, round(rps * duration_s))
    traffic = SimulatedTraffic(config, n_requests, rps)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sink = None
    if request_log is not None:
        from serving.requestlog import RequestLogSink, SinkConfig, record_from_exchange

        sink = RequestLogSink(SinkConfig(folder=str(request_log), queue_size=max(4096, n_requests)))
    counts = {"ok": 0, "impressions": 0}

    def on_answer(state: _Shown, request: ranking_pb2.ScoreRequest, response: ranking_pb2.ScoreResponse) -> None:
        counts["ok"] += 1
        counts["impressions"] += traffic.observe(state, request, response)
        if sink is not None:
            tm = response.timing
            stages = {"total": tm.total_us, "features": tm.features_us, "cache": tm.cache_us,
                      "inference": tm.inference_us}
            sink.offer(record_from_exchange(request, response, stage_us=stages))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_requests, desc="simulate", unit="req")
    tick = bar.update if bar is not None else (lambda n: None)
    t0 = time.perf_counter()
    try:
        if score is not None:
            async def call(request: ranking_pb2.ScoreRequest) -> ranking_pb2.ScoreResponse:
                return score(request)

            errors, latencies = asyncio.run(_drive(traffic, call, config, on_answer, tick))
        else:
            errors, latencies = asyncio.run(_against_target(target, traffic, config, on_answer, tick))
    finally:
        if bar is not None:
            bar.close()
        written = sink.close().written if sink is not None else 0
    wall = time.perf_counter() - t0
    labels = write_labels(out / "labels.parquet", traffic.label_table())
    truth = out / "truth.parquet"
    pq.write_table(traffic.truth_table(), truth)
    events = traffic.labels["event"]
    lat = np.array(latencies) if latencies else np.zeros(1)
    result = SimulationResult(
        requests=n_requests, ok=counts["ok"], errors=errors, impressions=counts["impressions"],
        clicks=events.count("click"), conversions=events.count("conversion"), first_ms=traffic.time_ms(0),
        last_ms=traffic.time_ms(n_requests - 1), wall_s=round(wall, 3),
        latency_ms_p50=float(np.percentile(lat, 50)), latency_ms_p99=float(np.percentile(lat, 99)),
        labels_path=str(labels), truth_path=str(truth),
        request_log=str(request_log) if request_log is not None else None, request_log_written=written)
    (out / "summary.json").write_text(json.dumps({**result.to_dict(), "rps": rps, "duration_s": duration_s,
                                                  "config": asdict(config)}, indent=2, default=str))
    return result


async def _against_target(target: str, traffic: SimulatedTraffic, config: SimulationConfig, on_answer: Callable,
                          tick: Callable[[int], None]) -> tuple[dict[str, int], list[float]]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ranking_pb2_grpc.AdRankingStub(channel)

        async def call(request: ranking_pb2.ScoreRequest) -> ranking_pb2.ScoreResponse:
            return await stub.Score(request, timeout=config.timeout_s)

        return await _drive(traffic, call, config, on_answer, tick)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adrank simulate", description="Simulated users of the synthetic world "
                                "against a running server; writes the labels of the impressions shown.")
    p.add_argument("--target", required=True, help="HOST:PORT of the ranking server (plain gRPC)")
    p.add_argument("--rps", type=float, default=50.0, help="requests per second (default 50)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    p.add_argument("--out", default="runs/simulate", help="folder for labels.parquet, truth.parquet, summary.json")
    p.add_argument("--n-events", type=int, default=300_000, help="the world the model was trained on (as train vm)")
    p.add_argument("--world-seed", type=int, default=0, help="the world's seed (train vm --seed)")
    p.add_argument("--seed", type=int, default=0, help="traffic seed")
    p.add_argument("--candidates", type=int, default=50, help="candidates per request")
    p.add_argument("--show-k", type=int, default=3, help="impressions per request (top k of the response)")
    p.add_argument("--time-scale", type=float, default=60.0, help="simulated seconds per second of the run")
    p.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    p.add_argument("--after", default=None, help="summary.json of an earlier run: this run's simulated time "
                   "starts where that one's ended (the next hour of the same world; give another --seed)")
    p.add_argument("--model", default="", help="model name to pin (default: the server's)")
    p.add_argument("--client-log", default=None, help="also log each exchange here (serving.requestlog format)")
    p.add_argument("--click-delay-median-s", type=float, default=DelayModel.click_median_s)
    p.add_argument("--conversion-delay-median-s", type=float, default=DelayModel.conversion_median_s)
    return p


def start_after(summary_path: str | Path, seed: int, rps: float, time_scale: float) -> int:
    """The simulated start of a run that continues the one `summary_path` describes: one request gap after
    its last request. The same traffic seed would reuse its request ids, so it is refused."""
    try:
        earlier = json.loads(Path(summary_path).read_text())
        last_ms, earlier_seed = int(earlier["last_ms"]), int(earlier["config"]["seed"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--after: {summary_path} is not a simulation summary ({exc})") from exc
    if earlier_seed == seed:
        raise ValueError(f"--after: the earlier run used --seed {seed} too; its request ids would repeat (give "
                         "another --seed)")
    return last_ms + round(1000.0 * time_scale / rps)


def main(argv: list[str] | None = None) -> int:
    """`adrank simulate ...`: 0 when at least one request was answered, 1 when none was, 2 on usage errors."""
    from rich.console import Console

    console = Console()
    try:
        a = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if ":" not in a.target:
            raise ValueError(f"--target: expected HOST:PORT, got {a.target!r}")
        delays = DelayModel(click_median_s=a.click_delay_median_s, conversion_median_s=a.conversion_delay_median_s)
        config = SimulationConfig(world=SyntheticConfig(n_events=a.n_events, seed=a.world_seed), seed=a.seed,
                                  n_candidates=a.candidates, show_k=a.show_k, time_scale=a.time_scale,
                                  concurrency=a.concurrency, model=a.model, delays=delays,
                                  start_ms=start_after(a.after, a.seed, a.rps, a.time_scale) if a.after else None)
        result = run_simulation(a.target, a.rps, a.duration, out=a.out, config=config, request_log=a.client_log,
                                progress=True)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    sim_h = (result.last_ms - result.first_ms) / MS_PER_HOUR
    console.print(f"{result.ok}/{result.requests} requests answered in {result.wall_s:.1f} s "
                  f"(p50 {result.latency_ms_p50:.1f} ms, p99 {result.latency_ms_p99:.1f} ms; "
                  f"errors {result.errors or 0}); {sim_h:.1f} simulated hours")
    console.print(f"{result.impressions} impressions, {result.clicks} clicks, {result.conversions} conversions "
                  f"→ {result.labels_path}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
