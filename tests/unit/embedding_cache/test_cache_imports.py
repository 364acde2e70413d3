"""The request path stays numpy-only: importing the cache must not pull torch, models or serving."""

from __future__ import annotations

import subprocess
import sys


def test_no_torch_models_or_serving_import() -> None:
    code = ("import sys, embedding_cache, embedding_cache.bench; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'models', 'serving')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
