"""The interaction switch (`FMConfig.interaction`): shapes, nothing changes while it is off, it reads no event
at or after the example's time, and its FLOPs are counted exactly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.fm.flops import count_flops
from models.fm.model import FMConfig, FoundationModel, interaction_scalars

REFERENCE = Path(__file__).parent / "data" / "fm_switch_off_reference.npz"
CFG = FMConfig(n_items=50, n_categories=6, n_sparse=60, n_sparse_fields=3, dense_dim=2, d_model=16, n_heads=2,
               window=8, n_seeds=4, n_summary=2, hidden_dim=32, tower_dim=16, type_widths=(2, 4, 8),
               shared_target_vocab=True)


def reference_case(cfg: FMConfig = CFG, b: int = 6, t: int = 20) -> tuple[FoundationModel, dict[str, torch.Tensor]]:
    """A seeded model and batch. `REFERENCE` holds this case's outputs as computed by the FM before the
    interaction switch existed (np.savez of ctr, cvr, hidden0 from `reference_case()` at that commit)."""
    torch.manual_seed(0)
    model = FoundationModel(cfg)
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(b, t, generator=g) < 0.7
    batch = {"hist_item": torch.randint(1, cfg.n_sparse, (b, t), generator=g) * mask,
             "hist_category": torch.randint(1, cfg.n_sparse, (b, t), generator=g) * mask,
             "hist_type": torch.randint(0, 3, (b, t), generator=g) * mask, "hist_age": torch.rand(b, t, generator=g),
             "hist_mask": mask, "target_sparse": torch.randint(0, cfg.n_sparse, (b, cfg.n_sparse_fields), generator=g),
             "target_dense": torch.randn(b, cfg.dense_dim, generator=g)}
    return model, batch


def test_switch_off_reproduces_the_model_before_the_switch() -> None:
    model, batch = reference_case()
    with torch.no_grad():
        out = model(**batch)
    ref = np.load(REFERENCE, allow_pickle=False)
    # same seed, same inputs: the same weights and the same outputs (float tolerance only for other CPUs' kernels)
    np.testing.assert_allclose(out.ctr_logit.numpy(), ref["ctr"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.cvr_logit.numpy(), ref["cvr"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.hidden0.numpy(), ref["hidden0"], rtol=0, atol=1e-6)
    assert model.hidden0.in_features == (CFG.n_summary + CFG.n_ns_tokens + 1) * CFG.d_model + 2


@pytest.mark.parametrize(("overrides", "per_head"), [({"interaction": True}, 2), ({"interaction_category": True}, 1),
                                                     ({"interaction": True, "interaction_category": True}, 3)])
def test_switch_on_adds_scalars_per_head_and_every_weight_learns(overrides: dict, per_head: int) -> None:
    cfg = replace(CFG, **overrides)
    model, batch = reference_case(cfg)
    off, _ = reference_case()
    assert cfg.n_interactions == per_head * cfg.n_heads
    assert model.hidden0.in_features == off.hidden0.in_features + per_head * cfg.n_heads
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in off.named_parameters()]  # no new weights
    out = model(**batch)
    assert out.ctr_logit.shape == (6,) and out.cvr_logit.shape == (6,) and out.hidden0.shape == (6, cfg.hidden_dim)
    assert torch.isfinite(out.ctr_logit).all()
    out.ctr_logit.sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None and "cvr" not in n] == []
    states, ns, _ = model.encode_history(**batch)
    view = model.target_attention(states, batch["hist_mask"], ns)
    scalars = model.interactions(view, ns, batch["hist_item"], batch["hist_category"], batch["hist_type"],
                                 batch["hist_mask"])
    assert scalars.shape == (6, per_head * cfg.n_heads)


def test_interaction_scalars_are_the_per_head_dot_products() -> None:
    g = torch.Generator().manual_seed(2)
    b, t, d, h = 3, 5, 8, 2
    view, cand, hist = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g), torch.randn(b, t, d, generator=g)
    etype = torch.tensor([[0, 1, 2, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    got = interaction_scalars(view, cand, hist, etype, mask, h)
    for i in range(b):
        clicked = [j for j in range(t) if mask[i, j] and etype[i, j] > 0]
        unclicked = [j for j in range(t) if mask[i, j] and etype[i, j] == 0]
        pref = (hist[i, clicked].mean(0) if clicked else torch.zeros(d)) - \
            (hist[i, unclicked].mean(0) if unclicked else torch.zeros(d))
        for k in range(h):
            s = slice(k * d // h, (k + 1) * d // h)
            assert got[i, k] == pytest.approx(float(view[i, s] @ cand[i, s]) / 2.0, abs=1e-5)
            assert got[i, h + k] == pytest.approx(float(pref[s] @ cand[i, s]) / 2.0, abs=1e-5)
    # a padded event's content and type are never read
    hist2, etype2 = hist.clone(), etype.clone()
    hist2[0, 4], etype2[0, 4] = 100.0, 1
    torch.testing.assert_close(interaction_scalars(view, cand, hist2, etype2, mask, h), got, rtol=0, atol=0)


def test_switch_needs_the_shared_vocabulary_and_a_valid_item_field() -> None:
    for switch in ("interaction", "interaction_category"):
        with pytest.raises(ValueError, match="shared_target_vocab"):
            replace(CFG, **{switch: True}, shared_target_vocab=False)
    for field in ("item_field", "category_field"):
        with pytest.raises(ValueError, match=field):
            replace(CFG, **{field: 3})


@pytest.mark.parametrize("overrides", [{"interaction": True}, {"interaction_category": True},
                                       {"interaction": True, "interaction_category": True, "compskip": False,
                                        "windowed": False}])
def test_flops_with_the_switch_match_torch_flop_counter(overrides: dict) -> None:
    cfg = replace(CFG, **overrides)
    model, batch = reference_case(cfg, b=1, t=40)
    with FlopCounterMode(display=False) as counter:
        model(**batch)
    c = count_flops(cfg, 40)
    assert counter.get_total_flops() == 2 * c["total"]
    assert c["interaction"] == (cfg.interaction + cfg.interaction_category) * 40 * cfg.d_model + \
        (2 * cfg.interaction + cfg.interaction_category) * cfg.d_model
    off = count_flops(replace(cfg, interaction=False, interaction_category=False), 40)
    assert off["interaction"] == 0
    assert c["total"] - off["total"] == c["interaction"] + cfg.n_interactions * cfg.hidden_dim


def test_no_event_at_or_after_the_example_changes_its_output() -> None:
    from models.data.schema import EventLog
    from models.data.synthetic import SyntheticConfig, generate_synthetic
    from models.features import SPARSE_FIELDS
    from models.fm_pipeline import FMBatcher
    from models.train import TrainConfig, VMData, prepare_vm_data

    data = prepare_vm_data(generate_synthetic(SyntheticConfig(n_events=10_000, seed=4)), TrainConfig())
    ev = data.events
    cfg = FMConfig(n_items=int(ev.cardinality["ad_id"]) + 1, n_categories=int(ev.cardinality["category"]) + 1,
                   n_sparse=data.spec.vocab_size, n_sparse_fields=data.spec.n_fields, dense_dim=data.spec.dense_width,
                   d_model=16, n_heads=2, n_layers=2, window=8, hidden_dim=32, shared_target_vocab=True,
                   item_field=SPARSE_FIELDS.index("ad_id"), category_field=SPARSE_FIELDS.index("category"),
                   interaction=True, interaction_category=True)
    torch.manual_seed(0)
    model = FoundationModel(cfg).eval()
    users, ts = ev["user_id"], ev["ts_ms"]
    rows = np.array([r for r in data.test_idx[:400] if ((users == users[r]) & (ts < ts[r])).sum() >= 3][:20])
    assert len(rows) >= 10

    def outputs(d: VMData, at: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return model(**FMBatcher(d, 16)(at)).ctr_logit

    def perturbed(change: np.ndarray, label_only: np.ndarray) -> VMData:
        """Flips the outcome of every row in `change` or `label_only` and moves each row of `change` to
        another ad and category (an example's own row keeps its features: they are the candidate)."""
        cols = {k: v.copy() for k, v in ev.columns.items()}
        flip = change | label_only
        cols["click"][flip] = 1 - cols["click"][flip]
        cols["conversion"][flip] = 0
        sparse = data.feats["sparse"].copy()
        for col in (SPARSE_FIELDS.index("ad_id"), SPARSE_FIELDS.index("category")):
            sparse[change, col] = sparse[::-1][change, col]
        return VMData(EventLog(cols, ev.cardinality, ev.source), data.spec, {**data.feats, "sparse": sparse},
                      data.train_idx, data.test_idx)

    base = outputs(data, rows)
    none = np.zeros(len(ev), bool)
    for i, r in enumerate(rows):
        own = none.copy()
        own[r] = True
        later = (ts >= ts[r]) & ~own  # every other event at or after the example's time, of every user
        got = outputs(perturbed(later, own), rows)  # the same batch, so the same float sums
        assert got[i] == base[i], f"example {r} changed when events at or after its time did"
    # the check can fail: the outcome of one earlier event of an example's user does change that example
    r = rows[0]
    earlier = none.copy()
    earlier[np.flatnonzero((users == users[r]) & (ts < ts[r]))[-1]] = True
    assert outputs(perturbed(none, earlier), rows)[0] != base[0]


def test_onnx_export_with_the_switch_on_keeps_dynamic_batch_and_history_length(tmp_path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from models.fm.model import FMOutput

    inputs = ("hist_item", "hist_category", "hist_type", "hist_age", "hist_mask", "target_sparse", "target_dense")
    model, batch = reference_case(replace(CFG, interaction=True, interaction_category=True), b=2, t=12)
    model.eval()
    dynamic = {n: ({0: "batch", 1: "events"} if n.startswith("hist_") else {0: "batch"}) for n in inputs}
    path = tmp_path / "fm.onnx"
    torch.onnx.export(model, tuple(batch[n] for n in inputs), str(path), input_names=list(inputs),
                      output_names=list(FMOutput._fields), dynamic_axes=dynamic, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, other = reference_case(replace(CFG, interaction=True), b=3, t=20)  # new B and T
    got = session.run(None, {n: other[n].numpy() for n in inputs})
    with torch.no_grad():
        want = model(**other)
    for g_, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g_, w.numpy(), rtol=1e-4, atol=1e-5)
