"""The analysis loop's side effects: start a rollout, and apply each window's decision to the registry.

`advance` decides; this applies — a weight step, a promotion or a rollback — with the checks that decided
it in the audit log, so every replica's next poll of the registry moves its traffic. It holds no timer:
whoever owns the loop (the admin service, a CLI) collects a `WindowMetrics` every `spec.interval_s`
and calls `tick`, which keeps the controller testable with synthetic windows.

    controller = RolloutController(registry, spec)
    state = controller.start(preflight_report)            # canary at spec.steps[0]
    while state.phase == "progressing":
        decision = controller.tick(state, window_from_metrics())   # every spec.interval_s
        state = decision.state
"""

from __future__ import annotations

from dataclasses import replace

from serving.rollout.analysis import AnalysisState, Decision, WindowMetrics, advance, veto_promotion
from serving.rollout.errors import RolloutError
from serving.rollout.preflight import PreflightReport
from serving.rollout.registry import Fence, RolloutRegistry
from serving.rollout.spec import RolloutSpec
from serving.rollout.states import VersionState
from serving.rollout.webhooks import Caller, call_webhook, run_hooks


class RolloutVetoed(RolloutError):
    """A pre-rollout webhook refused: no traffic moved."""


class RolloutController:
    """Drives one rollout of `spec.version` of `spec.model` through `registry`."""

    def __init__(self, registry: RolloutRegistry, spec: RolloutSpec, *, actor: str = "analysis",
                 call: Caller = call_webhook, fence: Fence | None = None) -> None:
        self.registry, self.spec, self.actor, self._call = registry, spec, actor, call
        self.fence = fence
        """The analysis lease `tick`'s writes are fenced by (None: unfenced, one process deciding alone)."""

    def start(self, preflight: PreflightReport, *, reason: str = "rollout started") -> AnalysisState:
        """Preflight must have passed and every pre-rollout webhook must allow; then the version becomes
        canary at the first step's weight (two audited changes: the state, then the weight)."""
        spec = self.spec
        preflight.raise_if_refused()
        if (preflight.model, preflight.version) != (spec.model, spec.version):
            raise RolloutError(f"preflight is for {preflight.model}/{preflight.version}, "
                               f"the spec for {spec.model}/{spec.version}")
        vetoes = [h for h in run_hooks(spec, "pre-rollout", {"weight": 0.0}, self._call) if not h.allowed]
        if vetoes:
            raise RolloutVetoed(f"{spec.model}/{spec.version}: pre-rollout vetoed by "
                                + "; ".join(f"{h.name}: {h.message}" for h in vetoes))
        record = self.registry.get(spec.model, spec.version)
        if record.state is not VersionState.CANARY:
            self.registry.transition(spec.model, spec.version, VersionState.CANARY, actor=self.actor, reason=reason,
                                     metrics={"preflight": preflight.as_metrics()}, salt=spec.canary_salt)
        state = AnalysisState(spec)
        self.registry.set_route(spec.model, canary_weight=state.weight, actor=self.actor,
                                reason=f"first step: weight {state.weight:g}")
        return state

    def tick(self, state: AnalysisState, window: WindowMetrics) -> Decision:
        """Judge one window (with the step webhooks' answers) and apply the decision."""
        spec = self.spec
        payload = {"weight": state.weight, "window": state.windows + 1}
        hooks = run_hooks(spec, "step", payload, self._call)
        decision = advance(state, replace(window, hooks=window.hooks + hooks))
        if decision.action == "promote" and spec.hooks("promotion"):
            gate = run_hooks(spec, "promotion", {**payload, "checks": decision.audit_metrics()}, self._call)
            decision = veto_promotion(state, decision, gate)
        metrics = decision.audit_metrics()
        if window.pooled is not None:
            metrics["window"] = dict(window.pooled)
        fence = self.fence
        if decision.action == "step_up":
            self.registry.set_route(spec.model, canary_weight=decision.weight, actor=self.actor,
                                    reason=decision.reason, metrics=metrics, fence=fence)
        elif decision.action == "promote":
            self.registry.promote(spec.model, spec.version, actor=self.actor, reason=decision.reason, metrics=metrics,
                                  expect=VersionState.CANARY, fence=fence)
        elif decision.action == "rollback":
            self.registry.rollback(spec.model, spec.version, actor=self.actor, reason=decision.reason,
                                   metrics=metrics, expect=VersionState.CANARY, fence=fence)
        return decision
