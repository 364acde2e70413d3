"""One entry point for every data source, so CLIs and experiments name a source by string."""

from __future__ import annotations

from pathlib import Path

from models.data.schema import EventLog

SOURCES = ("synthetic", "movielens", "taobao")


def load_dataset(name: str, *, n_events: int = 300_000, seed: int = 0, path: str | Path | None = None) -> EventLog:
    """Loads `name` ("synthetic" | "movielens" | "taobao"). `path` is required for taobao only."""
    if name == "synthetic":
        from models.data.synthetic import SyntheticConfig, generate_synthetic

        return generate_synthetic(SyntheticConfig(n_events=n_events, seed=seed))
    if name == "movielens":
        from models.data.movielens import load_movielens

        return load_movielens(seed=seed)
    if name == "taobao":
        if path is None:
            raise ValueError("the taobao source needs --data-path pointing at the BARS/FuxiCTR CSV files")
        from models.data.taobao import load_taobao

        return load_taobao(path)
    raise ValueError(f"unknown dataset {name!r}; choose one of {SOURCES}")
