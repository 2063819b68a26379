"""What every stage hands on: a ranked list of item ids with where it came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EMPTY_IDS = np.empty(0, np.int64)
EMPTY_SCORES = np.empty(0, np.float32)


@dataclass(frozen=True)
class Scored:
    """Item ids (not rows: replicas on two bundle versions during a rollout still agree), best first."""

    item_ids: np.ndarray  # int64
    scores: np.ndarray  # float32
    bundle_version: str
    filtered: dict[str, int] = field(default_factory=dict)  # filter name -> candidates it removed
    fallback: str | None = None  # why the normal path could not produce this list (stages/fallback.py)
    timings_ms: dict[str, float] = field(default_factory=dict)  # compute time of each stage so far
    degraded: bool = False  # built from partial information (stale cache, a failed stage)
    reason: str | None = None  # what degraded it
    # Per-candidate inputs of the ranker computed where the vectors are (features.RETRIEVAL_FEATURES),
    # aligned with item_ids; empty once the ranker has reordered the list.
    features: dict[str, np.ndarray] = field(default_factory=dict)
    # The user's online features this answer used (shown with debug: true), as the store returned them.
    user_features: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, bundle_version: str, **why: object) -> Scored:
        return cls(EMPTY_IDS, EMPTY_SCORES, bundle_version, **why)  # type: ignore[arg-type]
