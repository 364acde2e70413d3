"""Webhooks against a real HTTP server on 127.0.0.1, and the controller driving a rollout through the SQLite
registry: a good canary is promoted, a biased one rolled back with the reason in the audit log."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rollout_fixtures import make_manifest, window

from serving.rollout.controller import RolloutController, RolloutVetoed
from serving.rollout.errors import PreflightRefused
from serving.rollout.preflight import preflight
from serving.rollout.routing import CanaryRoute, RoutingTable
from serving.rollout.spec import RolloutSpec, Webhook
from serving.rollout.sqlite_registry import SqliteRegistry
from serving.rollout.states import VersionState
from serving.rollout.webhooks import call_webhook


class Gate:
    """What each path answers: (status, body) or a delay in seconds before answering 200."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, str] | float] = {}
        self.calls: list[tuple[str, dict]] = []


@pytest.fixture
def gate(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    g = Gate()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            g.calls.append((self.path, body))
            answer = g.answers.get(self.path, (200, "ok"))
            if isinstance(answer, float):
                time.sleep(answer)
                answer = (200, "late")
            status, text = answer
            self.send_response(status)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    g.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield g
    server.shutdown()
    server.server_close()


def hook(gate, name: str, phase: str, timeout_s: float = 2.0) -> Webhook:
    return Webhook(name=name, url=f"{gate.url}/{name}", phase=phase, timeout_s=timeout_s, metadata={"team": "ads"})


def test_webhook_answers_allow_or_veto(gate):
    gate.answers = {"/refuse": (403, "load test failed"), "/slow": 1.5}
    ok = call_webhook(hook(gate, "accept", "pre-rollout"), {"model": "vm", "version": 2})
    assert (ok.allowed, ok.message) == (True, "HTTP 200: ok")
    assert gate.calls[0] == ("/accept", {"model": "vm", "version": 2, "phase": "pre-rollout",
                                         "metadata": {"team": "ads"}})
    no = call_webhook(hook(gate, "refuse", "step"), {})
    assert (no.allowed, no.message) == (False, "HTTP 403: load test failed")
    late = call_webhook(hook(gate, "slow", "step", timeout_s=0.3), {})
    assert (late.allowed, late.message) == (False, "no answer within 0.3 s")
    closed = call_webhook(Webhook(name="gone", url="http://127.0.0.1:9/x", phase="step", timeout_s=1), {})
    assert not closed.allowed and closed.message.startswith("unreachable")


@pytest.fixture
def registry(tmp_path):
    r = SqliteRegistry(tmp_path / "state")
    r.register(make_manifest(1), actor="ci")
    r.transition("vm", 1, "live", actor="ci", reason="first version")
    r.register(make_manifest(2, ne=0.801), actor="ci")
    yield r
    r.close()


def passed_preflight(registry):
    return preflight(make_manifest(2, ne=0.801), live=make_manifest(1))


def test_a_good_canary_is_promoted_through_the_registry(registry, gate):
    spec = RolloutSpec(model="vm", version=2, steps=(10.0, 50.0), threshold=3,
                       webhooks=(hook(gate, "accept", "pre-rollout"), hook(gate, "load", "step"),
                                 hook(gate, "approve", "promotion")))
    controller = RolloutController(registry, spec)
    state = controller.start(passed_preflight(registry))
    assert registry.routing("vm") == RoutingTable(model="vm", live=1,
                                                  canary=CanaryRoute(version=2, weight=10, salt="vm/2"))
    actions = []
    for i in range(5):
        d = controller.tick(state, window(i))
        actions.append((d.action, d.weight))
        state = d.state
        if state.phase != "progressing":
            break
    assert actions == [("step_up", 50.0), ("promote", 100.0)]
    assert registry.routing("vm") == RoutingTable(model="vm", live=2)
    assert [p for p, _ in gate.calls] == ["/accept", "/load", "/load", "/approve"]
    log = registry.audit("vm", version=2)
    assert [(e.to_state.value, e.weight) for e in log] == [("staged", None), ("canary", None), ("canary", 10.0),
                                                           ("canary", 50.0), ("live", None)]
    assert log[1].metrics["preflight"]["parity"]["status"] == "passed"
    assert log[-1].actor == "analysis" and log[-1].metrics["psi"]["status"] == "passed"


def test_a_biased_canary_is_rolled_back_with_the_reason_in_the_audit_log(registry, gate):
    spec = RolloutSpec(model="vm", version=2, steps=(10.0, 50.0), threshold=2)
    controller = RolloutController(registry, spec)
    state = controller.start(passed_preflight(registry))
    for i in range(5):
        d = controller.tick(state, window(i, logit_shift=0.6))
        state = d.state
        if state.phase != "progressing":
            break
    assert state.windows == 2 and d.action == "rollback"  # within threshold × interval
    assert registry.get("vm", 2).state is VersionState.ROLLED_BACK
    assert registry.routing("vm") == RoutingTable(model="vm", live=1)
    last = registry.audit("vm", version=2)[-1]
    assert last.to_state is VersionState.ROLLED_BACK
    assert last.reason.startswith("2 of 2 failed windows at weight 10: ") and "PSI of p_ctr" in last.reason
    assert last.metrics["psi"]["value"] > 0.2 and last.metrics["failed_windows"] == 2


def test_vetoes_and_refusals_move_no_traffic(registry, gate):
    gate.answers = {"/accept": (409, "freeze in effect"), "/approve": (403, "not yet")}
    spec = RolloutSpec(model="vm", version=2, steps=(50.0,), webhooks=(hook(gate, "accept", "pre-rollout"),))
    with pytest.raises(RolloutVetoed, match="pre-rollout vetoed by accept: HTTP 409: freeze in effect"):
        RolloutController(registry, spec).start(passed_preflight(registry))
    assert registry.get("vm", 2).state is VersionState.STAGED
    bad = preflight(make_manifest(2, ne=0.9), live=make_manifest(1))
    with pytest.raises(PreflightRefused, match="offline_ne"):
        RolloutController(registry, spec).start(bad)
    assert registry.get("vm", 2).state is VersionState.STAGED

    gated = RolloutSpec(model="vm", version=2, steps=(50.0,), webhooks=(hook(gate, "approve", "promotion"),))
    controller = RolloutController(registry, gated)
    state = controller.start(passed_preflight(registry))
    d = controller.tick(state, window(0))
    assert d.action == "hold" and d.reason == "promotion vetoed by approve: HTTP 403: not yet"
    assert registry.routing("vm").canary.weight == 50
    gate.answers = {}
    assert controller.tick(d.state, window(1)).action == "promote"
    assert registry.routing("vm") == RoutingTable(model="vm", live=2)
