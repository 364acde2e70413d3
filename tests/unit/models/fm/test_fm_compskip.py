"""CompSkip: layer layout per ablation switch, summary reuse, locality of local layers."""

from __future__ import annotations

import pytest
import torch

from models.fm.compskip import CompSkipEncoder, CompSkipLayer
from models.fm.config import FMConfig

TINY = dict(d_model=8, n_heads=2, n_seeds=4, n_summary=2, type_widths=(2, 2, 2), n_sparse_fields=2)


@pytest.mark.parametrize(("compskip", "windowed", "kinds", "window"), [
    (True, True, ("global", "local", "global", "local"), 4),
    (False, True, ("global",) * 4, 4),
    (True, False, ("global", "local", "global", "local"), None),
    (False, False, ("global",) * 4, None),
])
def test_layer_layout(compskip: bool, windowed: bool, kinds: tuple[str, ...], window: int | None) -> None:
    torch.manual_seed(0)
    enc = CompSkipEncoder(FMConfig(n_layers=4, window=4, compskip=compskip, windowed=windowed, **TINY))
    assert tuple(layer.kind for layer in enc.layers) == kinds
    assert all(layer.attn.window == window for layer in enc.layers)
    assert all(hasattr(layer, "hsp") == (layer.kind == "global") for layer in enc.layers)


def test_type_windows_widen_the_band() -> None:
    cfg = FMConfig(window=4, type_windows=(2, 4, 16), **TINY)
    assert cfg.max_window == 16 and CompSkipEncoder(cfg).layers[0].attn.window == 16


def test_local_layer_sees_window_plus_reused_summary_only() -> None:
    torch.manual_seed(1)
    cfg = FMConfig(window=3, **TINY)
    layer = CompSkipLayer(cfg, "local")
    x, ns, summary = torch.randn(1, 12, 8), torch.randn(1, 3, 8), torch.randn(1, 2, 8)
    mask = torch.ones(1, 12, dtype=torch.bool)
    base, s_out = layer(x, mask, ns, summary, None)
    assert s_out is summary  # reused, not recomputed
    x2 = x.clone()
    x2[0, 4] += torch.randn(8)  # not a constant shift: LayerNorm would remove it
    diff = (layer(x2, mask, ns, summary, None)[0] - base).abs().sum(-1)[0]
    assert (diff[4:7] > 0).all() and (diff[:4] == 0).all() and (diff[7:] == 0).all()
    # the reused summary reaches every event
    diff_s = (layer(x, mask, ns, summary + 1.0, None)[0] - base).abs().sum(-1)[0]
    assert (diff_s > 0).all()
    with pytest.raises(ValueError):
        layer(x, mask, ns, None, None)


def test_encoder_global_layer_gives_every_event_the_candidate() -> None:
    torch.manual_seed(2)
    enc = CompSkipEncoder(FMConfig(n_layers=2, window=2, **TINY))
    x, mask, etype = torch.randn(2, 10, 8), torch.ones(2, 10, dtype=torch.bool), torch.zeros(2, 10, dtype=torch.long)
    mask[1, 7:] = False
    ns = torch.randn(2, 3, 8)
    states, summary = enc(x, mask, ns, etype)
    assert states.shape == (2, 10, 8) and summary.shape == (2, 2, 8)
    assert (states[1, 7:] == 0).all()
    moved = (enc(x, mask, ns + torch.randn(2, 3, 8), etype)[0] - states).abs().sum(-1)
    assert (moved[mask] > 0).all()
