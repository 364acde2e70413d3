"""`adrank rollout stage|start|shadow|status|promote|pause|resume|rollback|abort|history`: a client of the
RolloutAdmin service on a running server (it needs a token with the `admin` scope: --token-file or
$ADRANK_TOKEN). `status` prints the arms, the versions, the latest checks, and a text plot of the
canary against live over the analysis windows.

    adrank rollout start deploy/rollout-example.toml --target 127.0.0.1:50051 --token-file admin.token
    adrank rollout status --model vm
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import UTC, datetime

SPARK = " ▁▂▃▄▅▆▇█"
VERBS = ("status", "promote", "pause", "resume", "rollback", "abort", "history")


def sparkline(values: list[float]) -> str:
    """One character per value, scaled between the series' own min and max (flat: the middle bar)."""
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return SPARK[4] * len(values)
    return "".join(SPARK[1 + round((v - lo) / (hi - lo) * (len(SPARK) - 2))] for v in values)


def render_status(s) -> str:
    """The status as an operator reads it in a terminal."""
    lines = [f"model {s.model}: phase {s.phase}" + (f" — {s.message}" if s.message else "")]
    arms = [f"live v{s.live_version}" if s.live_version else "live: none"]
    if s.canary_version:
        arms.append(f"canary v{s.canary_version} at {s.canary_weight:g}%")
    if s.shadow_version:
        arms.append(f"shadow v{s.shadow_version} sampling {s.shadow_sample_rate:g}")
    lines.append("arms: " + ", ".join(arms))
    if s.steps:
        lines.append(f"steps {[round(w, 3) for w in s.steps]}, every {s.interval_s:g} s; failed windows "
                     f"{s.failed_windows}/{s.threshold}")
    for v in s.versions:
        lines.append(f"  v{v.version:<4} {v.state:<12} fm={v.fm_version:<12} {'loaded' if v.loaded else 'not loaded'}")
    if s.windows:
        last = s.windows[-1]
        lines.append(f"latest window ({last.action} at {last.weight:g}%): live {last.live_requests} calls, "
                     f"canary {last.canary_requests} calls")
        for c in last.checks:
            value = f"{c.value:.4g}" if c.has_value else "-"
            why = f"  ({c.message})" if c.status != "passed" and c.message else ""
            lines.append(f"  {c.status:<7} {c.name:<18} {value:>10}  {c.bound}{why}")
        series = {
            "weight %": [w.weight for w in s.windows],
            "canary p99 ms": [w.canary_p99_ms for w in s.windows],
            "live p99 ms": [w.live_p99_ms for w in s.windows],
            "canary errors": [w.canary_error_rate for w in s.windows],
            "PSI p_ctr": [w.psi for w in s.windows],
            "p_ctr ratio": [w.p_ctr_ratio for w in s.windows],
        }
        lines.append(f"canary over {len(s.windows)} windows (min … max):")
        for name, values in series.items():
            lines.append(f"  {name:<14} {sparkline(values)}  {min(values):.4g} … {max(values):.4g}")
    if s.shadow.pairs:
        sh = s.shadow
        lines.append(f"shadow: {sh.pairs} paired requests ({sh.dropped} dropped), rank correlation "
                     f"{sh.rank_correlation:.4f}, top-k overlap {sh.top_k_overlap:.4f}, mean |Δp_ctr| "
                     f"{sh.mean_abs_delta_p_ctr:.3g}")
    return "\n".join(lines)


def render_history(h) -> str:
    lines = []
    for e in h.entries:
        at = datetime.fromtimestamp(e.at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        move = f"{e.from_state or '-'} → {e.to_state}" + (f" @ {e.weight:g}" if e.has_weight else "")
        lines.append(f"#{e.seq:<5} {at} v{e.version:<4} {move:<28} {e.actor:<10} {e.reason}")
    return "\n".join(lines) or "no audit entries"


def _cmd(a: argparse.Namespace) -> int:
    import grpc

    from protos.adrank.v1 import rollout_pb2, rollout_pb2_grpc
    from serving.security.cli import client_security
    from serving.security.tls import open_channel

    tls, token = client_security(a)
    metadata = [("authorization", f"Bearer {token}")] if token else None
    actor = a.actor or getpass.getuser()
    with open_channel(a.target, tls) as channel:
        stub = rollout_pb2_grpc.RolloutAdminStub(channel)
        try:
            if a.rollout_verb == "start":
                try:
                    text = open(a.spec).read()
                except OSError as exc:
                    print(f"error: spec {a.spec}: {exc.strerror}", file=sys.stderr)
                    return 2
                resp = stub.Start(rollout_pb2.StartRolloutRequest(spec_toml=text, actor=actor, reason=a.reason),
                                  timeout=a.timeout, metadata=metadata)
            elif a.rollout_verb == "stage":
                resp = stub.Stage(rollout_pb2.StageRequest(model=a.model, version=a.version, actor=actor,
                                                           reason=a.reason), timeout=a.timeout, metadata=metadata)
            elif a.rollout_verb == "shadow":
                resp = stub.Shadow(rollout_pb2.ShadowRequest(model=a.model, version=a.version,
                                                             sample_rate=a.sample_rate, actor=actor, reason=a.reason),
                                   timeout=a.timeout, metadata=metadata)
            else:
                call = getattr(stub, a.rollout_verb.capitalize())
                resp = call(rollout_pb2.RolloutTarget(model=a.model, actor=actor, reason=a.reason),
                            timeout=a.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 2
    if a.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(resp, preserving_proto_field_name=True), indent=1))
    elif a.rollout_verb == "history":
        print(render_history(resp))
    else:
        print(render_status(resp))
    return 0


def add_rollout_parser(sub: argparse._SubParsersAction) -> None:
    from serving.security.cli import client_security_flags

    p = sub.add_parser("rollout", help="roll a model version out on a running server (admin token needed)")
    verbs = p.add_subparsers(dest="rollout_verb", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--target", default="127.0.0.1:50051")
        sp.add_argument("--actor", default="", help="who, for the audit log (default: the OS user)")
        sp.add_argument("--reason", default="", help="why, for the audit log")
        sp.add_argument("--timeout", type=float, default=30.0)
        sp.add_argument("--json", action="store_true", help="print the answer as JSON")
        client_security_flags(sp)
        sp.set_defaults(func=_cmd)

    sp = verbs.add_parser("stage", help="register a version and load and warm it on every replica (no traffic "
                          "moves): a later shadow or start then only switches routes")
    sp.add_argument("--model", required=True)
    sp.add_argument("--version", type=int, required=True)
    common(sp)
    sp = verbs.add_parser("start", help="preflight, then canary at the spec's first weight; analysis steps it")
    sp.add_argument("spec", help="rollout spec file (TOML, see deploy/rollout-example.toml)")
    common(sp)
    sp = verbs.add_parser("shadow", help="mirror a sample of live requests to a version (paired scores)")
    sp.add_argument("--model", required=True)
    sp.add_argument("--version", type=int, required=True)
    sp.add_argument("--sample-rate", type=float, default=0.1)
    common(sp)
    helps = {"status": "arms, weights, checks and a plot of the canary's windows",
             "promote": "make the canary (or shadow) live now", "pause": "hold the analysis at this weight",
             "resume": "resume the analysis", "rollback": "canary out, or live back to the previous live",
             "abort": "canary and shadow out of traffic", "history": "the audit log of the model"}
    for verb in VERBS:
        sp = verbs.add_parser(verb, help=helps[verb])
        sp.add_argument("--model", default="vm")
        common(sp)
