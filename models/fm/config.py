"""`FMConfig`: every size and switch of the Kunlun-style foundation model in one frozen dataclass.

Kept apart from `model.py` so the analytic FLOPs counter (`flops.py`) and the blocks can read it
without importing the whole model.

Example:
    >>> cfg = FMConfig(n_items=100, n_categories=10, n_sparse=50, n_sparse_fields=3, dense_dim=2)
    >>> cfg.layer_kinds()
    ('global', 'local', 'global', 'local')
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class FMConfig:
    # --- vocabularies and input widths (set from the data) ---
    n_items: int = 1000
    """Ad-id vocabulary; history ids lie in [1, n_items), 0 is padding."""
    n_categories: int = 100
    """Category vocabulary; 0 is padding."""
    n_sparse: int = 1000
    """One shared vocabulary for all target categorical fields (each field already offset into it)."""
    n_sparse_fields: int = 4
    """F: categorical fields of the candidate (one non-sequence token each)."""
    dense_dim: int = 4
    """D: dense features of the candidate (one extra non-sequence token)."""
    max_len: int = 64
    """T the model is sized and FLOP-counted for; longer histories still run (nothing is positional)."""
    newest_first: bool = True
    """Histories arrive newest first (as `HistoryIndex.before` returns them); the encoder flips them so
    the causal window looks at *older* events."""
    n_event_types: int = 3
    """0 impression, 1 click, 2 conversion."""
    shared_target_vocab: bool = False
    """History item and category ids are pre-offset into the target's shared sparse vocabulary, and
    events embed through that same table: a clicked ad in the history and the same ad as the candidate
    are one vector, so history-candidate matching does not have to align two tables first."""

    # --- encoder ---
    d_model: int = 32
    n_heads: int = 2
    n_layers: int = 4
    ffn_mult: int = 2
    window: int = 16
    """w: each event attends to itself and the w-1 events before it (local layers, and global layers'
    sequence mixer when `windowed`)."""
    type_windows: tuple[int, ...] = ()
    """Per-event-type window sizes (impression, click, conversion); empty = `window` for every type.
    The band is computed at max(type_windows), so this costs nothing extra over the widest window."""
    type_widths: tuple[int, ...] = (8, 16, 32)
    """Hidden width of each event type's personalization adapter (rarer, richer events get more)."""
    gdpa_activation: str = "silu"
    """Element-wise activation replacing softmax in GDPA: "silu" or "gelu"."""
    n_seeds: int = 8
    """S: learnable seed queries of hierarchical seed pooling."""
    n_summary: int = 4
    """S': summary tokens after the SumKronLinear compression of the S seed tokens."""
    kron_rank: int = 2
    """K: Kronecker terms in SumKronLinear."""

    # --- CompSkip ablation switches ---
    compskip: bool = True
    """Alternate global / local layers; False makes every layer global (GDPA + fresh HSP)."""
    global_every: int = 2
    """With `compskip`, layer i is global when i % global_every == 0 (layer 0 is always global)."""
    windowed: bool = True
    """Sequence mixing by sliding-window attention; False = full causal attention (O(T^2))."""

    # --- head ---
    hidden_dim: int = 128
    """Width of Hidden-0, the first layer after merging history summary and target features."""
    interaction: bool = False
    """Explicit user × ad interaction scalars in Hidden-0's input, 2 per head: ⟨target view, candidate
    ad token⟩ and ⟨mean of clicked − mean of unclicked history ad tokens, candidate ad token⟩. The
    world's interest term is a dot product, which an MLP over concatenated vectors learns poorly; these
    hand it the dot products directly. Needs `shared_target_vocab` (history ads and the candidate in one
    table). Off by default: `adrank fm-gap` compares it on validation (docs/results.md)."""
    item_field: int = 0
    """Which of the F target fields holds the candidate's ad id (read only when `interaction` is on)."""
    interaction_category: bool = False
    """One more interaction scalar per head: ⟨mean of clicked − mean of unclicked history *category* tokens,
    candidate category token⟩. A category is seen far more often than any one ad, so this user × category
    preference is learnt from less data than the per-ad one (the history bound's category-only reading
    is where half of the FM's reachable gap lies, docs/results.md). Needs `shared_target_vocab`."""
    category_field: int = 0
    """Which of the F target fields holds the candidate's category (read only with `interaction_category`)."""
    tower_dim: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.n_layers < 1 or self.global_every < 1 or self.window < 1:
            raise ValueError("n_layers, global_every and window must be >= 1")
        if self.type_windows and len(self.type_windows) != self.n_event_types:
            raise ValueError(f"type_windows needs {self.n_event_types} entries, got {self.type_windows}")
        if len(self.type_widths) != self.n_event_types:
            raise ValueError(f"type_widths needs {self.n_event_types} entries, got {self.type_widths}")
        if (self.interaction or self.interaction_category) and not self.shared_target_vocab:
            raise ValueError("interaction and interaction_category need shared_target_vocab=True (history ads and "
                             "the candidate in one table)")
        for name in ("item_field", "category_field"):
            if not 0 <= getattr(self, name) < self.n_sparse_fields:
                raise ValueError(f"{name} must be in [0, n_sparse_fields={self.n_sparse_fields}), "
                                 f"got {getattr(self, name)}")
        if self.gdpa_activation not in ("silu", "gelu"):
            raise ValueError(f"gdpa_activation must be silu|gelu, got {self.gdpa_activation!r}")

    @property
    def max_window(self) -> int:
        return max(self.type_windows) if self.type_windows else self.window

    @property
    def n_ns_tokens(self) -> int:
        """Non-sequence tokens: one per categorical field plus one for the dense features."""
        return self.n_sparse_fields + 1

    @property
    def n_interactions(self) -> int:
        """Scalars the interaction switches add to Hidden-0's input (two per head for `interaction`, one per
        head for `interaction_category`), 0 when both are off."""
        return (2 * self.interaction + self.interaction_category) * self.n_heads

    @property
    def hidden0_inputs(self) -> int:
        """Width of Hidden-0's input: summary tokens, target view, non-sequence tokens, the two history-count
        features and the interaction scalars."""
        return (self.n_summary + self.n_ns_tokens + 1) * self.d_model + 2 + self.n_interactions

    def layer_kinds(self) -> tuple[str, ...]:
        """'global' or 'local' per encoder layer, fixed at construction (no data-dependent branching)."""
        return tuple("global" if (not self.compskip or i % self.global_every == 0) else "local"
                     for i in range(self.n_layers))
