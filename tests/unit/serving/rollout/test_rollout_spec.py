"""The rollout spec: TOML parsing, Flagger-style step forms, and validation errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.rollout.errors import SpecError
from serving.rollout.spec import Checks, RolloutSpec, Webhook, load_spec, parse_spec

EXAMPLE = Path(__file__).resolve().parents[4] / "deploy" / "rollout-example.toml"


def test_the_example_spec_parses():
    spec = load_spec(EXAMPLE)
    assert (spec.model, spec.version, spec.steps, spec.interval_s, spec.threshold) == ("vm", 4, (10.0, 50.0), 60, 3)
    assert spec.checks == Checks()
    assert spec.canary_salt == "vm/4"
    assert [h.name for h in spec.hooks("pre-rollout")] == ["acceptance"]
    assert spec.hooks("step")[0].metadata == {"rps": "200"} and spec.hooks("step")[0].timeout_s == 30
    assert spec.hooks("promotion")[0].timeout_s == 5.0
    assert spec.preflight.max_embedding_age_s == 21600


def test_step_weight_and_max_weight_expand_like_flagger():
    base = 'model = "vm"\nversion = 2\n'
    assert parse_spec(base + "step_weight = 10\nmax_weight = 50").steps == (10, 20, 30, 40, 50)
    assert parse_spec(base + "step_weight = 20\nmax_weight = 50").steps == (20, 40, 50)
    assert parse_spec(base + "steps = [5, 100]").steps == (5, 100)


@pytest.mark.parametrize("body, field, words", [
    ('version = 2\nsteps = [10]', "model", "is required"),
    ('model = "vm"\nsteps = [10]', "version", "is required"),
    ('model = "vm"\nversion = 2', "steps", "give steps"),
    ('model = "vm"\nversion = 2\nsteps = [10]\nstep_weight = 5\nmax_weight = 10', "steps", "not both"),
    ('model = "vm"\nversion = 2\nsteps = [50, 10]', "steps", "must increase"),
    ('model = "vm"\nversion = 2\nsteps = [10, 150]', "steps[1]", "within"),
    ('model = "vm"\nversion = 2\nsteps = [0]', "steps[0]", "within (0"),
    ('model = "vm"\nversion = 0\nsteps = [10]', "version", "within"),
    ('model = "vm"\nversion = 2\nsteps = [10]\nthreshold = 0', "threshold", "within"),
    ('model = "vm"\nversion = 2\nsteps = [10]\ninterval_s = "1m"', "interval_s", "expected a number"),
    ('model = "vm"\nversion = 2\nsteps = [10]\nintervl_s = 5', "intervl_s", "unknown field"),
    ('model = "vm"\nversion = 2\nsteps = [10]\n[checks]\nmax_pis = 0.1', "checks.max_pis", "unknown field"),
    ('model = "vm"\nversion = 2\nsteps = [10]\n[checks]\nmax_psi = -1', "checks.max_psi", "within"),
    ('model = "vm"\nversion = 2\nsteps = [10]\n[checks]\np_ctr_ratio = [1.1, 0.9]', "checks.p_ctr_ratio", "below"),
    ('model = "vm"\nversion = 2\nsteps = [10]\n[checks]\nmax_error_rate = true', "checks.max_error_rate",
     "expected a number"),
    ('model = "vm"\nversion = 2\nsteps = [10]\n[preflight]\nmax_parity_abs = -1', "preflight.max_parity_abs", ""),
    ('model = "vm"\nversion = 2\nsteps = [10]\n[preflight]\nmax_age = 1', "preflight.max_age", "unknown"),
    ('model = "vm"\nversion = 2\nsteps = [10]\n[[webhooks]]\nname = "a"\nphase = "step"\nurl = "ftp://x"',
     "webhooks[0].url", "http"),
    ('model = "vm"\nversion = 2\nsteps = [10]\n[[webhooks]]\nname = "a"\nphase = "later"\nurl = "http://x"',
     "webhooks[0].phase", "pre-rollout, step, promotion"),
    ('model = "vm"\nversion = 2\nsteps = [10]\n[[webhooks]]\nname = "a"\nphase = "step"\nurl = "http://x"\n'
     'timeout_s = 0', "webhooks[0].timeout_s", "within"),
    ('model = "vm"\nversion = 2\nsteps = [10]\n[[webhooks]]\nphase = "step"\nurl = "http://x"', "webhooks[0]",
     "name"),
    ('model = "vm"\nversion = 2\nsteps = [10]\n[[webhooks]]\nname = "a"\nphase = "step"\nurl = "http://x"\n'
     '[[webhooks]]\nname = "a"\nphase = "step"\nurl = "http://y"', "webhooks", "unique"),
    ('model = "vm"\nversion = ', "toml", ""),
])
def test_errors_name_the_field(body, field, words):
    with pytest.raises(SpecError) as exc:
        parse_spec(body)
    assert exc.value.field == field, str(exc.value)
    assert words in str(exc.value)


def test_specs_built_in_code_are_validated_too():
    with pytest.raises(SpecError, match="checks.min_requests"):
        Checks(min_requests=0)
    with pytest.raises(SpecError, match="webhook.url"):
        Webhook(name="a", url="127.0.0.1:80", phase="step")
    spec = RolloutSpec(model="vm", version=3, steps=(25.0, 100.0), salt="spring")
    assert spec.canary_salt == "spring" and spec.hooks("step") == ()
