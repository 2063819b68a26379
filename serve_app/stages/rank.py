"""Scorer: join candidate item features from the in-memory snapshot, score with XGBoost, sort."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xgboost as xgb

from serve_app.features import FEATURE_NAMES, ITEM_FEATURES, model_matrix
from serve_app.stages.retrieve import Candidates


@dataclass(frozen=True)
class ItemSnapshot:
    """Columnar item features; row i describes item_ids[i], the same rows the FAISS index uses."""

    item_ids: np.ndarray  # int64
    columns: Mapping[str, np.ndarray]  # ITEM_FEATURES -> float64 arrays, NaN where unknown

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {name: self.columns[name][rows] for name in ITEM_FEATURES}


def load_ranker(path: str) -> xgb.Booster:
    booster = xgb.Booster()
    booster.load_model(path)
    # One thread: replicas scale out by process, and 200 rows do not amortise a thread pool.
    booster.set_param({"nthread": 1})
    return booster


def score(booster: xgb.Booster, matrix: np.ndarray) -> np.ndarray:
    return np.asarray(booster.inplace_predict(matrix, validate_features=False), dtype=np.float32)


def rank(
    booster: xgb.Booster, user: Mapping[str, Any], items: ItemSnapshot, candidates: Candidates
) -> Candidates:
    """Candidates reordered by ranker score (descending; ties keep retrieval order)."""
    if len(candidates) == 0:
        return candidates
    matrix = model_matrix(user, items.take(candidates.rows), candidates.scores)
    scores = score(booster, matrix)
    order = np.argsort(-scores, kind="stable")
    return Candidates(candidates.rows[order], scores[order])


def check_ranker_features(booster: xgb.Booster) -> None:
    names = tuple(booster.feature_names or ())
    if names != FEATURE_NAMES:
        raise ValueError(f"ranker expects features {list(names)}, serving computes {list(FEATURE_NAMES)}")
