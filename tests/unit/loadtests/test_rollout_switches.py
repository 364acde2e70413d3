"""Where `adrank bench rollout` puts each switch: read from the audit log, with the load of a staged
version as its own row (and inside the shadow switch when the operator does not stage first)."""

from __future__ import annotations

import numpy as np

from loadtests.rollout_acceptance import STAGE, SWITCHES, switch_instants, timeline


def _entry(at_s: float, version: int, from_state: str, to_state: str, weight: float | None = None) -> dict:
    e = {"at_ms": str(int(at_s * 1000)), "version": str(version), "from_state": from_state, "to_state": to_state}
    if weight is not None:
        e["weight"] = weight
    return e


HISTORY = [_entry(0.0, 1, "", "staged"), _entry(0.1, 1, "staged", "live"),  # start-up: not a switch
           _entry(10.0, 2, "", "staged"),                                     # stage: register, load
           _entry(20.0, 2, "staged", "shadow"), _entry(20.01, 2, "shadow", "shadow"),
           _entry(30.0, 2, "shadow", "canary"), _entry(30.01, 2, "canary", "canary", 10.0),
           _entry(35.0, 2, "canary", "canary", 50.0), _entry(40.0, 2, "canary", "live"),
           _entry(50.0, 2, "live", "rolled_back")]


def test_a_staged_load_is_its_own_row_and_the_shadow_starts_at_the_route():
    at = switch_instants(HISTORY, 0.0, staged=True)
    assert list(at) == [STAGE, *SWITCHES]
    assert at == {STAGE: [10.0], "shadow": [20.0], "canary 10%": [30.01], "canary 50%": [35.0], "promote": [40.0],
                  "rollback": [50.0]}


def test_without_staging_the_load_counts_in_the_shadow_switch():
    at = switch_instants(HISTORY, 0.0, staged=False)
    assert list(at) == list(SWITCHES) and at["shadow"] == [10.0]


def test_the_timeline_finds_a_slow_second_after_the_switch():
    t = np.arange(0, 40, 0.01)
    server = np.where((t >= 21.0) & (t < 21.5), 9.0, 1.0)  # one slow half second, 1 s after the switch at 20 s
    calls = {"t_s": t, "client_ms": server + 0.5, "server_ms": server, "ok": np.ones(t.size)}
    line = timeline(calls, [20.0], 2.0)["server_p99_ms"]
    assert len(line) == 8 and line[6] == 9.0 and max(line[:6] + line[7:]) == 1.0
