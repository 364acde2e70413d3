"""Webhooks: HTTP endpoints that may veto a rollout at pre-rollout, at each step, and before promotion.

They let checks this package cannot know about take part — an acceptance test against the canary, a
load test, a human's approval service. The call is a JSON POST with a timeout; any 2xx allows, anything
else (another status, a refused connection, no answer in time) vetoes, because a gate that cannot be
reached must not be read as a yes. The body says which rollout and phase is asking:

    {"model": "vm", "version": 4, "phase": "step", "weight": 10.0, "metadata": {...}, "checks": {...}}

    outcome = call_webhook(spec.hooks("pre-rollout")[0], payload)
    outcome.allowed, outcome.message          # (False, "HTTP 403: load test failed")
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping

from serving.rollout.analysis import HookOutcome
from serving.rollout.spec import RolloutSpec, Webhook

MAX_BODY = 512
"""Characters of a refusing endpoint's body kept in the message (and so in the audit log)."""

Caller = Callable[[Webhook, Mapping], HookOutcome]


def call_webhook(hook: Webhook, payload: Mapping) -> HookOutcome:
    """POST `payload` (plus the hook's metadata) to `hook.url`; 2xx allows, everything else vetoes."""
    body = json.dumps({**payload, "phase": hook.phase, "metadata": dict(hook.metadata)}, default=float).encode()
    request = urllib.request.Request(hook.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "adrank-rollout"})
    try:
        with urllib.request.urlopen(request, timeout=hook.timeout_s) as response:
            text = response.read(MAX_BODY).decode("utf-8", "replace").strip()
            status = response.status
    except urllib.error.HTTPError as exc:
        text = exc.read(MAX_BODY).decode("utf-8", "replace").strip() if exc.fp else ""
        return HookOutcome(hook.name, hook.phase, False, f"HTTP {exc.code}" + (f": {text}" if text else ""))
    except TimeoutError:
        return HookOutcome(hook.name, hook.phase, False, f"no answer within {hook.timeout_s:g} s")
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError | socket.timeout):
            return HookOutcome(hook.name, hook.phase, False, f"no answer within {hook.timeout_s:g} s")
        return HookOutcome(hook.name, hook.phase, False, f"unreachable: {exc.reason}")
    except OSError as exc:  # reset connections and the like
        return HookOutcome(hook.name, hook.phase, False, f"unreachable: {exc}")
    if not 200 <= status < 300:
        return HookOutcome(hook.name, hook.phase, False, f"HTTP {status}" + (f": {text}" if text else ""))
    return HookOutcome(hook.name, hook.phase, True, f"HTTP {status}" + (f": {text}" if text else ""))


def run_hooks(spec: RolloutSpec, phase: str, payload: Mapping, call: Caller = call_webhook) -> tuple[HookOutcome, ...]:
    """Every webhook of `phase`, in spec order (each bounded by its own timeout)."""
    base = {"model": spec.model, "version": spec.version, **payload}
    return tuple(call(h, base) for h in spec.hooks(phase))
