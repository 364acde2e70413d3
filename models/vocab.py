"""Context vocabularies: the placement and device strings of the wire format, in one place.

Imports nothing (not even numpy), so the feature code, the serving runtime, the client and the load
generator all read the same tuples without pulling training code or torch into a server process.

* `PLACEMENTS`, `DEVICES`: index i of a string is the integer the data sources and the models use for
  it. Index 0 is "other": an unknown string maps there rather than failing a request.
* `PLACEMENT_TRAFFIC`, `DEVICE_TRAFFIC`: the values synthetic requests carry (client, load generator,
  benchmarks) and their share of production-like traffic. "other" and "sidebar" are never sent: they
  exist so that unknown and rare placements still have a slot in the model.

Usage::

    from models.vocab import PLACEMENTS
    PLACEMENTS.index("feed")  # 1
"""

from __future__ import annotations

PLACEMENTS: tuple[str, ...] = ("other", "feed", "story", "search", "video", "sidebar")
DEVICES: tuple[str, ...] = ("other", "ios", "android", "web")

# Insertion order is the order requests draw in: changing it changes every seeded request.
PLACEMENT_TRAFFIC: dict[str, float] = {"feed": 0.6, "story": 0.2, "search": 0.1, "video": 0.1}
DEVICE_TRAFFIC: dict[str, float] = {"ios": 0.45, "android": 0.45, "web": 0.1}

