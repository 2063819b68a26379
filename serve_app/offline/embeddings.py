"""Implicit-feedback matrix factorisation (ALS from `implicit`) over an interaction log."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from serve_app.core.fold_in import confidence, fold_in_many, interaction_weight
from serve_app.offline.config import EmbeddingConfig


@dataclass(frozen=True)
class Embeddings:
    user_ids: np.ndarray  # sorted; row i of user_factors belongs to user_ids[i]
    item_ids: np.ndarray  # sorted; row j of item_factors belongs to item_ids[j]
    user_factors: np.ndarray  # float32 (n_users, dim)
    item_factors: np.ndarray  # float32 (n_items, dim)

    @cached_property  # hashing 1M x 64 factors takes ~0.2 s: once per model, not once per user
    def model_id(self) -> str:
        """Names this model by its content: two vectors pair only when their model ids are equal."""
        h = hashlib.sha256(self.item_ids.tobytes())
        h.update(self.item_factors.tobytes())
        return f"als-{h.hexdigest()[:12]}"

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.user_ids, user_ids)

    def item_rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each item id, -1 where the model never saw it."""
        pos = np.searchsorted(self.item_ids, item_ids).clip(0, max(len(self.item_ids) - 1, 0))
        return np.where(self.item_ids[pos] == item_ids, pos, -1)


def train_als(
    ratings: pd.DataFrame, cfg: EmbeddingConfig, seed: int = 0, show_progress: bool = True
) -> Embeddings:
    user_ids, user_rows = np.unique(ratings["user_id"].to_numpy(), return_inverse=True)
    item_ids, item_rows = np.unique(ratings["item_id"].to_numpy(), return_inverse=True)
    weight = interaction_weight(ratings["rating"].to_numpy())
    matrix = sp.csr_matrix((weight, (user_rows, item_rows)), shape=(len(user_ids), len(item_ids)))
    # implicit runs its own threads; OpenBLAS threads on top of them only contend.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=cfg.factors,
            iterations=cfg.iterations,
            regularization=cfg.regularization,
            alpha=cfg.alpha,
            random_state=seed,
            calculate_training_loss=False,
        )
        model.fit(matrix, show_progress=show_progress)
    return Embeddings(
        user_ids=user_ids,
        item_ids=item_ids,
        user_factors=np.ascontiguousarray(model.user_factors, dtype=np.float32),
        item_factors=np.ascontiguousarray(model.item_factors, dtype=np.float32),
    )


def user_logs(ratings: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The log ordered by (user, time), its sorted user ids, and the CSR offsets of each user's run."""
    ordered = ratings.sort_values(["user_id", "ts"], kind="stable")
    user_ids, counts = np.unique(ordered["user_id"].to_numpy(), return_counts=True)
    return ordered, user_ids, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def fold_in_users(emb: Embeddings, ratings: pd.DataFrame, cfg: EmbeddingConfig) -> Embeddings:
    """The model with every user's vector folded in from their whole log, recency-weighted: the user
    vectors the bundle and the online store serve, computed exactly as the evaluation computes its own
    (offline/strict.py), so the evaluated and the served user vectors are one function of the log."""
    ordered, user_ids, indptr = user_logs(ratings)
    later = np.repeat(indptr[1:], np.diff(indptr)) - 1 - np.arange(len(ordered))
    conf = confidence(ordered["rating"].to_numpy(), later, cfg.alpha, cfg.recency_half_life)
    rows = emb.item_rows(ordered["item_id"].to_numpy())
    factors = fold_in_many(emb.item_factors, indptr, rows, conf, cfg.regularization)
    return replace(emb, user_ids=user_ids, user_factors=factors)
