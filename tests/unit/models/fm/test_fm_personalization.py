"""Event-level personalization: per-type adapters (own widths, own gates), type windows, padding."""

from __future__ import annotations

import torch

from models.fm.config import FMConfig
from models.fm.personalization import EventEmbedding, TypedAdapter, type_query_window


def test_adapter_uses_only_the_events_own_width_block() -> None:
    torch.manual_seed(0)
    widths = (2, 3, 5)
    adapter = TypedAdapter(8, widths)
    torch.nn.init.normal_(adapter.up.weight)  # leave the identity init so the adapter does something
    x = torch.randn(4, 6, 8)
    clicks = torch.ones(4, 6, dtype=torch.long)
    adapter(x, clicks).sum().backward()
    grad_rows = adapter.down.weight.grad.abs().sum(1)  # one row per hidden unit
    assert (grad_rows[2:5] > 0).all()  # click block
    assert (grad_rows[:2] == 0).all() and (grad_rows[5:] == 0).all()


def test_types_are_scaled_differently() -> None:
    torch.manual_seed(1)
    adapter = TypedAdapter(8, (4, 4, 4))
    torch.testing.assert_close(adapter(torch.ones(1, 1, 8), torch.zeros(1, 1, dtype=torch.long)), torch.ones(1, 1, 8))
    with torch.no_grad():
        adapter.gate.weight[2] = 1.0  # conversions doubled
    x = torch.randn(1, 1, 8).expand(1, 3, 8)
    y = adapter(x, torch.tensor([[0, 1, 2]]))
    torch.testing.assert_close(y[0, 2], 2 * y[0, 1])


def test_type_query_window_lookup() -> None:
    torch.manual_seed(2)
    w = type_query_window(torch.tensor([[0, 1, 2, 2]]), (4, 8, 32))
    assert w.tolist() == [[4, 8, 32, 32]]


def test_event_embedding_zero_at_padding_and_type_aware() -> None:
    torch.manual_seed(3)
    emb = EventEmbedding(FMConfig(n_items=20, n_categories=5, d_model=8, n_heads=2, type_widths=(2, 2, 2)))
    item = torch.tensor([[3, 3, 3, 0]])
    cat = torch.tensor([[1, 1, 1, 0]])
    etype = torch.tensor([[0, 1, 2, 0]])
    age = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    x = emb(item, cat, etype, age, mask)
    assert (x[0, 3] == 0).all()
    assert not torch.allclose(x[0, 0], x[0, 1]) and not torch.allclose(x[0, 1], x[0, 2])
