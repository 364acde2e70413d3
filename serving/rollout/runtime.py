"""The rollout machinery inside a running server: routing tables, hot loading, per-arm windows, analysis.

One `RolloutRuntime` per server process, started when `rollout_registry` is configured:

- **Routing**: its `watcher` (a RoutingWatcher) is the route stage's router; a background task polls the
  registry every `poll_s`, so every replica converges on a change within about that.
- **Hot loading**: after each poll, every version the registry holds as staged, shadow, canary or live is
  loaded beside the serving ones (and warmed) when this replica has not loaded it; a retired or rolled
  back version is unloaded only once no route has pointed at it for `unload_grace_s` (calls that
  resolved it just before may still be running) — except the model's previous live version, which a
  rollback of live restores and so stays loaded. Versions the registry does not know are left alone.
- **Windows**: `observe` (a servicer observer) keeps, per model with a canary route and per arm,
  cumulative counts (`serving.rollout.pooled.ArmStats`: calls, errors, latency and p_ctr histograms),
  which every poll publishes to the registry (`serving.rollout.shared`). The replica holding the
  rollout's analysis lease — the one the start call reached, or whichever took over when it died —
  pools every replica's counts every `interval_s`, adds the delayed labels of the spec's label source,
  asks its RolloutController for a decision, stores the rollout state for a successor and keeps the
  window for `status`. The registry makes every replica follow its decisions.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from exporters.manifest import ManifestError, ModelManifest, read_manifest
from serving.backends.base import InferenceBackend
from serving.columns import ranked_arrays
from serving.errors import RankingError
from serving.rollout.analysis import AnalysisState, ArmWindow, CheckResult, Decision, WindowMetrics
from serving.rollout.controller import RolloutController
from serving.rollout.errors import LeaseLost, RolloutError, StateConflict, UnknownVersion
from serving.rollout.labels import with_labels
from serving.rollout.pooled import ArmStats, pooled_window
from serving.rollout.preflight import CacheOpener, PreflightReport, preflight
from serving.rollout.registry import Fence, RolloutRegistry
from serving.rollout.shared import RolloutDoc, SharedAnalysis, canary_key, new_replica_id
from serving.rollout.spec import RolloutSpec
from serving.rollout.states import VersionState
from serving.rollout.watcher import RoutingWatcher

log = logging.getLogger(__name__)
S = VersionState
KEEP_LOADED: frozenset[VersionState] = frozenset({S.STAGED, S.SHADOW, S.CANARY, S.LIVE})
MAX_LATENCIES = 50_000
"""Calls per arm and window whose latency is kept (one float each); beyond, a uniform reservoir."""
MAX_SCORE_CALLS = 500
"""Calls per arm and window whose served p_ctr vectors are kept for the PSI and the mean (a uniform
reservoir of calls: a call not drawn costs no score extraction at all)."""
MAX_WINDOWS = 60
"""Analysis windows kept per model for `status` and its plot."""
ANALYSED_ARMS = ("live", "canary")


class _Reservoir:
    """A uniform sample of at most `cap` values from a stream (Vitter's algorithm R), in O(cap) memory."""

    def __init__(self, cap: int, rng: random.Random) -> None:
        self.cap, self.seen, self.values, self._rng = cap, 0, [], rng

    def offer(self, make: Callable[[], object]) -> None:
        """Count one more item; build it with `make()` only when the sample keeps it."""
        self.seen += 1
        if len(self.values) < self.cap:
            self.values.append(make())
        else:
            j = self._rng.randrange(self.seen)
            if j < self.cap:
                self.values[j] = make()


@dataclass
class _ArmAccumulator:
    rng: random.Random
    calls: int = 0
    errors: int = 0
    latencies: _Reservoir = field(init=False)
    scores: _Reservoir = field(init=False)

    def __post_init__(self) -> None:
        self.latencies, self.scores = _Reservoir(MAX_LATENCIES, self.rng), _Reservoir(MAX_SCORE_CALLS, self.rng)

    def window(self) -> ArmWindow:
        lat = np.asarray(self.latencies.values, np.float64)
        scores = (np.concatenate(self.scores.values).astype(np.float64) if self.scores.values
                  else np.zeros(0, np.float64))
        return ArmWindow(requests=self.calls, errors=self.errors,
                         p99_ms=float(np.percentile(lat, 99)) if lat.size else None,
                         scores=scores, mean_p_ctr=float(scores.mean()) if scores.size else None)


class ArmWindows:
    """Per (model, arm): calls, errors, latency and p_ctr samples since the last `take` (bounded). Exact
    quantiles of one process's calls; the server pools `serving.rollout.pooled.ArmStats` instead, whose
    histograms merge across replicas."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._acc: dict[tuple[str, str], _ArmAccumulator] = {}

    def add(self, model: str, arm: str, latency_ms: float, ok: bool,
            p_ctr: Callable[[], np.ndarray] | None = None) -> None:
        """One call; `p_ctr` builds its served scores, called only when the window's sample keeps them."""
        acc = self._acc.get((model, arm))
        if acc is None:
            acc = self._acc[(model, arm)] = _ArmAccumulator(self._rng)
        acc.calls += 1
        acc.errors += 0 if ok else 1
        acc.latencies.offer(lambda: latency_ms)
        if p_ctr is not None:
            acc.scores.offer(p_ctr)

    def take(self, model: str) -> WindowMetrics:
        """The window of `model` since the last take (live vs canary), and a fresh one started."""
        arms = {a: self._acc.pop((model, a), None) for a in ANALYSED_ARMS}
        empty = ArmWindow(requests=0)
        return WindowMetrics(live=arms["live"].window() if arms["live"] else empty,
                             canary=arms["canary"].window() if arms["canary"] else empty)


@dataclass(frozen=True)
class WindowRecord:
    """One analysis window as `status` shows it."""

    at_ms: int
    weight: float
    action: str
    live: ArmWindow
    canary: ArmWindow
    checks: tuple[CheckResult, ...]

    def check_value(self, name: str) -> float | None:
        return next((c.value for c in self.checks if c.name == name), None)


@dataclass
class ActiveRollout:
    """A rollout this replica analyses: its controller, analysis state, windows and the task running it."""

    spec: RolloutSpec
    controller: RolloutController
    state: AnalysisState
    paused: bool = False
    ended: str = ""
    """"" while running; otherwise promoted | rolled_back | aborted | superseded | handed_over (another
    replica leads the analysis now)."""
    deciding: bool = False
    """True while the analysis applies a decision (its registry writes are under way, so a canary that
    just became live is this rollout's own promotion, not a change made elsewhere)."""
    windows: list[WindowRecord] = field(default_factory=list)
    task: asyncio.Task | None = None
    doc: RolloutDoc | None = None
    """The shared copy of this rollout (registry key rollout:<model>), saved after every decision."""

    @property
    def phase(self) -> str:
        if self.ended:
            return self.ended
        return "paused" if self.paused else self.state.phase


class RolloutRuntime:
    """See the module docstring. `start()` once the backend has loaded; `close()` at shutdown."""

    def __init__(self, registry: RolloutRegistry, backend: InferenceBackend, *, watcher: RoutingWatcher | None = None,
                 poll_s: float = 1.0,
                 unload_grace_s: float = 5.0, open_cache: CacheOpener | None = None,
                 newest_ready: Callable[[str], int] | None = None, shadow_scorer=None,
                 clock: Callable[[], float] = time.monotonic, lease_s: float = 10.0,
                 replica_id: str | None = None) -> None:
        self.registry, self.backend = registry, backend
        self.shadow_scorer = shadow_scorer  # serving.pipeline.shadow.ShadowScorer: started and closed with this
        self.newest_ready = newest_ready or (lambda name: self.backend.models()[name][-1])
        self.poll_s, self.unload_grace_s, self.open_cache = poll_s, unload_grace_s, open_cache
        self.watcher = watcher or RoutingWatcher(registry)
        self.replica = replica_id or new_replica_id()
        self.shared = SharedAnalysis(registry, self.replica, lease_s)
        self.stats: dict[str, tuple[str, dict[str, ArmStats]]] = {}
        """model → (canary key, arm → cumulative counts) while the model has a canary route."""
        self.rollouts: dict[str, ActiveRollout] = {}
        self.load_errors: dict[tuple[str, int], str] = {}
        self._clock = clock
        self._unrouted_since: dict[tuple[str, int], float] = {}
        self._errors_at = -1  # the change counter when failed loads were last forgotten (retried)
        self._poller: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self.synced = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def shadow_stats(self, model: str) -> dict | None:
        return self.shadow_scorer.stats(model) if self.shadow_scorer is not None else None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.shadow_scorer is not None:
            await self.shadow_scorer.start()
        await asyncio.to_thread(self.bootstrap)
        await self.poll_once()
        self._poller = asyncio.create_task(self._poll_forever())

    async def close(self) -> None:
        self._stop.set()
        if self.shadow_scorer is not None:
            await self.shadow_scorer.close()
        tasks = [t for t in (self._poller, *(r.task for r in self.rollouts.values())) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for r in self.rollouts.values():  # a graceful stop hands the analysis on at once, not at lease expiry
            if r.doc is not None and not r.ended:
                try:
                    await asyncio.to_thread(self.shared.release, r.doc)
                except RolloutError as exc:
                    log.warning("rollout %s: could not release the analysis lease: %s", r.spec.model, exc)
        self.registry.close()

    def bootstrap(self, actor: str = "server") -> None:
        """A model this backend serves but the registry has no live version of gets its newest ready
        version (`newest_ready`: its FM history readable) registered and made live, so routing starts from
        what the server serves today. Replicas racing here agree: registration is idempotent and the
        second promotion is refused and ignored."""
        for name in self.backend.models():
            if any(r.state is S.LIVE for r in self._versions(name)):
                continue
            try:
                manifest = self.backend.resolve(name, self.newest_ready(name)).manifest
            except RankingError as exc:  # no version of it can serve yet: it stays unrouted
                log.warning("rollout bootstrap of %s: %s", name, exc)
                continue
            try:
                self.registry.register(manifest, actor=actor, reason="loaded at start-up")
                if self.registry.get(name, manifest.version).state is S.STAGED:
                    self.registry.transition(name, manifest.version, S.LIVE, actor=actor,
                                             reason="first live version: the newest loaded at start-up")
            except RolloutError as exc:  # another replica got there first, or the version has a history
                log.info("rollout bootstrap of %s/%s: %s", name, manifest.version, exc)

    def _versions(self, name: str):
        try:
            return self.registry.versions(name)
        except UnknownVersion:
            return []

    async def _poll_forever(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.poll_s)
            except TimeoutError:
                pass
            try:
                await self.poll_once()
            except Exception as exc:  # noqa: BLE001 - keep the last tables and loaded versions, retry
                log.warning("rollout poll failed (%s); routing by the tables of change %d", exc, self.watcher.counter)

    async def poll_once(self) -> None:
        """Refresh the routing tables, then load and unload versions to match the registry."""
        await asyncio.to_thread(self.watcher.refresh)
        await self.sync_versions()
        self.synced.set()
        try:
            await asyncio.to_thread(self.share, self._stats_snapshot())
        except RolloutError as exc:  # the registry is down: counts keep accumulating, published next time
            log.warning("rollout: publishing window statistics failed: %s", exc)

    def _stats_snapshot(self) -> dict[str, tuple[str, dict[str, ArmStats]]]:
        """A copy of the counts of models whose canary is still routed (taken on the event loop, which
        `observe` mutates them on, so a worker thread can serialise it); the others are forgotten."""
        tables = self.watcher.tables()
        for model in list(self.stats):
            table = tables.get(model)
            if table is None or table.canary is None or \
                    canary_key(table.canary.version, table.canary.salt) != self.stats[model][0]:
                del self.stats[model]
        return {m: (k, {a: s.copy() for a, s in arms.items()}) for m, (k, arms) in self.stats.items()}

    def share(self, snapshot: Mapping[str, tuple[str, Mapping[str, ArmStats]]]) -> None:
        """Publish this replica's counts, renew the leases of the rollouts it leads, and take over a
        rollout whose leader stopped renewing."""
        tables = self.watcher.tables()
        for model, (key, arms) in snapshot.items():
            self.shared.publish(model, key, arms)
        for model, table in tables.items():
            if table.canary is None:
                continue
            mine = self.rollouts.get(model)
            if mine is not None and not mine.ended:
                if mine.doc is not None and not self.shared.hold(mine.doc):
                    log.warning("rollout %s: lost the analysis lease to another replica", model)
                    self._end(model, "handed_over")
                else:
                    self.apply_requests(mine)  # a pause / resume that reached another replica
                continue
            doc = self.shared.load(model)
            if doc is None or doc.ended or doc.state.phase != "progressing" \
                    or doc.spec.version != table.canary.version:
                continue
            if self.shared.hold(doc):
                self._take_over(doc)

    def _take_over(self, doc: RolloutDoc) -> None:
        """Continue the analysis of `doc` here (its leader stopped renewing the lease)."""
        spec = doc.spec
        log.warning("rollout %s/%s: taking the analysis over from %s", spec.model, spec.version, doc.leader or "?")
        doc.leader = self.replica
        self.shared.save(doc)
        controller = RolloutController(self.registry, spec, actor="analysis", fence=Fence(doc.lease, self.replica))
        rollout = ActiveRollout(spec, controller, doc.state, paused=doc.paused, doc=doc)
        self.rollouts[spec.model] = rollout
        self.apply_requests(rollout)
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(lambda: setattr(rollout, "task", loop.create_task(self._analyse(rollout))))

    # -- hot loading -------------------------------------------------------------------------------------
    async def sync_versions(self) -> None:
        records = await asyncio.to_thread(self._all_records)
        loaded = {(n, v) for n, vs in self.backend.models().items() for v in vs}
        routed = {(m, v) for m, t in self.watcher.tables().items() for v in t.versions()}
        now = self._clock()
        for (name, version), state in sorted(records.items()):
            key = (name, version)
            if state in KEEP_LOADED and key not in loaded and key not in self.load_errors:
                try:
                    await self.backend.load_version(name, version)
                except RankingError as exc:  # logged once; retried when the registry changes again
                    self.load_errors[key] = str(exc)
                    log.warning("rollout: %s", exc)
            elif state not in KEEP_LOADED and key in loaded:
                if key in routed:
                    self._unrouted_since.pop(key, None)
                    continue
                since = self._unrouted_since.setdefault(key, now)
                if now - since >= self.unload_grace_s and len(self.backend.models().get(name, [])) > 1:
                    await self.backend.unload_version(name, version)
                    self._unrouted_since.pop(key, None)
        if self.watcher.counter != self._errors_at:  # a registry change: failed loads get another try
            self._errors_at = self.watcher.counter
            self.load_errors = {k: v for k, v in self.load_errors.items() if records.get(k) in KEEP_LOADED}

    def _all_records(self) -> dict[tuple[str, int], VersionState]:
        """Every registered version's state; the previous live version counts as live (kept loaded, so a
        rollback of live is served at once, never by a cold load)."""
        out = {}
        for name in self.registry.models():
            for r in self.registry.versions(name):
                out[(r.model, r.version)] = r.state
            previous = self.registry.route_settings(name).previous_live
            if previous is not None and out.get((name, previous)) is S.RETIRED:
                out[(name, previous)] = S.LIVE
        return out

    # -- windows -----------------------------------------------------------------------------------------
    def observe(self, ctx, code: str, response) -> None:
        """A servicer observer: counts the call on its arm (models with a canary route; a rollout's
        analysis, on whichever replica leads it, pools every replica's counts)."""
        if ctx.arm not in ANALYSED_ARMS:
            return
        table = self.watcher.table(ctx.model)
        if table is None or table.canary is None:
            return
        latency_ms = (time.perf_counter() - ctx.started) * 1e3
        key = canary_key(table.canary.version, table.canary.salt)
        held = self.stats.get(ctx.model)
        if held is None or held[0] != key:
            held = self.stats[ctx.model] = (key, {a: ArmStats() for a in ANALYSED_ARMS})
        acc = held[1][ctx.arm]
        scores = None
        if response is not None:
            def scores() -> np.ndarray:
                if ctx.wire == "columns":  # a ScoreColumnsResponse: p_ctr is one little-endian block
                    return np.array(ranked_arrays(response)["p_ctr"], np.float32)
                return np.fromiter((c.p_ctr for c in response.candidates), np.float32, len(response.candidates))
        acc.add(latency_ms, code == "OK", scores() if scores is not None and acc.wants_scores() else None)

    # -- rollouts ----------------------------------------------------------------------------------------
    def manifest(self, model: str, version: int) -> ModelManifest:
        """The manifest of a version: the loaded handle's, else read (and verified) from the repository."""
        try:
            return self.backend.resolve(model, version).manifest
        except RankingError:
            pass
        repository = getattr(self.backend, "repository", None)
        if repository is None:
            raise UnknownVersion(f"{model}/{version}: not loaded and the backend has no repository to read")
        try:
            return read_manifest(repository / model / str(version))
        except ManifestError as exc:
            raise UnknownVersion(f"{model}/{version}: {exc}") from None

    def preflight(self, spec: RolloutSpec) -> PreflightReport:
        candidate = self.manifest(spec.model, spec.version)
        table = self.registry.routing(spec.model) if spec.model in self.registry.models() else None
        live = self.manifest(spec.model, table.live) if table is not None else None
        return preflight(candidate, live=live, open_cache=self.open_cache, limits=spec.preflight)

    def register(self, model: str, version: int, *, actor: str, reason: str = "registered for a rollout") -> None:
        """Registers the version as staged (a retired or rolled-back one is staged again for a new rollout):
        every replica then loads and warms it at its next poll, while no route points at it yet."""
        manifest = self.manifest(model, version)
        record = self.registry.register(manifest, actor=actor, reason=reason)
        if record.state in (S.RETIRED, S.ROLLED_BACK):  # a new rollout of an old version starts staged
            self.registry.transition(model, version, S.STAGED, actor=actor, reason="new rollout")

    async def start_rollout(self, spec: RolloutSpec, *, actor: str, reason: str) -> ActiveRollout:
        """Preflight (refused: FAILED_PRECONDITION naming each failure, nothing moves), registration,
        pre-rollout webhooks, canary at the first weight; then the analysis task runs every interval."""
        current = self._reconcile(spec.model)
        if current is not None and not current.ended:
            raise StateConflict(f"{spec.model}: a rollout of version {current.spec.version} is {current.phase}; "
                                "promote, roll back or abort it first")
        report = await asyncio.to_thread(self.preflight, spec)
        report.raise_if_refused()
        await asyncio.to_thread(self.register, spec.model, spec.version, actor=actor)
        await self.poll_once()  # loads (and warms) the version here before any weight reaches it
        controller = RolloutController(self.registry, spec, actor=actor)
        state = await asyncio.to_thread(controller.start, report, reason=reason or "rollout started")
        doc = RolloutDoc(spec, int(time.time() * 1000), state, leader=self.replica)
        await asyncio.to_thread(self._begin, doc, self._stats_snapshot())
        controller.fence = Fence(doc.lease, self.replica)  # every decision from now on: only while leading
        rollout = ActiveRollout(spec, controller, state, doc=doc)
        self.rollouts[spec.model] = rollout
        rollout.task = asyncio.create_task(self._analyse(rollout))
        await self.poll_once()
        return rollout

    def _begin(self, doc: RolloutDoc, snapshot: Mapping[str, tuple[str, Mapping[str, ArmStats]]]) -> None:
        """Store the new rollout, lead it, and judge only traffic from now on (the baseline)."""
        if not self.shared.hold(doc):
            raise StateConflict(f"{doc.spec.model}: another replica leads this rollout's analysis")
        doc.baseline = dict(self.shared.snapshot(doc.spec.model, doc.canary))
        held = snapshot.get(doc.spec.model)
        if held is not None and held[0] == doc.canary:
            doc.baseline[self.replica] = dict(held[1])
        self.shared.save(doc)

    def _pooled(self, rollout: ActiveRollout, snapshot: Mapping[str, tuple[str, Mapping[str, ArmStats]]]
                ) -> tuple[WindowMetrics, dict] | None:
        """The window since the last decision over every replica's counts, with labels; None when this
        replica no longer holds the lease."""
        doc = rollout.doc
        spec = rollout.spec
        if doc is None or not self.shared.hold(doc):
            return None
        held = snapshot.get(spec.model)
        if held is not None and held[0] == doc.canary:
            self.shared.publish(spec.model, held[0], held[1])  # this replica's counts as of now
        current = self.shared.snapshot(spec.model, doc.canary)
        window, per_replica = pooled_window(current, doc.baseline, spec.checks.psi_bins)
        table = self.watcher.table(spec.model)
        window = with_labels(window, spec, table.live if table is not None else None)
        doc.baseline = {**doc.baseline, **current}
        return window, per_replica

    async def _analyse(self, rollout: ActiveRollout) -> None:
        spec = rollout.spec
        while not rollout.ended:
            await asyncio.sleep(spec.interval_s)
            if rollout.ended:
                break
            try:  # a pause recorded through another replica since the last poll holds this window too
                await asyncio.to_thread(self.apply_requests, rollout)
            except RolloutError as exc:
                log.warning("rollout %s/%s: could not read pause requests: %s", spec.model, spec.version, exc)
            if rollout.paused:
                continue
            try:
                pooled = await asyncio.to_thread(self._pooled, rollout, self._stats_snapshot())
            except RolloutError as exc:
                log.warning("rollout %s/%s: could not pool the window: %s", spec.model, spec.version, exc)
                continue
            if pooled is None:
                log.warning("rollout %s/%s: another replica leads the analysis now", spec.model, spec.version)
                rollout.ended = rollout.ended or "handed_over"
                break
            window, per_replica = pooled
            window = replace(window, pooled={"decided_by": self.replica, "replicas": per_replica,
                                             "live_calls": window.live.requests,
                                             "canary_calls": window.canary.requests})
            record = await asyncio.to_thread(self.registry.get, spec.model, spec.version)
            if record.state is not S.CANARY:  # an operator promoted, rolled back or aborted meanwhile
                rollout.ended = rollout.ended or "superseded"
                await asyncio.to_thread(self._end_shared, spec.model, "superseded")
                break
            rollout.deciding = True  # until the outcome is recorded here: a status call meanwhile must not
            try:                     # read the version's new state as another replica's doing ("superseded")
                try:
                    decision: Decision = await asyncio.to_thread(rollout.controller.tick, rollout.state, window)
                except LeaseLost as exc:  # refused in the registry's transaction: the successor decides
                    log.warning("rollout %s/%s: %s", spec.model, spec.version, exc)
                    rollout.ended = rollout.ended or "handed_over"
                    break
                except RolloutError as exc:
                    log.warning("rollout %s/%s: analysis could not apply its decision: %s", spec.model, spec.version,
                                exc)
                    continue
                rollout.windows.append(WindowRecord(int(time.time() * 1000), rollout.state.weight, decision.action,
                                                    window.live, window.canary, decision.checks))
                del rollout.windows[:-MAX_WINDOWS]
                rollout.state = decision.state
                if rollout.doc is not None:
                    rollout.doc.state = decision.state
                    try:
                        await asyncio.to_thread(self._store, rollout)
                    except RolloutError as exc:
                        log.warning("rollout %s/%s: could not store the analysis state: %s", spec.model,
                                    spec.version, exc)
                log.info("rollout %s/%s: %s at weight %g (%s)", spec.model, spec.version, decision.action,
                         decision.weight, decision.reason)
                if decision.state.phase != "progressing":
                    rollout.ended = decision.state.phase
            finally:
                rollout.deciding = False
            await self.poll_once()

    def _reconcile(self, model: str) -> ActiveRollout | None:
        """The model's rollout here, ended as "superseded" when its version left the canary through
        another replica (or this one's promote/rollback raced the analysis)."""
        rollout = self.rollouts.get(model)
        if rollout is not None and not rollout.ended and not rollout.deciding:
            try:
                state = self.registry.get(model, rollout.spec.version).state
            except RolloutError:
                state = None
            if state is not S.CANARY:
                rollout.ended = "superseded"
                if rollout.task is not None:
                    rollout.task.get_loop().call_soon_threadsafe(rollout.task.cancel)
        return rollout

    def pause(self, model: str, *, actor: str, reason: str) -> ActiveRollout | None:
        """Hold the analysis at its weight (audited). Through any replica: the leader applies it at once,
        any other replica records it for the leader's next poll (`serving.rollout.shared`)."""
        return self._set_paused(model, True, actor=actor, reason=reason)

    def resume(self, model: str, *, actor: str, reason: str) -> ActiveRollout | None:
        return self._set_paused(model, False, actor=actor, reason=reason)

    def _set_paused(self, model: str, paused: bool, *, actor: str, reason: str) -> ActiveRollout | None:
        rollout = self._reconcile(model)
        leading = rollout is not None and not rollout.ended
        doc = rollout.doc if leading else self.shared.load(model)
        if not leading:
            if doc is None or doc.ended or doc.state.phase != "progressing" or \
                    self.registry.get(model, doc.spec.version).state is not S.CANARY:
                raise StateConflict(f"{model}: no rollout in progress")
        if doc is not None:
            self.shared.request_pause(doc, paused, actor=actor, reason=reason, at_ms=int(time.time() * 1000))
        weight = rollout.state.weight if leading else doc.state.weight
        if leading:
            rollout.paused = paused
            self._store(rollout)
        verb = "paused" if paused else "resumed"
        where = "" if leading else f" (recorded through {self.replica}; the leading replica applies it)"
        self.registry.set_route(model, canary_weight=weight, actor=actor,
                                reason=f"{verb}: {reason or 'by operator'}{where}")
        return rollout if leading else None

    def apply_requests(self, rollout: ActiveRollout) -> None:
        """The leader's side of a pause / resume made through any replica: the latest one recorded wins."""
        doc = rollout.doc
        if doc is None or rollout.ended:
            return
        request = self.shared.pause_request(doc)
        if request is not None and bool(request["paused"]) != rollout.paused:
            rollout.paused = bool(request["paused"])
            log.info("rollout %s/%s: %s by %s through %s", rollout.spec.model, rollout.spec.version,
                     "paused" if rollout.paused else "resumed", request.get("actor"), request.get("by"))
            self._store(rollout)

    def _store(self, rollout: ActiveRollout) -> None:
        """Save the rollout for a successor; an ended one gives its lease up."""
        doc = rollout.doc
        if doc is None:
            return
        doc.state, doc.paused = rollout.state, rollout.paused
        self.shared.save(doc)
        if doc.state.phase != "progressing":
            self.shared.forget_requests(doc)
            self.shared.release(doc)

    def _end(self, model: str, how: str) -> None:
        rollout = self.rollouts.get(model)
        if rollout is not None and not rollout.ended:
            rollout.ended = how
        if how != "handed_over":
            self._end_shared(model, how)

    def _end_shared(self, model: str, how: str) -> None:
        """Mark the stored rollout ended (an operator verb may reach any replica), so no replica ever
        takes over an analysis whose canary left through an operator."""
        try:
            doc = self.shared.load(model)
            if doc is not None and not doc.ended:
                doc.ended = how
                self.shared.save(doc)
                self.shared.forget_requests(doc)
                self.shared.release(doc)
        except RolloutError as exc:
            log.warning("rollout %s: could not mark the stored rollout ended: %s", model, exc)

    def promote(self, model: str, *, actor: str, reason: str) -> None:
        """The canary (else the shadow) becomes live now, skipping the remaining steps."""
        view = {r.state: r for r in self.registry.versions(model)}
        candidate = view.get(S.CANARY) or view.get(S.SHADOW)
        if candidate is None:
            raise StateConflict(f"{model}: no canary or shadow version to promote")
        self.registry.promote(model, candidate.version, actor=actor, reason=reason or "promoted by operator")
        self._end(model, "promoted")

    def rollback(self, model: str, *, actor: str, reason: str) -> None:
        """The canary out of traffic; with no canary, live back to the version live before it."""
        view = {r.state: r for r in self.registry.versions(model)}
        target = view.get(S.CANARY) or view.get(S.LIVE)
        if target is None:
            raise StateConflict(f"{model}: no canary or live version to roll back")
        self.registry.rollback(model, target.version, actor=actor, reason=reason or "rolled back by operator")
        self._end(model, "rolled_back")

    def abort(self, model: str, *, actor: str, reason: str) -> None:
        """The canary and the shadow leave traffic (rolled back); live is untouched."""
        view = {r.state: r for r in self.registry.versions(model)}
        moved = [r for s, r in view.items() if s in (S.CANARY, S.SHADOW)]
        if not moved:
            raise StateConflict(f"{model}: no canary or shadow to abort")
        for r in moved:
            self.registry.rollback(model, r.version, actor=actor, reason=f"aborted: {reason or 'by operator'}")
        self._end(model, "aborted")

    def shadow(self, model: str, version: int, sample_rate: float, *, actor: str, reason: str) -> None:
        """`version` mirrors `sample_rate` of live requests (registered and preflighted like a canary)."""
        self.register(model, version, actor=actor)
        record = self.registry.get(model, version)
        if record.state is not S.SHADOW:
            self.registry.transition(model, version, S.SHADOW, actor=actor, reason=reason or "shadow started")
        self.registry.set_route(model, shadow_sample_rate=sample_rate, actor=actor,
                                reason=f"shadow sample rate {sample_rate:g}")

    def history(self, model: str) -> list:
        return self.registry.audit(model)

    def describe(self, model: str) -> Mapping:
        """What `status` reports: the arms, the versions, the rollout's phase and windows."""
        table = self.registry.routing(model) if model in self.registry.models() else None
        loaded = set(self.backend.models().get(model, []))
        return {"table": table, "versions": self._versions(model), "loaded": loaded,
                "rollout": self._reconcile(model)}
