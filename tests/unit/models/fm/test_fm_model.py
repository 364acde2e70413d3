"""FoundationModel end to end: shapes, padding / order invariances, a learnable toy task, ONNX parity."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.fm.model import FMConfig, FMOutput, FoundationModel

N_CAT = 4  # toy: history categories 1..4; target field 0 holds the candidate's category (same ids)
TINY = FMConfig(n_items=40, n_categories=N_CAT + 1, n_sparse=N_CAT + 1 + 10, n_sparse_fields=2, dense_dim=2,
                d_model=16, n_heads=2, n_layers=2, window=8, n_seeds=4, n_summary=2, hidden_dim=32, tower_dim=16,
                type_widths=(4, 4, 4))
INPUTS = ("hist_item", "hist_category", "hist_type", "hist_age", "hist_mask", "target_sparse", "target_dense")


def make_batch(b: int, t: int, g: torch.Generator, max_events: int = 5) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Right-padded histories of 1..max_events-1 events; label = the candidate's category occurs in the history."""
    mask = torch.arange(t)[None] < torch.randint(1, max_events, (b, 1), generator=g)
    cat = torch.randint(1, N_CAT + 1, (b, t), generator=g) * mask
    target_cat = torch.randint(1, N_CAT + 1, (b,), generator=g)
    label = ((cat == target_cat[:, None]) & mask).any(1).float()
    batch = {
        "hist_item": torch.randint(1, TINY.n_items, (b, t), generator=g) * mask,
        "hist_category": cat,
        "hist_type": torch.randint(0, 3, (b, t), generator=g) * mask,
        "hist_age": torch.rand(b, t, generator=g) * 5 * mask,
        "hist_mask": mask,
        "target_sparse": torch.stack([target_cat, N_CAT + 1 + torch.randint(0, 10, (b,), generator=g)], 1),
        "target_dense": torch.randn(b, 2, generator=g),
    }
    return batch, label


def test_forward_backward_shapes() -> None:
    torch.manual_seed(0)
    model = FoundationModel(replace(TINY, type_windows=(2, 4, 8)))
    batch, _ = make_batch(8, 64, torch.Generator().manual_seed(0), max_events=64)
    out = model(**batch)
    assert isinstance(out, FMOutput)
    assert out.ctr_logit.shape == (8,) and out.cvr_logit.shape == (8,) and out.hidden0.shape == (8, model.hidden_dim)
    (out.ctr_logit.sum() + out.cvr_logit.sum()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == [], no_grad
    states, ns, summary = model.encode_history(**batch)
    assert states.shape == (8, 64, TINY.d_model) and ns.shape == (8, TINY.n_ns_tokens, TINY.d_model)
    assert summary.shape == (8, TINY.n_summary, TINY.d_model)
    assert (states[~batch["hist_mask"]] == 0).all()


def test_padding_content_and_empty_history() -> None:
    torch.manual_seed(1)
    model = FoundationModel(TINY).eval()
    batch, _ = make_batch(4, 16, torch.Generator().manual_seed(1))
    batch["hist_mask"][3] = False  # a cold user
    out = model(**batch)
    assert all(torch.isfinite(t).all() for t in out)
    junk = dict(batch)
    pad = ~batch["hist_mask"]
    junk["hist_age"] = torch.where(pad, torch.full_like(batch["hist_age"], 9.0), batch["hist_age"])
    junk["hist_type"] = torch.where(pad, torch.full_like(batch["hist_type"], 2), batch["hist_type"])
    torch.testing.assert_close(model(**junk), out)


def test_newest_first_flag_only_changes_the_reading_direction() -> None:
    torch.manual_seed(2)
    chrono = FoundationModel(replace(TINY, newest_first=False)).eval()
    newest = FoundationModel(replace(TINY, newest_first=True)).eval()
    newest.load_state_dict(chrono.state_dict())
    batch, _ = make_batch(3, 12, torch.Generator().manual_seed(2), max_events=12)
    flipped = {k: (torch.flip(v, [1]) if k.startswith("hist_") else v) for k, v in batch.items()}
    torch.testing.assert_close(newest(**flipped), chrono(**batch), atol=1e-5, rtol=1e-5)


def _history_and_target_batch(b: int, g: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Label = (a category-1 event is in the history) AND (the candidate's first dense feature > 0):
    it needs the history, the candidate, and their interaction."""
    batch, _ = make_batch(b, 32, g)
    in_history = ((batch["hist_category"] == 1) & batch["hist_mask"]).any(1)
    return batch, (in_history & (batch["target_dense"][:, 0] > 0)).float()


def _entropy(p: float) -> float:
    return float(-(p * np.log(p) + (1 - p) * np.log(1 - p)))


def test_training_learns_a_history_target_task_and_uses_the_history() -> None:
    """Held-out loss must fall far below the base-rate entropy, and shuffling histories across examples
    must destroy the gain (the model reads the history, it does not memorise candidates)."""
    torch.manual_seed(3)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(3)
    model = FoundationModel(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    held_out, y_held = _history_and_target_batch(512, g)
    for _ in range(150):
        batch, y = _history_and_target_batch(64, g)
        loss = F.binary_cross_entropy_with_logits(model(**batch).ctr_logit, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    with torch.no_grad():
        held = F.binary_cross_entropy_with_logits(model(**held_out).ctr_logit, y_held).item()
        perm = torch.randperm(512, generator=g)
        shuffled = {k: (v[perm] if k.startswith("hist_") else v) for k, v in held_out.items()}
        held_shuffled = F.binary_cross_entropy_with_logits(model(**shuffled).ctr_logit, y_held).item()
    base = _entropy(y_held.mean().item())
    assert held < 0.5 * base, (held, base)
    assert held_shuffled > held + 0.2, (held, held_shuffled)


def test_matching_a_history_category_is_learned_with_realistic_event_ages() -> None:
    """Real histories span weeks: ages are log1p(hours) up to ~7.3. The label is make_batch's own
    (the candidate's category occurs in the history), a pure id match; recency must not drown it."""
    torch.manual_seed(4)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(4)

    def batch_of(b: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        batch, y = make_batch(b, 16, g, max_events=8)
        hours = torch.rand(batch["hist_age"].shape, generator=g) * 24 * 60
        batch["hist_age"] = torch.log1p(hours) * batch["hist_mask"]
        return batch, y

    model = FoundationModel(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    held_out, y_held = batch_of(512)
    for _ in range(150):
        batch, y = batch_of(64)
        loss = F.binary_cross_entropy_with_logits(model(**batch).ctr_logit, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        held = F.binary_cross_entropy_with_logits(model(**held_out).ctr_logit, y_held).item()
    assert held < 0.6 * _entropy(y_held.mean().item()), held


def test_onnx_export_has_dynamic_batch_and_history_length(tmp_path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(4)
    model = FoundationModel(replace(TINY, type_windows=(2, 3, 4), n_layers=2)).eval()
    batch, _ = make_batch(2, 12, torch.Generator().manual_seed(4), max_events=12)
    dynamic = {n: ({0: "batch", 1: "events"} if n.startswith("hist_") else {0: "batch"}) for n in INPUTS}
    path = tmp_path / "fm.onnx"
    torch.onnx.export(model, tuple(batch[n] for n in INPUTS), str(path), input_names=list(INPUTS),
                      output_names=list(FMOutput._fields), dynamic_axes=dynamic, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other, _ = make_batch(3, 20, torch.Generator().manual_seed(5), max_events=20)  # new B and T
    got = session.run(None, {n: other[n].numpy() for n in INPUTS})
    with torch.no_grad():
        want = model(**other)
    for g_, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g_, w.numpy(), rtol=1e-4, atol=1e-5)
