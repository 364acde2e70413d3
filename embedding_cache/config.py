"""Frozen configuration of the cache: what is kept (retention) and what a lookup may ask for (limits)."""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 86_400_000


@dataclass(frozen=True, kw_only=True)
class RetentionConfig:
    """What a published snapshot keeps per user.

    Retention is applied at publish time, so readers never pay for it and a snapshot's size is bounded by
    `max_per_user` rows per user whatever the append rate.

    Attributes:
        max_per_user: most recent codes kept per user (LoopFM uses up to 200). Lookups may ask for a larger
            L but never get more than this many.
        max_age_ms: drop codes older than `publish_time - max_age_ms`; None keeps every age (useful for
            synthetic timestamps in tests and offline training). `RetentionConfig.loopfm()` uses 30 days.
        keep_snapshots: published snapshots kept per fm_version (the current one included); older ones are
            deleted after a publish. Keep >= 2 so a reader that has not refreshed yet keeps working.
    """

    max_per_user: int = 256
    max_age_ms: int | None = None
    keep_snapshots: int = 3

    def __post_init__(self) -> None:
        if self.max_per_user < 1:
            raise ValueError(f"max_per_user must be >= 1, got {self.max_per_user}")
        if self.max_age_ms is not None and self.max_age_ms <= 0:
            raise ValueError(f"max_age_ms must be positive or None, got {self.max_age_ms}")
        if self.keep_snapshots < 1:
            raise ValueError(f"keep_snapshots must be >= 1, got {self.keep_snapshots}")

    @classmethod
    def loopfm(cls) -> RetentionConfig:
        """The retention the LoopFM paper describes: up to 200 codes, about 30 days."""
        return cls(max_per_user=200, max_age_ms=30 * DAY_MS)


@dataclass(frozen=True, kw_only=True)
class LookupLimits:
    """Bounds on one lookup; a request outside them is an InvalidLookupError (gRPC INVALID_ARGUMENT).

    Attributes:
        max_len: largest history length L a caller may ask for (L must be in [1, max_len]).
        max_ads: most candidate ads in one lookup.
        max_users: most users in one `user_history` call (batch scoring / training reads).
    """

    max_len: int = 4096
    max_ads: int = 4096
    max_users: int = 65_536
